"""Speed of ``repairlib.merge_many`` (activation matching + exact REPAIR) against its floor, for N networks.

    python benchmarks/bench_merge_many.py [--ns 2 4 8] [--repeats 3] [--repeats-large 2] [--examples 5000]
                                          [--threads N]

N ResNet20 x1 (BatchNorm) networks, untrained, their BatchNorm statistics reset on the real data (as
in a trained network), 5,000 Fashion-MNIST training images in batches of 100, on the CPU. The floor
is one forward pass of each of the N networks and one of the merged network over the images (in
``repairlib.plumbing.batches(chunk=True)`` pieces, the fastest plain forward pass): N + 1 passes, the
least any data-driven N-way align + REPAIR must spend. ``merge_many`` spends one pass of all N networks
(matching to the first network and REPAIR's statistics together) and one renormalising pass of the
merged network, plus the cross moments and the assignments.

As in ``bench_merge.py``, floor and ``merge_many`` run back to back in every round, in alternating
order; the ratio of the best rounds and the median of the rounds' own ratios are reported. N above 4
gets ``--repeats-large`` rounds. Target: ``merge_many`` <= 1.5x the floor. Writes
benchmarks/results/bench_merge_many.json.
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import repairlib
from repairlib import data, models
from repairlib.plumbing import batches as pieces


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@torch.no_grad()
def forward_all(model, data):
    for x, _ in pieces(data, chunk=True):
        model(x)


def networks(n, batches):
    """``n`` untrained ResNet20 x1 BatchNorm networks with BatchNorm statistics of the real data."""
    torch.manual_seed(0)
    nets = [models.resnet20(1, "bn", in_channels=1).eval() for _ in range(n)]
    for m in nets:
        repairlib.reset_bn(m, batches)
    return nets


def rounds_for(n, batches, repeats):
    """``(floor seconds, merge_many seconds)`` of each round, the two in alternating order."""
    nets = networks(n, batches)
    merged = repairlib.merge_many(nets, batches)  # warm-up (tracing, allocator), and the merged net of the floor
    floor, mine = [], []
    timed_floor = lambda: floor.append(timed(lambda: [forward_all(m, batches) for m in (*nets, merged)])[0])
    timed_mine = lambda: mine.append(timed(lambda: repairlib.merge_many(nets, batches))[0])
    for r in range(repeats):
        for run in ((timed_floor, timed_mine) if r % 2 == 0 else (timed_mine, timed_floor)):
            run()
        print(f"  N={n} round {r + 1}: floor {floor[-1]:.2f} s, merge_many {mine[-1]:.2f} s "
              f"({mine[-1] / floor[-1]:.2f}x)", flush=True)
    return floor, mine


def write(args, results):
    out = Path(__file__).parent / "results" / "bench_merge_many.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "examples": args.examples, "batch_size": args.batch_size, "model": "resnet20 x1 bn (untrained, BN reset)",
        "dataset": "fashion_mnist", "align": "activation", "correct": "repair",
        "device": f"cpu, {torch.get_num_threads()} threads, {platform.machine()}", "results": results,
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }, indent=1) + "\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repeats-large", type=int, default=2, help="rounds for N > 4")
    p.add_argument("--examples", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = p.parse_args()
    if args.threads:  # on a machine shared with other processes, 2 threads can run 5-8x slower than 1
        torch.set_num_threads(args.threads)
    batches = data.loader("fashion_mnist", "train", batch_size=args.batch_size, subset=args.examples, device="cpu")
    results = []
    for n in args.ns:
        floor, mine = rounds_for(n, batches, args.repeats if n <= 4 else args.repeats_large)
        best = min(mine) / min(floor)
        paired = statistics.median(m / f for f, m in zip(floor, mine))
        results.append({
            "n": n, "floor_passes": n + 1, "rounds": len(floor),
            "floor_seconds": min(floor), "merge_many_seconds": min(mine),
            "merge_many_over_floor": best, "merge_many_over_floor_paired_median": paired,
            "floor_rounds": floor, "merge_many_rounds": mine, "target_met": max(best, paired) <= 1.5,
        })
        write(args, results)  # after every N: a run cut short keeps what it measured
        print(f"N={n}: floor ({n + 1} forward passes) {min(floor):.2f} s, merge_many {min(mine):.2f} s: "
              f"{best:.2f}x best rounds, {paired:.2f}x median of paired rounds (target <= 1.5)", flush=True)


if __name__ == "__main__":
    main()
