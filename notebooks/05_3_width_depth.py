# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5.3 Network width and depth
#
# **The paper's claims.** Fig. 6 (accuracy) and Fig. 12 (loss) measure the barrier between aligned
# networks before and after REPAIR:
#
# - *Width.* 10-layer MLPs (32 to 2048 units per layer) and ResNet20s (width multiplier 1 to 16) on
#   MNIST, Fashion-MNIST, SVHN and CIFAR-10: in every case REPAIR reduces the barrier, and the barrier
#   shrinks as the networks get wider. On MNIST, the easiest task, even narrow networks reach nearly
#   zero barrier.
# - *Depth.* VGG11, 13, 16 and 19 on CIFAR-10: without REPAIR the barrier grows with depth (variance
#   collapse compounds layer after layer, section 3); with REPAIR it is small and roughly flat.
#
# **What we measure here.** The same three sweeps. The barrier (Eq. 1) is measured at the midpoint
# $\alpha = 0.5$, where the interpolation curves peak, on test images, in error (endpoints' mean
# accuracy minus the midpoint's) and in loss. At the `cpu` profile everything runs on Fashion-MNIST
# only (the other three data sets are not available on this machine): the MLPs for six epochs on
# all 60,000 images, the ResNet20s at widths $0.25\times$, $0.5\times$ and $1\times$ (the BatchNorm
# networks of section 5.1) for three epochs, and the VGGs at all four depths (11, 13, 16, 19) at a
# quarter of the paper's width (16 to 128 channels) for one epoch, every network on all 60,000 training
# images without augmentation, with label smoothing 0.1, under bf16 autocast where the CPU has it in
# hardware. The grids are much shorter than the paper's, so look for the *direction* of each effect. The `paper` profile runs the paper's grids.
#
# **On a free Colab GPU (an estimate, not a measurement).** At the `cpu` profile this page should take
# about 4 minutes on Colab's T4, training its networks from scratch, plus the install cell and the
# data download. Measured without a GPU (2026-12-02 and 2026-12-04, 2 CPU cores with AVX512-BF16, one
# torch thread per notebook): 1900 s with an empty checkpoint zoo, 50 s with the networks cached; the
# estimate assumes that training runs 10x faster on a T4 and everything else no faster (the basis: the
# *Reproduce* page, and `repairlib.book.colab`). The `paper` profile trains the paper's networks for
# the paper's epochs and is not estimated here (see *Running at the paper's scale*).

# %% tags=["hide-cell"]
# Colab / Binder: install repairlib (and the book's plotting tools) when it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("repairlib") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "repairlib[book] @ git+https://github.com/repairlib/repair-book"])

# %% tags=["parameters"]
import os

profile = os.environ.get("REPAIR_PROFILE", "cpu")  # "smoke" | "cpu" | "paper"
# overrides of repairlib.book.settings(profile, ...); None = the profile's value
datasets = None
mlp_widths = None
mlp_epochs = None
mlp_train_subset = None
resnet_widths = None
resnet_epochs = None
resnet_train_subset = None
resnet_batch_size = None
resnet_lr = None
vgg_dataset = None
vgg_depths = None
vgg_epochs = None
vgg_train_subset = None
vgg_batch_size = None
vgg_lr = None
vgg_grad_clip = None
vgg_narrow_width = None
seeds = None
seed_pairs = None

# %%
import math
import time

start = time.time()

import torch
from IPython.display import Markdown

import repairlib
from repairlib import book, data, plots, zoo
from repairlib.book import evidence, paper_vs_ours
from repairlib.models import VGG_CONFIGS

