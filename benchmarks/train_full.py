"""Full-data training runs behind the README's accuracy figures (issue: foundation).

    python benchmarks/train_full.py --arch resnet20 --epochs 10
    python benchmarks/train_full.py --arch mlp --epochs 20

Trains on the whole Fashion-MNIST training set with the paper's recipe and writes the test accuracy,
epochs and wall time to benchmarks/results/full_<arch>.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import repairlib
from repairlib import data, zoo

CONFIGS = {"mlp": {"arch": "mlp", "depth": 10, "width": 512, "in_features": 784},
           "resnet20": {"arch": "resnet20", "width": 1, "norm": "bn", "in_channels": 1}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["mlp", "resnet20"], required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.perf_counter()
    description = zoo.training_description(CONFIGS[args.arch], "fashion_mnist", epochs=args.epochs, seed=args.seed)
    path = zoo.checkpoint_path(description)
    cached = path.exists()
    model = zoo.trained(CONFIGS[args.arch], "fashion_mnist", epochs=args.epochs, seed=args.seed, device="cpu")
    run = zoo.load_checkpoint(path)["meta"]
    result = repairlib.evaluate(model, data.loader("fashion_mnist", "test", device="cpu"))
    out = {"arch": args.arch, "dataset": "fashion_mnist", "train_examples": 60000, "epochs": args.epochs,
           "seed": args.seed, "test_accuracy": result["accuracy"], "test_loss": result["loss"],
           "wall_seconds": None if cached else time.perf_counter() - start, "checkpoint": path.name,
           "training_seconds": run["seconds"], "images_per_second": run["images_per_second"],
           "steps": run["steps"],
           "device": f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
           "torch": torch.__version__}
    path = Path(__file__).parent / "results" / f"full_{args.arch}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
