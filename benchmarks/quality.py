"""Merging quality on real data: naive, aligned and aligned+REPAIR midpoints of trained pairs.

    python benchmarks/quality.py [--families mlp vgg11 resnet20] [--out book/results/quality_cpu.json]

Fashion-MNIST, two seed pairs per family, endpoints from the checkpoint zoo. For every pair: the
endpoints' test accuracy and loss, and the midpoint (alpha = 0.5) without alignment, aligned, aligned
+ REPAIR (exact, 4.2), aligned + REPAIR (closed form, 4.1), aligned + REPAIR with scope "all" (also
the residual-block outputs, 5.2) and aligned + BatchNorm reset. The
midpoint barrier is the mean of the endpoints minus the midpoint (accuracy) or the midpoint minus the
mean of the endpoints (loss): Eq. 1 of the paper evaluated at alpha = 0.5. The reduction is
1 - barrier(aligned + REPAIR) / barrier(aligned); the paper's lower bound is 60%. Eq. 1 itself takes
the largest barrier along the whole path, so the aligned and the REPAIRed interpolations are also
evaluated at alpha = 0.1, 0.2, ..., 0.9 (``repairlib.barrier``, REPAIR's endpoint statistics measured
once) and the cut of those barriers is recorded beside the midpoint's.
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
from repairlib.book import QUALITY_FILE, quality_table

# config, training settings for zoo.trained (train_subset None = all 60,000 images). The MLPs are the
# paper's plain MLPs (He init, no BatchNorm while training: BatchNorm-trained MLPs interpolate with a
# barrier of only ~5 points, see the notes in the README), lr 0.05 as in the authors' MLP notebooks,
# 20 epochs. Longer training does not raise REPAIR's cut: with 60 epochs (endpoints 88.9/89.0%) the
# aligned midpoint of seeds 0, 1 reached 73.6% and REPAIR 79.0%, a cut of only 36% / 49%. The conv nets
# train on 10,000 images for 4 epochs with batch 100 (400 SGD steps; Table 1's batch of 500 gives
# only 80 steps and endpoints at 50-65%), lr scaled down with the batch.
FAMILIES = {
    "mlp": ({"arch": "mlp", "depth": 10, "width": 512, "in_features": 784, "init": "he"},
            {"train_subset": None, "epochs": 20, "lr": 0.05}),
    "vgg11": ({"arch": "vgg", "depth": 11, "width": 1, "in_channels": 1},
              {"train_subset": 10000, "epochs": 4, "batch_size": 100, "lr": 0.04}),
    "resnet20": ({"arch": "resnet20", "width": 1, "norm": "bn", "in_channels": 1},
                 {"train_subset": 10000, "epochs": 4, "batch_size": 100, "lr": 0.08}),
}
PAIRS = ((0, 1), (2, 3))
DATASET = "fashion_mnist"
CURVE_ALPHAS = tuple(i / 10 for i in range(1, 10))  # the endpoints (alpha 0 and 1) have no barrier


def midpoint_row(model_a, model_b, stats_data, test):
    t0 = time.perf_counter()
    ends = [repairlib.evaluate(m, test) for m in (model_a, model_b)]
    row = {"endpoint_a": ends[0], "endpoint_b": ends[1],
           "naive": repairlib.evaluate(repairlib.interpolate(model_a, model_b, 0.5), test)}
    perms = repairlib.align(model_a, model_b, stats_data, stats_scope="conv")
    aligned_b = repairlib.permute(model_b, perms)
    row.update(eq1_barriers(model_a, aligned_b, stats_data, test, ends, perms.endpoint_stats))
    middle = CURVE_ALPHAS.index(0.5)
    for name in ("aligned", "repair"):  # the midpoints are points of the Eq. 1 curves
        row[name] = {key: row["curves"][name][key][middle] for key in ("accuracy", "loss")}
    mid = repairlib.interpolate(model_a, aligned_b, 0.5)
    fixed = repairlib.repair(mid, model_a, aligned_b, stats_data, 0.5, variant="closed_form",
                             stats=perms.endpoint_stats)
    row["repair_closed_form"] = repairlib.evaluate(fixed, test)
    fixed = repairlib.repair(mid, model_a, aligned_b, stats_data, 0.5, scope="all")
    row["repair_all"] = repairlib.evaluate(fixed, test)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in mid.modules())
    row["reset_bn"] = repairlib.evaluate(repairlib.reset_bn(mid, stats_data), test) if has_bn else None
    row["matched_correlation"] = sum(perms.matched_correlation().values()) / len(perms)
    mean_acc = (ends[0]["accuracy"] + ends[1]["accuracy"]) / 2
    mean_loss = (ends[0]["loss"] + ends[1]["loss"]) / 2
    for key in ("naive", "aligned", "repair", "repair_closed_form", "repair_all", "reset_bn"):
        if row[key] is not None:
            row[key]["barrier_accuracy"] = mean_acc - row[key]["accuracy"]
            row[key]["barrier_loss"] = row[key]["loss"] - mean_loss
    row["reduction_accuracy"] = 1 - row["repair"]["barrier_accuracy"] / row["aligned"]["barrier_accuracy"]
    row["reduction_loss"] = 1 - row["repair"]["barrier_loss"] / row["aligned"]["barrier_loss"]
    row["reduction_accuracy_all"] = 1 - row["repair_all"]["barrier_accuracy"] / row["aligned"]["barrier_accuracy"]
    row["reduction_loss_all"] = 1 - row["repair_all"]["barrier_loss"] / row["aligned"]["barrier_loss"]
    row["seconds"] = time.perf_counter() - t0
    return row


def eq1_barriers(model_a, aligned_b, stats_data, test, ends, stats) -> dict:
    """Eq. 1's barriers (largest over ``CURVE_ALPHAS``) of the aligned and the aligned + REPAIR (exact)
    interpolations, their curves, and REPAIR's cut of them."""
    endpoints = {"a": ends[0], "b": ends[1]}
    curves = {name: repairlib.barrier(model_a, aligned_b, test, CURVE_ALPHAS, correct=correct,
                                      stats_data=stats_data, stats=stats, endpoints=endpoints)
              for name, correct in (("aligned", "none"), ("repair", "repair"))}
    for curve in curves.values():
        del curve["endpoints"]
    return {"curves": curves,
            "reduction_accuracy_eq1": 1 - curves["repair"]["barrier_accuracy"] / curves["aligned"]["barrier_accuracy"],
            "reduction_loss_eq1": 1 - curves["repair"]["barrier_loss"] / curves["aligned"]["barrier_loss"]}


