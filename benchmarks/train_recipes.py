"""Short training recipes on a CPU: test accuracy reached per minute of training, bf16 against fp32.

    python benchmarks/train_recipes.py [--runs NAME ...] [--threads 1]

Each run trains one network from seed 0 on Fashion-MNIST with ``repairlib.train.fit`` (a recipe of
``repairlib.train.RECIPES`` with the overrides below) and measures it on all 10,000 test images. It
records the wall and CPU seconds of training (``fit``'s, the SGD steps plus the BatchNorm
re-estimation), images per second, and the test accuracy per minute of CPU time, which other load on a
shared machine distorts far less than wall time. Results are appended to
benchmarks/results/train_recipes.json one run at a time (an interrupted study resumes where it stopped:
runs already recorded at the same settings are skipped).
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from repairlib import data, models, train
from repairlib.evaluation import evaluate

OUT = Path(__file__).parent / "results" / "train_recipes.json"
FM = "fashion_mnist"
RESNET20 = {"arch": "resnet20", "width": 1, "norm": "bn", "in_channels": 1}
MLP10 = {"arch": "mlp", "depth": 10, "width": 512}
VGG11 = {"arch": "vgg", "depth": 11, "in_channels": 1}

# name -> (model config, fit keyword arguments); train_subset None = all 60,000 training images
RUNS = {
    "resnet20 bn, book recipe (4,000 images x 2 ep, batch 100), fp32": (RESNET20, {
        "epochs": 2, "train_subset": 4000, "batch_size": 100, "lr": 0.08, "bf16": False}),
    "resnet20 bn, 1 ep, batch 100, fp32": (RESNET20, {"epochs": 1, "batch_size": 100, "lr": 0.08, "bf16": False}),
    "resnet20 bn, 1 ep, batch 100, bf16": (RESNET20, {"epochs": 1, "batch_size": 100, "lr": 0.08, "bf16": True}),
    "resnet20 bn, 2 ep, batch 100, bf16": (RESNET20, {"epochs": 2, "batch_size": 100, "lr": 0.08, "bf16": True}),
    "resnet20 bn, 2 ep, batch 100, bf16, label smoothing 0.1": (RESNET20, {
        "epochs": 2, "batch_size": 100, "lr": 0.08, "bf16": True, "label_smoothing": 0.1}),
    "resnet20 bn, 4 ep, batch 500 (Table 1), bf16": (RESNET20, {"epochs": 4, "bf16": True}),
    "resnet20 bn, 4 ep, batch 100, bf16": (RESNET20, {"epochs": 4, "batch_size": 100, "lr": 0.08, "bf16": True}),
    "resnet20 ln, 2 ep, batch 100, bf16": ({**RESNET20, "norm": "ln"}, {
        "epochs": 2, "batch_size": 100, "lr": 0.04, "bf16": True}),
    "resnet20 fixup, 2 ep, batch 100, bf16": ({**RESNET20, "norm": "fixup"}, {
        "epochs": 2, "batch_size": 100, "lr": 0.02, "bf16": True}),
    # augmentation in a one-epoch run (Table 1's flip+translate+cutout against lighter or none), fp32
    "resnet20 bn, 1 ep, batch 100, no augmentation, fp32": (RESNET20, {
        "epochs": 1, "batch_size": 100, "lr": 0.08, "augment": "", "bf16": False}),
    "resnet20 bn, 1 ep, batch 100, translate only, fp32": (RESNET20, {
        "epochs": 1, "batch_size": 100, "lr": 0.08, "augment": "translate", "bf16": False}),
    "resnet20 bn, 1 ep, batch 100, flip+translate, fp32": (RESNET20, {
        "epochs": 1, "batch_size": 100, "lr": 0.08, "augment": "flip+translate", "bf16": False}),
    "resnet20 bn, 1 ep, batch 100, no augmentation, label smoothing 0.1, fp32": (RESNET20, {
        "epochs": 1, "batch_size": 100, "lr": 0.08, "augment": "", "label_smoothing": 0.1, "bf16": False}),
    "resnet20 ln, 1 ep, batch 100, clip 1, fp32": ({**RESNET20, "norm": "ln"}, {
        "epochs": 1, "batch_size": 100, "lr": 0.08, "grad_clip": 1.0, "bf16": False}),
    "resnet20 ln, 1 ep, batch 100, clip 1, no augmentation, fp32": ({**RESNET20, "norm": "ln"}, {
        "epochs": 1, "batch_size": 100, "lr": 0.08, "grad_clip": 1.0, "augment": "", "bf16": False}),
    "resnet20 fixup, 1 ep, batch 100, clip 1, no augmentation, fp32": ({**RESNET20, "norm": "fixup"}, {
        "epochs": 1, "batch_size": 100, "lr": 0.08, "grad_clip": 1.0, "augment": "", "bf16": False}),
    "resnet20 bn, 2 ep, batch 100, no augmentation, label smoothing 0.1, fp32": (RESNET20, {
        "epochs": 2, "batch_size": 100, "lr": 0.08, "augment": "", "label_smoothing": 0.1, "bf16": False}),
    "resnet20 ln, 1 ep, batch 100, clip 1, no augmentation, label smoothing 0.1, fp32": ({**RESNET20, "norm": "ln"}, {
        "epochs": 1, "batch_size": 100, "lr": 0.08, "grad_clip": 1.0, "augment": "", "label_smoothing": 0.1,
        "bf16": False}),
    "mlp 10x512, 3 ep, no augmentation, fp32": (MLP10, {"epochs": 3, "augment": "", "bf16": False}),
    "mlp 10x512, 3 ep (book recipe), fp32": (MLP10, {"epochs": 3, "bf16": False}),
    "mlp 10x512, 3 ep, bf16": (MLP10, {"epochs": 3, "bf16": True}),
    "mlp 10x512, 10 ep, bf16": (MLP10, {"epochs": 10, "bf16": True}),
    # round 2 (AVX2 CPU, fp32): longer schedules of the no-augmentation, label-smoothing recipe
    "resnet20 bn, 3 ep, batch 100, no augmentation, label smoothing 0.1, fp32": (RESNET20, {
        "epochs": 3, "batch_size": 100, "lr": 0.08, "augment": "", "label_smoothing": 0.1, "bf16": False}),
    "resnet20 ln, 2 ep, batch 100, clip 1, no augmentation, label smoothing 0.1, fp32": ({**RESNET20, "norm": "ln"}, {
        "epochs": 2, "batch_size": 100, "lr": 0.08, "grad_clip": 1.0, "augment": "", "label_smoothing": 0.1,
        "bf16": False}),
    "resnet20 fixup, 2 ep, batch 100, clip 1, no augmentation, label smoothing 0.1, fp32": ({**RESNET20, "norm": "fixup"}, {
        "epochs": 2, "batch_size": 100, "lr": 0.08, "grad_clip": 1.0, "augment": "", "label_smoothing": 0.1,
        "bf16": False}),
    "mlp 10x512, 6 ep, no augmentation, label smoothing 0.1, fp32": (MLP10, {
        "epochs": 6, "augment": "", "label_smoothing": 0.1, "bf16": False}),
    # weight averaging (an EMA of the weights, then BatchNorm re-estimated) and smaller batches
    "resnet20 bn, 1 ep, batch 100, no augmentation, label smoothing 0.1, ema 0.99, fp32": (RESNET20, {
        "epochs": 1, "batch_size": 100, "lr": 0.08, "augment": "", "label_smoothing": 0.1, "ema": 0.99,
        "bf16": False}),
    "resnet20 bn, 1 ep, batch 50, lr 0.05, no augmentation, label smoothing 0.1, fp32": (RESNET20, {
        "epochs": 1, "batch_size": 50, "lr": 0.05, "augment": "", "label_smoothing": 0.1, "bf16": False}),
    "mlp 10x512, 6 ep, no augmentation, label smoothing 0.1, ema 0.9, fp32": (MLP10, {
        "epochs": 6, "augment": "", "label_smoothing": 0.1, "ema": 0.9, "bf16": False}),
    "resnet20 ln, 3 ep, batch 100, clip 1, no augmentation, label smoothing 0.1, fp32": ({**RESNET20, "norm": "ln"}, {
        "epochs": 3, "batch_size": 100, "lr": 0.08, "grad_clip": 1.0, "augment": "", "label_smoothing": 0.1,
        "bf16": False}),
    "resnet20 fixup, 3 ep, batch 100, clip 1, no augmentation, label smoothing 0.1, fp32": ({**RESNET20, "norm": "fixup"}, {
        "epochs": 3, "batch_size": 100, "lr": 0.08, "grad_clip": 1.0, "augment": "", "label_smoothing": 0.1,
        "bf16": False}),
    "resnet20 ln, 3 ep, batch 100, lr 0.04, clip 1, no augmentation, label smoothing 0.1, fp32": (
        {**RESNET20, "norm": "ln"}, {"epochs": 3, "batch_size": 100, "lr": 0.04, "grad_clip": 1.0, "augment": "",
                                     "label_smoothing": 0.1, "bf16": False}),
    "vgg11 x1, 3 ep, batch 100, lr 0.04, clip 1, no augmentation, label smoothing 0.1, fp32": (
        {**VGG11, "width": 1}, {"epochs": 3, "batch_size": 100, "lr": 0.04, "grad_clip": 1.0, "augment": "",
                                "label_smoothing": 0.1, "bf16": False}),
    # round 3 (AVX512-BF16 EPYC, bf16): VGG11 x1 towards 92%, a longer schedule or a higher lr
    "vgg11 x1, 5 ep, batch 100, lr 0.04, clip 1, no augmentation, label smoothing 0.1, bf16": (
        {**VGG11, "width": 1}, {"epochs": 5, "batch_size": 100, "lr": 0.04, "grad_clip": 1.0, "augment": "",
                                "label_smoothing": 0.1, "bf16": True}),
    "vgg11 x1, 3 ep, batch 100, lr 0.08, clip 1, no augmentation, label smoothing 0.1, bf16": (
        {**VGG11, "width": 1}, {"epochs": 3, "batch_size": 100, "lr": 0.08, "grad_clip": 1.0, "augment": "",
                                "label_smoothing": 0.1, "bf16": True}),
    "vgg11 x0.5, 2 ep, batch 100, lr 0.04, clip 1, no augmentation, label smoothing 0.1, fp32": (
        {**VGG11, "width": 0.5}, {"epochs": 2, "batch_size": 100, "lr": 0.04, "grad_clip": 1.0, "augment": "",
                                  "label_smoothing": 0.1, "bf16": False}),
}


def run(name: str) -> dict:
    config, kwargs = RUNS[name]
    torch.manual_seed(0)
    model = models.build(config)
    stats = train.fit(model, FM, seed=0, device="cpu", progress=False, **kwargs)
    result = evaluate(model, data.loader(FM, "test", device="cpu"))
    cpu = stats["images_per_second"] / stats["images_per_cpu_second"] * stats["seconds"]  # CPU s, approx.
    return {"name": name, "config": config, "fit": kwargs, "test_accuracy": result["accuracy"],
            "test_loss": result["loss"], "test_examples": 10000, "wall_seconds": stats["seconds"],
            "cpu_seconds": cpu, "images_per_second": stats["images_per_second"],
            "accuracy_per_cpu_minute": result["accuracy"] / (cpu / 60), "steps": stats["steps"],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "threads": torch.get_num_threads(),
            "load_1min": os.getloadavg()[0], "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": train.native_bf16("cpu")}


def recorded() -> list:
    return json.loads(OUT.read_text()) if OUT.exists() else []


def write(record: dict) -> None:
    """Append ``record`` to the study's JSON as it is on disk now (so two processes running disjoint
    ``--runs`` keep each other's records), replaced atomically (a temp file beside it, then ``os.replace``)."""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(recorded() + [record], indent=1) + "\n")
    os.replace(tmp, OUT)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", nargs="*", default=list(RUNS), help="names of RUNS (default: all)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    unknown = [n for n in args.runs if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown run {unknown[0]!r}; valid: {', '.join(RUNS)}")
    torch.set_num_threads(args.threads)
    for name in args.runs:
        if any(r["name"] == name and r["fit"] == RUNS[name][1] for r in recorded()):
            continue
        record = run(name)
        write(record)
        print(f"{name:>60}: {record['test_accuracy']:.2%} in {record['wall_seconds']:.0f} s wall, "
              f"{record['cpu_seconds']:.0f} s CPU ({record['images_per_second']:.0f} img/s)", flush=True)


if __name__ == "__main__":
    main()