cfg = book.settings(
    profile, "5.3", datasets=datasets, mlp_widths=mlp_widths, mlp_epochs=mlp_epochs,
    mlp_train_subset=mlp_train_subset, resnet_widths=resnet_widths,
    resnet_epochs=resnet_epochs, resnet_train_subset=resnet_train_subset,
    resnet_batch_size=resnet_batch_size, resnet_lr=resnet_lr,
    vgg_dataset=vgg_dataset, vgg_depths=vgg_depths, vgg_epochs=vgg_epochs,
    vgg_train_subset=vgg_train_subset, vgg_batch_size=vgg_batch_size, vgg_lr=vgg_lr,
    vgg_grad_clip=vgg_grad_clip, vgg_narrow_width=vgg_narrow_width, seeds=seeds, seed_pairs=seed_pairs
)
cfg

# %% [markdown]
# ## One measurement, three sweeps
#
# `midpoint_barriers` trains (or loads from the zoo) two networks of one configuration with different
# seeds, aligns B to A while gathering REPAIR's endpoint statistics in the same pass, and returns the
# midpoint barrier without and with REPAIR: for every seed pair of the profile, image by image (for the
# verdicts at the end), and their mean over the pairs (for the figures and the table).

# %%
loaders = {}


def data_of(dataset):
    """(training images for statistics, test images for evaluation) of a data set, made once."""
    if dataset not in loaders:
        loaders[dataset] = (data.loader(dataset, "train", subset=cfg["stats_examples"], device=cfg["device"]),
                            data.loader(dataset, "test", subset=cfg["eval_examples"], device=cfg["device"]))
    return loaders[dataset]


def training(family):
    """How the sweep `family` ("mlp", "resnet", "vgg") trains: epochs, images, batch size, lr, gradient clip."""
    return {"epochs": cfg[f"{family}_epochs"], "train_subset": cfg[f"{family}_train_subset"],
            **{k: cfg.get(f"{family}_{k}") for k in ("batch_size", "lr", "grad_clip")},
            **book.recipe_overrides(cfg, family)}


def one_pair(config, dataset, seeds, recipe):
    """Per-example test results of the endpoints and the midpoint (before REPAIR, exact, closed form)."""
    train, test = data_of(dataset)
    model_a, model_b = [zoo.trained(config, dataset, seed=seed, **recipe, bf16=cfg["train_bf16"], device=cfg["device"])
                        for seed in seeds]
    alignment = repairlib.align(model_a, model_b, train, stats_scope="conv")
    model_b, stats = repairlib.permute(model_b, alignment), alignment.endpoint_stats
    return {**evidence.endpoints(model_a, model_b, test),
            **{when: evidence.curve(model_a, model_b, test, [0.5], correct, train, stats=stats)
               for when, correct in (("before", "none"), ("after", "repair"), ("closed_form", "closed_form"))}}, stats


def midpoint_barriers(config, dataset, recipe):
    """Eq. 1 at alpha = 0.5 between two aligned networks of `config`, before and after REPAIR (mean over
    the seed pairs), and the per-example results of every pair ("examples")."""
    examples = []
    for settings in evidence.pair_settings(cfg):
        results, stats = one_pair(config, dataset, settings["seeds"], recipe)
        examples.append(results)
    r = {when: evidence.average([evidence.summary(e, [0.5], when) for e in examples])
         for when in ("before", "after", "closed_form")}
    ends, before, after = r["before"]["endpoints"], r["before"], r["after"]
    print(f"{config['arch']:>8} {dataset:>13} { {k: v for k, v in config.items() if k != 'arch'}!s:>26}: "
          f"endpoints {ends['a']['accuracy']:6.1%} {ends['b']['accuracy']:6.1%}   midpoint "
          f"{before['accuracy'][0]:6.1%} -> {after['accuracy'][0]:6.1%} with REPAIR (mean of {len(examples)} pair(s))")
    return {**r, "points": len(stats.points), "examples": examples}


