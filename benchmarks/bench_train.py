"""Training throughput: repairlib's trainer against the plain torchvision pipeline, on the CPU.

    python benchmarks/bench_train.py [--steps N] [--repeats 2] [--threads 2] [--bf16]

Both sides train the same network (for the default MLP: the network ``fit`` trains, with its hidden
batch norms; the plain MLP, the paper's, trains without), with the same batch size, augmentation type, SGD optimizer and lr schedule,
on Fashion-MNIST, side by side in one run. The baseline is the textbook pipeline:
``torchvision.datasets.FashionMNIST`` with PIL transforms (RandomCrop(28, padding=2) [+ flip +
cutout as RandomErasing], ToTensor, Normalize) and a ``torch.utils.data.DataLoader`` (measured with
0 and with 2 worker processes; the faster one is compared). repairlib: ``repairlib.train.fit``
(uint8 tensors, augmentation of whole batches, channels_last for conv nets, fp32 like the baseline;
``--bf16`` also times it with bf16 autocast). Each timing covers a fixed number of SGD steps (20 for
the MLP, 10 for ResNet20, or ``--steps``) after warm-up steps; the best of ``--repeats`` is kept.

Also reported: images per CPU second of the in-process pipelines (repairlib and the 0-worker
baseline), which other load on a shared machine distorts much less than wall-clock time.
Writes benchmarks/results/bench_train.json (with the 1-minute load average).
Targets (wall clock): 10x512 MLP >= 3x, ResNet20 x1 >= 1.2x.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms as T
from torchvision.datasets.utils import extract_archive

from repairlib import data, models, train

CASES = {  # name -> (model config, timed steps, speed-up target)
    "mlp 10x512": ({"arch": "mlp", "depth": 10, "width": 512}, 20, 3.0),  # fit adds hidden BatchNorm
    "mlp 10x512 plain": ({"arch": "mlp", "depth": 10, "width": 512, "init": "he"}, 20, 3.0),  # the paper's MLP
    "resnet20 x1": ({"arch": "resnet20", "width": 1, "norm": "bn", "in_channels": 1}, 10, 1.2),
}


def torchvision_root(source: Path) -> str:
    """A root that holds ``FashionMNIST/raw/`` as torchvision's FashionMNIST expects it, made from the
    original ``.gz`` files in ``source`` (the Debian package's copy by default)."""
    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in source.glob("*-ubyte.gz"):
        extract_archive(str(gz), str(raw))
    return str(root)


def torchvision_loader(root, recipe, num_workers):
    """The plain pipeline: PIL transforms per image, a DataLoader collating them."""
    mean, std = data.info("fashion_mnist")["mean"], data.info("fashion_mnist")["std"]
    ops = recipe.augment.split("+")
    pil = [T.RandomCrop(28, padding=2)] + ([T.RandomHorizontalFlip()] if "flip" in ops else [])
    cutout = [T.RandomErasing(p=1.0, scale=(100 / 784, 100 / 784), ratio=(1.0, 1.0), value=0)] if "cutout" in ops else []
    transform = T.Compose([*pil, T.ToTensor(), *cutout, T.Normalize(mean, std)])
    dataset = torchvision.datasets.FashionMNIST(root, train=True, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=True,
                                       num_workers=num_workers, persistent_workers=num_workers > 0)


def baseline_images_per_second(net, batches, recipe, steps, warmup):
    """``(images per wall second, images per CPU second of this process)`` of a plain SGD loop over a
    DataLoader (same optimizer and schedule as ``fit``; the CPU time misses worker processes)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: train.lr_factor(s, steps + warmup, recipe))
    criterion = nn.CrossEntropyLoss()
    net.train()
    it = iter(batches)
    for step in range(warmup + steps):
        if step == warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        inputs, targets = next(it)
        loss = criterion(net(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    images = steps * recipe.batch_size
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu_start)


def repairlib_images_per_second(config, recipe, steps, warmup, bf16=False):
    """``(images per wall second, images per CPU second)`` that ``fit`` reports for ``steps`` steps
    (its SGD loop, data augmentation included)."""
    fit = {"epochs": 1, "device": "cpu", "progress": False, "batch_size": recipe.batch_size, "bf16": bf16}
    train.fit(models.build(config), "fashion_mnist", train_subset=warmup * recipe.batch_size, **fit)
    run = train.fit(models.build(config), "fashion_mnist", train_subset=steps * recipe.batch_size, **fit)
    return run["images_per_second"], run["images_per_cpu_second"]


def trained_network(config):
    """The module ``fit`` runs SGD on: the model itself, or for a default MLP the model with hidden
    BatchNorm (a plain MLP, ``init="he"``, trains as it is)."""
    model = models.build(config)
    return train.with_hidden_batchnorm(model) if getattr(model, "trains_with_batchnorm", False) else model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (default: 20 MLP, 10 ResNet20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="also time repairlib with bf16 autocast")
    p.add_argument("--source", type=Path, default=data.SYSTEM_FASHION_MNIST, help="folder of the IDX .gz files")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_train.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = torchvision_root(args.source)
    load_before, rows = os.getloadavg()[0], {}
    for name, (config, steps, target) in CASES.items():
        recipe, steps = train.recipe_for(config["arch"], "fashion_mnist"), args.steps or steps
        ours, ours_bf16, base = [], [], {0: [], 2: []}  # lists of (images/s, images/CPU-s)
        for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
            torch.manual_seed(0)
            ours.append(repairlib_images_per_second(config, recipe, steps, args.warmup))
            if args.bf16:
                ours_bf16.append(repairlib_images_per_second(config, recipe, steps, args.warmup, bf16=True))
            for workers, timings in base.items():
                batches = torchvision_loader(root, recipe, workers)
                timings.append(baseline_images_per_second(trained_network(config), batches, recipe, steps,
                                                          args.warmup))
                del batches
        best = {"ours": max(w for w, _ in ours), **{w: max(x for x, _ in v) for w, v in base.items()}}
        speedup = best["ours"] / max(best[0], best[2])
        cpu_ours, cpu_base = max(c for _, c in ours), max(c for _, c in base[0])
        rows[name] = {"config": config, "batch_size": recipe.batch_size, "augment": recipe.augment,
                      "steps": steps, "repairlib_images_per_second": best["ours"],
                      "repairlib_bf16_images_per_second": max(w for w, _ in ours_bf16) if ours_bf16 else None,
                      "torchvision_images_per_second": {f"workers={w}": best[w] for w in base},
                      "speedup": speedup, "target": target, "meets_target": speedup >= target,
                      "images_per_cpu_second": {"repairlib": cpu_ours, "torchvision workers=0": cpu_base},
                      "cpu_time_speedup_vs_workers0": cpu_ours / cpu_base}
    result = {"device": f"cpu, {torch.get_num_threads()} threads, {platform.machine()}", "torch": torch.__version__,
              "torchvision": torchvision.__version__, "repeats": args.repeats,
              "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]}, "cases": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'model':<17} {'repairlib img/s':>16} {'tv w=0':>9} {'tv w=2':>9} {'speed-up':>9} {'target':>7}"
          f" {'CPU-time speed-up':>18}{'  repairlib bf16 img/s' if args.bf16 else ''}")
    for name, r in rows.items():
        tv, bf16 = r["torchvision_images_per_second"], r["repairlib_bf16_images_per_second"]
        print(f"{name:<17} {r['repairlib_images_per_second']:16.0f} {tv['workers=0']:9.0f} {tv['workers=2']:9.0f} "
              f"{r['speedup']:8.2f}x {r['target']:6.1f}x {r['cpu_time_speedup_vs_workers0']:17.2f}x"
              f"{'' if r['meets_target'] else ' (target missed)'}{f'  {bf16:20.0f}' if bf16 else ''}")


if __name__ == "__main__":
    main()
