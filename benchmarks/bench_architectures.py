"""Per-architecture cost of the library's steps: spec, both alignments, merge, at small inputs.

    python benchmarks/bench_architectures.py [--threads 1] [--repeats 2] [--batch 32] [--batches 2]

Two networks of each architecture with random weights (different seeds; no downloads), a fixed batch
of Gaussian images (``--batches`` batches of ``--batch``), on the CPU. Timed, best of ``--repeats``:
``permutation_spec`` (the graph analysis and its verification on the example batch), ``align`` with
``method="weight"`` and with ``method="activation"`` (given the spec), and ``repairlib.merge`` (spec,
activation matching, interpolation and exact REPAIR, scope "conv"). Also records the number of
permutation groups (head groups among them) and whether weight matching undoes a random permutation
of the first network exactly. Writes benchmarks/results/bench_architectures.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torchvision

import repairlib
from repairlib.alignment import align, permute, random_permutations
from repairlib.spec import permutation_spec

RESULTS = Path(__file__).resolve().parent / "results" / "bench_architectures.json"


def _timm(name, **kwargs):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


# name -> (builder, image side)
ARCHITECTURES = {
    "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 32),
    "torchvision mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), 32),
    "timm convnext_atto": (lambda: _timm("convnext_atto"), 32),
    "timm vit_tiny_patch16 (img 32, 12 blocks, 192 wide, 3 heads)": (lambda: _timm("vit_tiny_patch16_224", img_size=32),
                                                                     32),
    "torchvision vit (img 32, patch 8, 4 blocks, 64 wide, 4 heads)": (
        lambda: torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=4,
                                                    hidden_dim=64, mlp_dim=128, num_classes=10), 32),
}


def best_time(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def networks(make, seed):
    torch.manual_seed(seed)
    return make().eval()


def measure(make, side, data, repeats) -> dict:
    a, b = networks(make, 0), networks(make, 1)
    x = data[0][0]
    spec_s, spec = best_time(lambda: permutation_spec(a, x), repeats)
    weight_s, _ = best_time(lambda: align(a, b, data, method="weight", spec=spec), repeats)
    activation_s, _ = best_time(lambda: align(a, b, data, method="activation", spec=spec), repeats)
    merge_s, merged = best_time(lambda: repairlib.merge(a, b, data), repeats)
    true = random_permutations(spec, seed=1)
    found = align(a, permute(a, true, spec), data[:1], method="weight", spec=spec)
    exact = all(torch.equal(true[g][found[g]], torch.arange(len(found[g]))) for g in spec.groups)
    return {"image_side": side, "parameters": sum(p.numel() for p in a.parameters()), "groups": len(spec.groups),
            "head_groups": sum(g.heads > 1 for g in spec.groups.values()), "spec_s": spec_s,
            "align_weight_s": weight_s, "align_activation_s": activation_s, "merge_s": merge_s,
            "weight_matching_exact": exact, "merged_same_class": type(merged) is type(a)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name, (make, side) in ARCHITECTURES.items():
        gen = torch.Generator().manual_seed(0)
        data = [(torch.randn(args.batch, 3, side, side, generator=gen), None) for _ in range(args.batches)]
        rows[name] = measure(make, side, data, args.repeats)
        print(name, json.dumps(rows[name]), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "repeats": args.repeats,
        "batch": args.batch, "batches": args.batches, "torch": torch.__version__, "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(), "architectures": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