def sweep_figure(xs, results, key, ylabel, xlabel, title, log2=True, scale=1.0):
    """One dashed (before REPAIR) and one solid (after) line per data set; `results[dataset][x]`."""
    series, styles = {}, {}
    for i, (dataset, by_x) in enumerate(results.items()):
        for when, linestyle in (("before", "--"), ("after", "-")):
            label = f"{dataset}, {when} REPAIR"
            series[label] = [scale * by_x[x][when][key] for x in xs]
            styles[label] = {"color": f"C{i}", "linestyle": linestyle}
    return plots.barrier_vs(xs, series, xlabel, ylabel, log2=log2, title=title, styles=styles)


# %% [markdown]
# ## Width: 10-layer MLPs (Fig. 6 left, Fig. 12 left)

# %% mystnb={"figure": {"caption": "Paper Fig. 6 left. Error barrier at the midpoint (endpoints' mean test accuracy minus the midpoint's, in percentage points, linear scale; mean over the seed pairs) between two aligned 10-layer MLPs against their width (log2 scale), without (dashed) and with (solid) REPAIR, one colour per data set. At the cpu profile Fashion-MNIST only.", "name": "fig-5-3-mlp-accuracy"}}
mlp = {}
for dataset in cfg["datasets"]:
    mlp[dataset] = {width: midpoint_barriers({"arch": "mlp", "depth": cfg["mlp_depth"], "width": width},
                                             dataset, training("mlp"))
                    for width in cfg["mlp_widths"]}
sweep_figure(cfg["mlp_widths"], mlp, "barrier_accuracy", "test error barrier (percentage points)",
             "hidden units per layer", f"{cfg['mlp_depth']}-layer MLPs", scale=100)

# %% mystnb={"figure": {"caption": "Paper Fig. 12 left. The MLP barriers in test loss (midpoint loss minus the endpoints' mean, linear scale; mean over the seed pairs) against width (log2 scale); dashed without, solid with REPAIR.", "name": "fig-5-3-mlp-loss"}}
sweep_figure(cfg["mlp_widths"], mlp, "barrier_loss", "test loss barrier", "hidden units per layer",
             f"{cfg['mlp_depth']}-layer MLPs")

# %% [markdown]
# ## Width: ResNet20 (Fig. 6 middle, Fig. 12 middle)
#
# Standard BatchNorm ResNet20s; width multiplier 1 means 16, 32 and 64 channels in the three stages.

# %% mystnb={"figure": {"caption": "Paper Fig. 6 middle. Error barrier at the midpoint (percentage points, linear scale; mean over the seed pairs) between two aligned ResNet20s against the width multiplier (log2 scale), without (dashed) and with (solid) REPAIR, one colour per data set. At the cpu profile Fashion-MNIST, widths 0.25, 0.5 and 1.", "name": "fig-5-3-resnet-accuracy"}}
resnet = {}
for dataset in cfg["datasets"]:
    resnet[dataset] = {width: midpoint_barriers({"arch": "resnet20", "width": width, "norm": cfg["resnet_norm"]},
                                                dataset, training("resnet"))
                       for width in cfg["resnet_widths"]}
sweep_figure(cfg["resnet_widths"], resnet, "barrier_accuracy", "test error barrier (percentage points)",
             "width multiplier", "ResNet20", scale=100)

# %% mystnb={"figure": {"caption": "Paper Fig. 12 middle. The ResNet20 barriers in test loss (linear scale; mean over the seed pairs) against the width multiplier (log2 scale); dashed without, solid with REPAIR.", "name": "fig-5-3-resnet-loss"}}
sweep_figure(cfg["resnet_widths"], resnet, "barrier_loss", "test loss barrier", "width multiplier", "ResNet20")

# %% [markdown]
# ## Depth: VGG (Fig. 6 right, Fig. 12 right)
#
# VGG networks without normalisation layers, of increasing depth, on one data set.

