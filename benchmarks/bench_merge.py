"""Speed of align + exact REPAIR against its floor and against a per-layer prefix-pass matcher.

    python benchmarks/bench_merge.py [--examples 5000] [--batch-size 100] [--repeats 3] [--prefix-repeats 2]

Two ResNet20 x1 (BatchNorm) networks, Fashion-MNIST training images, on the CPU. The batch (100 by
default) is the one at which a CPU runs ResNet20 fastest (its activations stay in cache); it is also
the batch of REPAIR's renormalising pass (100 images x 49-784 positions per channel). All
timings are taken side by side in one run, the best of ``--repeats`` rounds taken in turns (the
prefix matchers in the first ``--prefix-repeats`` rounds). Floor and repairlib run back to back in
every round, in alternating order, and the median of the rounds' own ratios is reported beside the
ratio of the best rounds:

- floor: one forward pass of each endpoint and one of the merged network over the images (in
  ``repairlib.plumbing.batches(chunk=True)`` pieces, the fastest plain forward pass), the least any
  data-driven align + REPAIR must spend;
- repairlib: ``repairlib.merge(a, b, data)``, the one call of the README (inside: ``align`` gathers the
  matching and the REPAIR statistics in one pass of both endpoints, without the endpoint covariance the
  exact variant does not need; ``permute``, ``interpolate``, exact ``repair``, one pass of the merged
  network, fusion included);
- the plain steps: ``align``, ``permute``, ``interpolate``, ``repair`` called one after another with
  no statistics reused (``repair`` then measures both endpoints in a pass of its own);
- prefix-pass matcher: the way the authors' release matches, one data pass per matched layer through
  the sub-network that ends there (here: one pass per permutation group, cut after its last probe),
  then the same REPAIR (one pass measuring both endpoints, one through the merged network). Two
  versions: with repairlib's moment code (so the ratio counts data passes only), and with the
  authors' statistics (``run_corr_matrix`` of their notebooks: every batch's activations copied to
  ``[samples, C]`` float64, per-batch means, standard deviations and outer products averaged).

Writes benchmarks/results/bench_merge.json. Targets: repairlib <= 1.5x the floor; the authors'
per-layer pipeline >= 5x slower than repairlib's (every ratio is reported).
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
from repairlib.alignment import Alignment, permute, solve_assignment
from repairlib.plumbing import batches
from repairlib.spec import permutation_spec
from repairlib.stats import Moments, capture


def best_of(repeats, fn):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


@torch.no_grad()
def forward_all(model, data):
    for x, _ in batches(data, chunk=True):
        model(x)


def plain_steps(a, b, batches):
    perms = repairlib.align(a, b, batches)
    b2 = permute(b, perms)
    return repairlib.repair(repairlib.interpolate(a, b2, 0.5), a, b2, batches, 0.5)


class AuthorsCorrelation:
    """The statistics of the authors' ``run_corr_matrix``: per batch, the activations as ``[samples, C]``
    float64, their means, standard deviations and ``out0.T @ out1 / samples``, averaged over batches."""

    def __init__(self):
        self.mean0 = self.mean1 = self.std0 = self.std1 = self.outer = None
        self.batches = 0

    def update(self, out0, out1):  # [N, C, L] each
        out0 = out0.permute(0, 2, 1).reshape(-1, out0.shape[1]).double()
        out1 = out1.permute(0, 2, 1).reshape(-1, out1.shape[1]).double()
        stats = (out0.mean(0), out1.mean(0), out0.std(0), out1.std(0), out0.T @ out1 / out0.shape[0])
        if self.batches == 0:
            self.mean0, self.mean1, self.std0, self.std1, self.outer = stats
        else:
            for name, value in zip(("mean0", "mean1", "std0", "std1", "outer"), stats):
                setattr(self, name, getattr(self, name) + value)
        self.batches += 1

    def corr_xy(self):
        k = self.batches
        cov = self.outer / k - torch.outer(self.mean0 / k, self.mean1 / k)
        return cov / (torch.outer(self.std0 / k, self.std1 / k) + 1e-4)


@torch.no_grad()
def prefix_pass_align(a, b, data, spec, statistics=lambda: Moments(cross="full")):
    """One data pass per permutation group through the prefix network ending at its probes."""
    perms, corr = {}, {}
    for g, group in spec.groups.items():
        channels = [group.size] * len(group.probes)
        cap_a, cap_b = capture(a, group.probes, channels=channels), capture(b, group.probes, channels=channels)
        moments = [statistics() for _ in group.probes]
        for x, _ in batches(data, chunk=True):
            for m, ra, rb in zip(moments, cap_a(x), cap_b(x)):
                m.update(ra, rb)
        corr[g] = sum(m.corr_xy() for m in moments)
        perms[g] = solve_assignment(corr[g])
    return Alignment(perms, spec, corr)


def prefix_pass_merge(a, b, data, spec, statistics=lambda: Moments(cross="full")):
    """``(merged, alignment, seconds spent aligning)``; REPAIR measures the endpoints in its own pass."""
    start = time.perf_counter()
    perms = prefix_pass_align(a, b, data, spec, statistics)
    t_align = time.perf_counter() - start
    b2 = permute(b, perms)
    mid = repairlib.interpolate(a, b2, 0.5)
    return repairlib.repair(mid, a, b2, data, 0.5), perms, t_align


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--examples", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prefix-repeats", type=int, default=2, help="rounds that also time the prefix matchers")
    args = p.parse_args()
    torch.manual_seed(0)
    a, b = (models.resnet20(1, "bn", in_channels=1).eval() for _ in range(2))
    batches = data.loader("fashion_mnist", "train", batch_size=args.batch_size, subset=args.examples, device="cpu")
    for m in (a, b):  # BatchNorm statistics of real data, as in a trained network
        repairlib.reset_bn(m, batches)
    spec = permutation_spec(a, next(iter(batches))[0])
    mid = repairlib.interpolate(a, b, 0.5)

    # interleaved repeats: a slow spell of a shared machine hits every pipeline alike; the slow prefix
    # matchers run in the first --prefix-repeats rounds, and every pipeline keeps its best round
    floor, mine, plain, align_only, prefix, authors_prefix = [], [], [], [], [], []
    for r in range(args.repeats):
        timed_floor = lambda: floor.append(best_of(1, lambda: [forward_all(m, batches) for m in (a, b, mid)]))
        timed_mine = lambda: mine.append(best_of(1, lambda: repairlib.merge(a, b, batches)))
        for run in ((timed_floor, timed_mine) if r % 2 == 0 else (timed_mine, timed_floor)):  # alternate the order
            run()
        plain.append(best_of(1, lambda: plain_steps(a, b, batches)))
        align_only.append(best_of(1, lambda: repairlib.align(a, b, batches, spec=spec)))
        if r < args.prefix_repeats:
            prefix.append(best_of(1, lambda: prefix_pass_merge(a, b, batches, spec)))
            authors_prefix.append(best_of(1, lambda: prefix_pass_merge(a, b, batches, spec, AuthorsCorrelation)))
    (t_floor, _), (t_ours, merged), (t_align, ours), (t_plain, stepwise) = (
        min(r, key=lambda t: t[0]) for r in (floor, mine, align_only, plain))
    t_prefix, (_, theirs, t_prefix_align) = min(prefix, key=lambda t: t[0])
    t_authors, (_, authors, t_authors_align) = min(authors_prefix, key=lambda t: t[0])
    paired = statistics.median(m / f for (f, _), (m, _) in zip(floor, mine))  # each round's own ratio
    plain_paired = statistics.median(p / f for (f, _), (p, _) in zip(floor, plain))
    x = next(iter(batches))[0]
    same_network = bool(torch.allclose(merged(x), stepwise(x), atol=1e-4, rtol=1e-4))
    same = all(torch.equal(ours[g], theirs[g]) for g in ours)
    same_authors = sum(torch.equal(ours[g], authors[g]) for g in ours)
    result = {
        "examples": args.examples, "batch_size": args.batch_size, "repeats": args.repeats,
        "prefix_repeats": min(args.prefix_repeats, args.repeats), "model": "resnet20 x1 bn", "dataset": "fashion_mnist",
        "groups": len(spec.groups), "device": f"cpu, {torch.get_num_threads()} threads, {platform.machine()}",
        "floor_seconds": t_floor, "repairlib_seconds": t_ours, "repairlib_over_floor": t_ours / t_floor,
        "floor_rounds": [t for t, _ in floor], "repairlib_rounds": [t for t, _ in mine],
        "repairlib_over_floor_paired_median": paired,
        "plain_steps_seconds": t_plain, "plain_steps_over_floor": t_plain / t_floor,
        "plain_steps_rounds": [t for t, _ in plain], "plain_steps_over_floor_paired_median": plain_paired,
        "plain_steps_same_network": same_network,
        "align_seconds": t_align, "prefix_align_seconds": t_prefix_align,
        "prefix_align_over_align": t_prefix_align / t_align,
        "prefix_pipeline_seconds": t_prefix, "prefix_pipeline_over_repairlib": t_prefix / t_ours,
        "authors_align_seconds": t_authors_align, "authors_align_over_align": t_authors_align / t_align,
        "authors_pipeline_seconds": t_authors, "authors_pipeline_over_repairlib": t_authors / t_ours,
        "same_permutations": same, "authors_statistics_same_groups": f"{same_authors} of {len(ours)}",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(__file__).parent / "results" / "bench_merge.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"floor (3 forward passes)                  {t_floor:7.2f} s")
    print(f"repairlib.merge (align + REPAIR)          {t_ours:7.2f} s   {t_ours / t_floor:5.2f}x floor (target <= 1.5); "
          f"median of the rounds' own ratios {paired:.2f}x")
    print(f"plain steps, no statistics reused         {t_plain:7.2f} s   {t_plain / t_floor:5.2f}x floor; "
          f"median of the rounds' own ratios {plain_paired:.2f}x; same network as merge: {same_network}")
    print(f"prefix passes, repairlib's statistics     {t_prefix:7.2f} s   {t_prefix / t_ours:5.2f}x repairlib")
    print(f"prefix passes, the authors' statistics    {t_authors:7.2f} s   {t_authors / t_ours:5.2f}x repairlib (target >= 5)")
    print(f"alignment only: one pass {t_align:.2f} s, prefix passes {t_prefix_align:.2f} s "
          f"({t_prefix_align / t_align:.1f}x), with the authors' statistics {t_authors_align:.2f} s "
          f"({t_authors_align / t_align:.1f}x); same permutations: {same} (authors' statistics: "
          f"{same_authors} of {len(ours)} groups)")
    assert merged is not None


if __name__ == "__main__":
    main()