def write(out: Path, record: dict):
    """Atomic JSON write (a stopped run never leaves a half-written results file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--stats-examples", type=int, default=5000)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "book" / "results" / QUALITY_FILE))
    args = p.parse_args()
    out = Path(args.out)
    # a fixed order: every pass over the statistics images sees the same batches, so a result does not
    # depend on how many passes came before it (exact REPAIR renormalises batch by batch)
    stats_data = data.loader(DATASET, "train", subset=args.stats_examples, device="cpu", shuffle=False)
    test = data.loader(DATASET, "test", device="cpu")
    # rows of families not rerun are kept, so one family can be remeasured alone
    kept = json.loads(out.read_text())["results"] if out.exists() else []
    results = [r for r in kept if r["family"] not in args.families]
    for family in args.families:
        config, training = FAMILIES[family]
        for seeds in PAIRS:
            start = time.perf_counter()
            a, b = (zoo.trained(config, DATASET, seed=s, device="cpu", **training) for s in seeds)
            train_seconds = time.perf_counter() - start
            row = midpoint_row(a, b, stats_data, test)
            row.update(family=family, seeds=list(seeds), config=config, training=training,
                       train_or_load_seconds=train_seconds)
            results.append(row)
            print(json.dumps({k: row[k] for k in ("family", "seeds", "reduction_accuracy", "reduction_loss",
                                                   "reduction_accuracy_eq1", "reduction_loss_eq1",
                                                   "reduction_accuracy_all", "reduction_loss_all")}), flush=True)
            order = {f: i for i, f in enumerate(FAMILIES)}
            results.sort(key=lambda r: (order[r["family"]], r["seeds"]))
            write(out, {"dataset": DATASET, "stats_examples": args.stats_examples,
                        "test_examples": len(test.indices),
                        "device": f"cpu ({torch.get_num_threads()} threads, {platform.machine()})",
                        "date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
                        "results": results})
    print(quality_table(out.parent))


if __name__ == "__main__":
    main()
