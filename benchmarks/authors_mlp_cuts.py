"""REPAIR's cut of the aligned barrier in the authors' own saved MLP measurements.

    python benchmarks/authors_mlp_cuts.py PATH/TO/mlp_barriers_datasets.pt [--dataset fashionmnist]

The authors' release (github.com/KellerJordan/REPAIR) saves the outcome of its
``Permute-Datasets-MLP.ipynb`` in ``notebooks/figure_objects/mlp_barriers_datasets.pt``: for 10-layer
MLPs of several widths on four data sets, the endpoints ``v1``/``v2``, the aligned midpoint ``permute``
and the aligned + REPAIR midpoint ``permute_correct``, each as (train acc %, train loss, test acc %,
test loss). This script computes REPAIR's cut from them exactly as ``benchmarks/quality.py`` does for
ours (midpoint barrier, test set), so our MLP cuts can be set beside theirs. No network is run. The
file is read with ``weights_only=True`` (numbers and containers only): a file that holds anything else
is refused, never unpickled.
"""

import argparse
import re

import torch

TEST_ACC, TEST_LOSS = 2, 3


def cut(record: dict) -> dict:
    """One saved setting -> endpoints, midpoints and ``1 - barrier(REPAIR) / barrier(aligned)`` in test
    accuracy and test loss (the barrier is measured against the mean of the two endpoints)."""
    mean = [(a + b) / 2 for a, b in zip(record["v1"], record["v2"])]
    aligned, repaired = record["permute"], record["permute_correct"]
    return {
        "endpoints": (record["v1"][TEST_ACC], record["v2"][TEST_ACC]),
        "aligned": aligned[TEST_ACC], "repair": repaired[TEST_ACC],
        "aligned_barrier": mean[TEST_ACC] - aligned[TEST_ACC],
        "cut_accuracy": 1 - (mean[TEST_ACC] - repaired[TEST_ACC]) / (mean[TEST_ACC] - aligned[TEST_ACC]),
        "cut_loss": 1 - (repaired[TEST_LOSS] - mean[TEST_LOSS]) / (aligned[TEST_LOSS] - mean[TEST_LOSS]),
    }


def settings(saved: dict) -> list:
    """``(dataset, width, cut(record))`` for every key like ``fashionmnist_e100_l10_h512``, by data set
    and width."""
    rows = []
    for key, record in saved.items():
        match = re.fullmatch(r"(\w+?)_e\d+_l\d+_h(\d+)", key)
        if match is None:
            raise ValueError(f"unexpected key {key!r} in the authors' MLP record")
        rows.append((match[1], int(match[2]), cut(record)))
    return sorted(rows, key=lambda r: (r[0], r[1]))


def load_record(path) -> dict:
    """The authors' saved dict, read with ``torch.load(weights_only=True)`` (numpy scalars allowed);
    ``SystemExit`` with one line naming the file when it is missing or holds anything else."""
    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    safe = [np.dtype, type(np.dtype(np.float64)), core.multiarray.scalar]
    try:
        with torch.serialization.safe_globals(safe):
            record = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: no file at {path}") from None
    except Exception as err:  # noqa: BLE001 -- pickle garbage, unsafe globals: refuse, never retry unsafely
        details = (line.split("WeightsUnpickler error:")[-1].strip() for line in str(err).splitlines())
        detail = next((d.split(". Please use")[0] for d in details if d.startswith(("Unsupported", "Trying"))),
                      type(err).__name__)
        raise SystemExit(f"error: {path} is not the authors' record of numbers ({detail.strip()}); it is read "
                         "with weights_only=True and never unpickled") from None
    if not isinstance(record, dict):
        raise SystemExit(f"error: {path} holds a {type(record).__name__}, not the authors' dict of settings")
    return record


def main():
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--dataset", default=None, help="only this data set (e.g. fashionmnist)")
    args = p.parse_args()
    rows = settings(load_record(args.path))
    print("| data set | width | endpoints | aligned | REPAIR | aligned barrier | cut (acc / loss) |")
    print("|---|---|---|---|---|---|---|")
    for dataset, width, c in rows:
        if args.dataset in (None, dataset):
            print(f"| {dataset} | {width} | {c['endpoints'][0]:.1f} / {c['endpoints'][1]:.1f}% | {c['aligned']:.1f}% "
                  f"| {c['repair']:.1f}% | {c['aligned_barrier']:.1f} | "
                  f"{100 * c['cut_accuracy']:.0f}% / {100 * c['cut_loss']:.0f}% |")
    below = [sum(c[f"cut_{m}"] < 0.6 for _, _, c in rows) for m in ("accuracy", "loss")]
    print(f"\n{len(rows)} settings; REPAIR's cut below 60%: {below[0]} in accuracy, {below[1]} in loss")


if __name__ == "__main__":
    main()