# %% mystnb={"figure": {"caption": "Paper Fig. 6 right (CIFAR-10). Error barrier at the midpoint (percentage points, linear scale; mean over the seed pairs) between two aligned VGGs against their depth (11 to 19 layers, linear scale), without (dashed) and with (solid) REPAIR. At the cpu profile Fashion-MNIST, depths 11, 13, 16 and 19 at a quarter width (16-128 channels).", "name": "fig-5-3-vgg-accuracy"}}
vgg = {cfg["vgg_dataset"]: {depth: midpoint_barriers({"arch": "vgg", "depth": depth, "width": cfg["vgg_width"]},
                                                     cfg["vgg_dataset"], training("vgg"))
                            for depth in cfg["vgg_depths"]}}
sweep_figure(cfg["vgg_depths"], vgg, "barrier_accuracy", "test error barrier (percentage points)",
             "VGG depth (layers)", "VGG", log2=False, scale=100)

# %% mystnb={"figure": {"caption": "Paper Fig. 12 right. The VGG barriers in test loss (linear scale; mean over the seed pairs) against depth (linear scale); dashed without, solid with REPAIR.", "name": "fig-5-3-vgg-loss"}}
sweep_figure(cfg["vgg_depths"], vgg, "barrier_loss", "test loss barrier", "VGG depth (layers)", "VGG",
             log2=False)

# %% [markdown]
# ## Reading the sweeps
#
# The paper's pattern, in every panel: the dashed line (aligned interpolation) lies well above the
# solid one (with REPAIR); both fall as width grows; the dashed VGG line rises with depth while the
# solid one stays flat. The table lists every point of the three sweeps; the paper gives these only as
# figures, so there is no number of its to set beside them. Every number is the mean over the seed pairs.

# %%
lines = [("| network | data set | setting | endpoints | midpoint before → after REPAIR | error barrier before → after "
         "| loss barrier before → after |"), "|---|---|---|---|---|---|---|"]
for family, results, what in (("MLP", mlp, "width"), ("ResNet20", resnet, "width"), ("VGG", vgg, "depth")):
    for dataset, by_x in results.items():
        for x, r in by_x.items():
            b, a = r["before"], r["after"]
            ends = b["endpoints"]
            lines.append(f"| {family} | {dataset} | {what} {x} | {ends['a']['accuracy']:.1%} / {ends['b']['accuracy']:.1%} "
                         f"| {b['accuracy'][0]:.1%} → {a['accuracy'][0]:.1%} "
                         f"| {b['barrier_accuracy']:.1%} → {a['barrier_accuracy']:.1%} "
                         f"| {b['barrier_loss']:.3f} → {a['barrier_loss']:.3f} |")
Markdown("\n".join(lines))

# %% [markdown]
# ## The paper's VGG11 numbers beside ours
#
# The authors' VGG11 notebook (CIFAR-10, no normalisation layers) reports the aligned midpoint before
# and after REPAIR, with both variants of section 4. Our VGG11 of the depth sweep, with the closed-form
# variant (4.1, from the endpoint statistics alone) measured beside the exact one:

# %%
rows = {}
if 11 in cfg["vgg_depths"]:
    r = vgg[cfg["vgg_dataset"]][11]
    ends = r["before"]["endpoints"]
    rows["vgg11_cifar10"] = {
        "before": f"{r['before']['accuracy'][0]:.1%}",
        "after": f"{r['after']['accuracy'][0]:.1%} (closed form {r['closed_form']['accuracy'][0]:.1%})",
        "endpoints": f"{ends['a']['accuracy']:.1%} / {ends['b']['accuracy']:.1%}",
        "note": f"VGG11 x{cfg['vgg_width']}, {cfg['vgg_dataset']}, {cfg['vgg_epochs']} epochs on "
                f"{cfg['vgg_train_subset'] or 'all'} images"}
Markdown(paper_vs_ours(rows))

# %% [markdown]
# ## Does it match the paper?
#
# Each claim of section 5.3 as a statistic of the per-image midpoint results of every seed pair:
# REPAIR's cut of the barrier (the smallest over a sweep's settings), and the slope of a barrier over
# log2 width or over depth where the sweep has at least two points (the least favourable data set).

