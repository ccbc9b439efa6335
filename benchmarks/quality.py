"""Merging quality on real data: naive, aligned and aligned+REPAIR midpoints of trained pairs.

    python benchmarks/quality.py [--families mlp vgg11 resnet20] [--out book/results/quality_cpu.json]

Fashion-MNIST, two seed pairs per family, endpoints from the checkpoint zoo. For every pair: the
endpoints' test accuracy and loss, and the midpoint (alpha = 0.5) without alignment, aligned, aligned
+ REPAIR (exact, 4.2), aligned + REPAIR (closed form, 4.1) and aligned + BatchNorm reset. The
midpoint barrier is the mean of the endpoints minus the midpoint (accuracy) or the midpoint minus the
mean of the endpoints (loss): Eq. 1 of the paper evaluated at alpha = 0.5. The reduction is
1 - barrier(aligned + REPAIR) / barrier(aligned); the paper's lower bound is 60%.
"""

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import repairlib
from repairlib import data, zoo

FAMILIES = {  # config, train subset (None = all 60,000), epochs
    "mlp": ({"arch": "mlp", "depth": 10, "width": 512, "in_features": 784}, None, 20),
    "vgg11": ({"arch": "vgg", "depth": 11, "width": 1, "in_channels": 1}, 10000, 4),
    "resnet20": ({"arch": "resnet20", "width": 1, "norm": "bn", "in_channels": 1}, 10000, 4),
}
PAIRS = ((0, 1), (2, 3))
DATASET = "fashion_mnist"


def midpoint_row(model_a, model_b, stats_data, test):
    t0 = time.perf_counter()
    ends = [repairlib.evaluate(m, test) for m in (model_a, model_b)]
    row = {"endpoint_a": ends[0], "endpoint_b": ends[1],
           "naive": repairlib.evaluate(repairlib.interpolate(model_a, model_b, 0.5), test)}
    perms = repairlib.align(model_a, model_b, stats_data, stats_scope="conv")
    aligned_b = repairlib.permute(model_b, perms)
    mid = repairlib.interpolate(model_a, aligned_b, 0.5)
    row["aligned"] = repairlib.evaluate(mid, test)
    for name, variant in (("repair", "exact"), ("repair_closed_form", "closed_form")):
        fixed = repairlib.repair(mid, model_a, aligned_b, stats_data, 0.5, variant=variant,
                                 stats=perms.endpoint_stats)
        row[name] = repairlib.evaluate(fixed, test)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in mid.modules())
    row["reset_bn"] = repairlib.evaluate(repairlib.reset_bn(mid, stats_data), test) if has_bn else None
    row["matched_correlation"] = sum(perms.matched_correlation().values()) / len(perms)
    mean_acc = (ends[0]["accuracy"] + ends[1]["accuracy"]) / 2
    mean_loss = (ends[0]["loss"] + ends[1]["loss"]) / 2
    for key in ("naive", "aligned", "repair", "repair_closed_form", "reset_bn"):
        if row[key] is not None:
            row[key]["barrier_accuracy"] = mean_acc - row[key]["accuracy"]
            row[key]["barrier_loss"] = row[key]["loss"] - mean_loss
    row["reduction_accuracy"] = 1 - row["repair"]["barrier_accuracy"] / row["aligned"]["barrier_accuracy"]
    row["reduction_loss"] = 1 - row["repair"]["barrier_loss"] / row["aligned"]["barrier_loss"]
    row["seconds"] = time.perf_counter() - t0
    return row


def _acc(r, key):
    return "–" if r[key] is None else f"{100 * r[key]['accuracy']:.1f}%"


def table(results):
    header = ("| family | seeds | endpoints acc | naive | aligned | aligned+REPAIR | closed form | BN reset "
              "| barrier cut (acc / loss) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        def acc(key, r=r):
            return _acc(r, key)
        lines.append(
            f"| {r['family']} | {r['seeds'][0]},{r['seeds'][1]} | {acc('endpoint_a')} / {acc('endpoint_b')} "
            f"| {acc('naive')} | {acc('aligned')} | {acc('repair')} | {acc('repair_closed_form')} "
            f"| {acc('reset_bn')} | {100 * r['reduction_accuracy']:.0f}% / {100 * r['reduction_loss']:.0f}% |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--stats-examples", type=int, default=5000)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "book" / "results" / "quality_cpu.json"))
    args = p.parse_args()
    stats_data = data.loader(DATASET, "train", subset=args.stats_examples, device="cpu")
    test = data.loader(DATASET, "test", device="cpu")
    results = []
    for family in args.families:
        config, subset, epochs = FAMILIES[family]
        for seeds in PAIRS:
            start = time.perf_counter()
            a, b = (zoo.trained(config, DATASET, epochs=epochs, seed=s, train_subset=subset, device="cpu")
                    for s in seeds)
            train_seconds = time.perf_counter() - start
            row = midpoint_row(a, b, stats_data, test)
            row.update(family=family, seeds=list(seeds), config=config, train_subset=subset, epochs=epochs,
                       train_or_load_seconds=train_seconds)
            results.append(row)
            print(json.dumps({k: row[k] for k in ("family", "seeds", "reduction_accuracy", "reduction_loss")}),
                  flush=True)
    record = {"dataset": DATASET, "stats_examples": args.stats_examples, "test_examples": len(test.indices),
              "device": f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
              "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
