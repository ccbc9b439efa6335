"""Per-architecture cost of the library's steps: spec, both alignments, merge, at small inputs.

    python benchmarks/bench_architectures.py [--threads 1] [--repeats 2] [--batch 32] [--batches 2]

Two networks of each architecture with random weights (different seeds; no downloads), a fixed batch
of Gaussian images (``--batches`` batches of ``--batch``), on the CPU. Timed, best of ``--repeats``:
process CPU time of ``permutation_spec`` (the graph analysis and its verification on the example batch), ``align`` with
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


class TokenEncoder(torch.nn.Module):
    """A ViT-style classifier on ``torch.nn.TransformerEncoder``: 4 x 4 patches, 2 layers of 64 wide, 4 heads."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 64, 4, stride=4)
        layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x).flatten(2).transpose(1, 2)).mean(1))


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
    "torchvision swin (2 stages of 2 blocks, 32 wide, 2/4 heads, 4 x 4 windows)": (
        lambda: torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                                                   window_size=[4, 4], num_classes=10), 32),
    "torch nn.TransformerEncoder (2 layers, 64 wide, 4 heads)": (TokenEncoder, 32),
    "timm mixer (2 blocks, 128 wide, patch 4)": (
        lambda: __import__("timm").models.mlp_mixer.MlpMixer(img_size=32, patch_size=4, num_classes=10, num_blocks=2,
                                                             embed_dim=128), 32),
    "torchvision efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), 32),
    "torchvision densenet121": (lambda: torchvision.models.densenet121(num_classes=10), 32),
}


def best_time(fn, repeats):
    """``(best CPU seconds, output)`` of ``repeats`` calls: process CPU time, which other load on a shared
    machine distorts far less than wall time (the runs use one torch thread)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        best = min(best, time.process_time() - start)
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
        "cpus": __import__("os").cpu_count(), "load_1min_at_end": __import__("os").getloadavg()[0],
        "architectures": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