# %%
SWEEPS = {"mlp": (mlp, cfg["mlp_widths"], True), "resnet": (resnet, cfg["resnet_widths"], True),
          "vgg": (vgg, cfg["vgg_depths"], False)}
measured = [{family: {d: {x: r["examples"][i] for x, r in by_x.items()} for d, by_x in results.items()}
             for family, (results, _, _) in SWEEPS.items()} for i in range(len(evidence.seed_pairs(cfg)))]


def bar(e, when, what="accuracy"):
    return evidence.barrier(e[when], e["a"], e["b"], [0.5], what)


def every(m, families):
    return [e for f in families for by_x in m[f].values() for e in by_x.values()]


def smallest_cut(families, what="accuracy"):
    return lambda m: torch.stack([bar(e, "before", what) - bar(e, "after", what) for e in every(m, families)]).min(0).values


def slopes(m, family, when, what="accuracy"):
    """``[data sets, B]``: the slope of the barrier over log2 width (or depth) per data set."""
    _, xs, log2 = SWEEPS[family]
    at = [math.log2(x) if log2 else float(x) for x in xs]
    return torch.stack([evidence.slope(at, torch.stack([bar(by_x[x], when, what) for x in xs], -1))
                        for by_x in m[family].values()])


statistics = {
    "fig1_right": smallest_cut(SWEEPS), "fig6_left": smallest_cut(["mlp"]), "fig6_middle": smallest_cut(["resnet"]),
    "fig12_left": smallest_cut(["mlp"], "loss"), "fig12_middle": smallest_cut(["resnet"], "loss"),
    "abstract_cut_range": lambda m: torch.stack([1 - bar(e, "after") / bar(e, "before").clamp_min(1e-4)
                                                 for e in every(m, SWEEPS)]).min(0).values,
}
for key, family in (("fig6_left_trend", "mlp"), ("fig6_middle_trend", "resnet")):
    if len(SWEEPS[family][1]) >= 2:
        statistics[key] = lambda m, f=family: slopes(m, f, "after").max(0).values
if len(cfg["vgg_depths"]) >= 2:
    statistics["fig6_right"] = lambda m: slopes(m, "vgg", "before").min(0).values
    statistics["fig6_right_flat"] = lambda m: slopes(m, "vgg", "after")[0]
    statistics["fig12_right"] = lambda m: slopes(m, "vgg", "before", "loss").min(0).values
if 11 in cfg["vgg_depths"]:
    statistics["vgg11_cifar10"] = lambda m: (bar(m["vgg"][cfg["vgg_dataset"]][11], "before")
                                             - bar(m["vgg"][cfg["vgg_dataset"]][11], "after"))  # the midpoint's gain
if "mnist" in cfg["datasets"]:  # a claim about MNIST alone
    statistics["sec53_mnist"] = lambda m: bar(m["mlp"]["mnist"][min(cfg["mlp_widths"])], "after")
if max(cfg["resnet_widths"]) >= 16:  # a claim about the widest ResNet20s alone
    statistics["sec52_wide_resnet20"] = lambda m: torch.stack(
        [bar(by_x[max(cfg["resnet_widths"])], "after") for by_x in m["resnet"].values()]).max(0).values
scale = {"profile": profile, "dataset": ", ".join(dict.fromkeys([*cfg["datasets"], cfg["vgg_dataset"]])),
         "seeds": evidence.seed_pairs(cfg), "alpha": 0.5,
         "model": f"MLPs {cfg['mlp_widths']}, ResNet20s {cfg['resnet_widths']}, VGG{cfg['vgg_depths']}"}
