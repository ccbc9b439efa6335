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

from repairlib import data, models
from repairlib.train import _evaluate, fit


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", choices=["mlp", "resnet20"], required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model = models.mlp(10, 512) if args.arch == "mlp" else models.resnet20(1, "bn", in_channels=1)
    start = time.perf_counter()
    run = fit(model, "fashion_mnist", epochs=args.epochs, seed=args.seed, device="cpu")
    result = _evaluate(model, data.loader("fashion_mnist", "test", device="cpu"))
    out = {"arch": args.arch, "dataset": "fashion_mnist", "train_examples": 60000, "epochs": args.epochs,
           "seed": args.seed, "test_accuracy": result["accuracy"], "test_loss": result["loss"],
           "wall_seconds": time.perf_counter() - start, "images_per_second": run["images_per_second"],
           "device": f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
           "torch": torch.__version__}
    path = Path(__file__).parent / "results" / f"full_{args.arch}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