records = [evidence.measure(key, stat, measured, **scale) for key, stat in statistics.items()]
for key, what in (("fig6_left_trend", "The MLP barrier after REPAIR"), ("fig6_right", "The VGG barrier before REPAIR")):
    r = next((r for r in records if r["key"] == key), None)
    if r is not None:
        trend = {"fig6_left_trend": ("falls as width grows, as in the paper", "does not fall as width grows"),
                 "fig6_right": ("grows with depth, as in the paper", "does not grow with depth")}[key]
        print(what, evidence.in_words(r, *trend))
Markdown(evidence.match_box(records, section="5.3"))

# %% [markdown]
# ## Why ours differs: is it width?
#
# With REPAIR the paper's VGG barrier stays roughly flat from 11 to 19 layers; ours grows with depth.
# The first suspect is width: our VGGs are a quarter of the paper's (16-128 channels against 64-512),
# and narrow networks have larger barriers. If narrowness is what makes the REPAIRed barrier grow
# with depth, halving the width again (`vgg_narrow_width`) should make it grow faster. We train VGGs
# of the sweep's shallowest and deepest depth at that width (same recipe, same seeds) and compare the
# slope of the REPAIRed barrier over depth with the sweep's over the same two depths.

# %%
causes = []
if len(cfg["vgg_depths"]) >= 2:
    ends_only = (min(cfg["vgg_depths"]), max(cfg["vgg_depths"]))
    narrow = {"arch": "vgg", "width": cfg["vgg_narrow_width"]}
    by_width = [{"narrow": {d: one_pair({**narrow, "depth": d}, cfg["vgg_dataset"], settings["seeds"], training("vgg"))[0]
                            for d in ends_only},
                 "sweep": {d: m["vgg"][cfg["vgg_dataset"]][d] for d in ends_only}}
                for settings, m in zip(evidence.pair_settings(cfg), measured, strict=True)]

    def depth_slope(m, which):
        return evidence.slope(ends_only, torch.stack([bar(m[which][d], "after") for d in ends_only], -1))

    for seeds, values in zip(evidence.seed_pairs(cfg), zip(*(evidence.values(lambda m, w=w: depth_slope(m, w), by_width)
                                                             for w in ("narrow", "sweep")), strict=True), strict=True):
        print(f"seeds {seeds}: REPAIRed VGG barrier per layer, x{cfg['vgg_narrow_width']:g}: {100 * values[0]:+.2f} "
              f"points, x{cfg['vgg_width']:g}: {100 * values[1]:+.2f} points (depths {ends_only[0]} and {ends_only[1]})")
    causes.append(evidence.measure(
        "fig6_right_flat_width", lambda m: depth_slope(m, "narrow") - depth_slope(m, "sweep"), by_width,
        **{**scale, "model": f"VGG{ends_only[0]}, VGG{ends_only[1]} at x{cfg['vgg_narrow_width']:g} and "
                             f"x{cfg['vgg_width']:g}", "dataset": cfg["vgg_dataset"]}))
book.save_results("5.3", profile, cfg, rows, start, claims=records, causes=causes)
Markdown(book.cause_box(causes))

# %% [markdown]
# ## Checks that hold at any scale
#
# REPAIR corrects every hidden layer of an MLP (the classifier is left alone) and every convolution of
# a VGG, and folds each correction back into its layer: the merged networks keep their architecture.

# %%
# NBVAL_CHECK_OUTPUT
for dataset in cfg["datasets"]:
    r = mlp[dataset][cfg["mlp_widths"][0]]
    print(f"MLP on {dataset}: REPAIR corrects all {cfg['mlp_depth']} hidden layers: {r['points'] == cfg['mlp_depth']}")
    assert r["points"] == cfg["mlp_depth"]
for depth, r in vgg[cfg["vgg_dataset"]].items():
    convs = sum(isinstance(c, int) for c in VGG_CONFIGS[depth])
    print(f"VGG{depth}: REPAIR corrects all {convs} convolutions: {r['points'] == convs}")
    assert r["points"] == convs

# %%
book.show_provenance(profile, cfg, start)
