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
# # 5.2 ImageNet ResNets: REPAIR on convolutions and on residual blocks
#
# **The paper's claim.** Between two aligned, independently trained torchvision ResNets on ImageNet,
# the interpolated midpoint is useless (**below 1%** top-1 accuracy for ResNet18, ResNet50 and a
# double-width ResNet50). REPAIR lifts the ResNet50 midpoint to **53.2%** when applied to every
# convolution's output, and to **56.5%** when also applied to the output of every residual block
# (Fig. 5 left; the barrier shrinks from 23.4% to 20.1%, and the endpoints reach about 76.6%). Wider and
# larger networks have smaller barriers: after REPAIR ResNet18 reaches 41.1% and ResNet50x2 64.2%
# (Fig. 5 right). For a network with a BatchNorm after every convolution, REPAIR of the convolution
# outputs alone is *mathematically equivalent* to resetting the BatchNorm statistics of the
# interpolated network (Izmailov et al., 2018), which Ainsworth et al. adopted for their ImageNet
# results (Fig. 8 right); the extra gain comes from the residual-block outputs. Fig. 9 shows the
# first-layer filters of two ResNet50s before and after alignment; Fig. 11 the curves in test loss.
#
# **What we measure here.** ImageNet is not available on this machine. At the `paper` profile this
# page runs torchvision's ResNet18 and ResNet50 on ImageNet; **at the `cpu` profile it runs the same
# torchvision ResNet18 and ResNet50 on Fashion-MNIST** (28 x 28 grey images: the 7 x 7 stride-2 stem,
# which takes one input channel here, and the max pool shrink them to 7 x 7 before the first stage),
# each trained for one epoch of all 60,000 training images (the `smoke` profile: a ResNet18 on a few
# images). The numbers are therefore not ImageNet numbers; what carries over is the comparison between
# the corrections, on unmodified torchvision architectures:
#
# - plain aligned interpolation,
# - `repairlib.reset_bn` (recompute every BatchNorm's statistics on training data),
# - `repairlib.repair(..., scope="conv")`: REPAIR at every convolution output,
# - `repairlib.repair(..., scope="all")`: also at every residual-block output.
#
# **On a free Colab GPU (an estimate, not a measurement).** At the `cpu` profile this page should take
# about 8 minutes on Colab's T4, training its networks from scratch, plus the install cell and the
# data download. Measured without a GPU (2026-12-03, 2 CPU cores with AVX512-BF16, the page alone on
# two torch threads): 1795 s with an empty checkpoint zoo, 109 s with the networks cached; the
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
dataset = None
models = None
epochs = None
train_subset = None
batch_size = None
lr = None
scopes = None
seeds = None
alphas = None
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
from repairlib.metrics import batchnorm_drift
from repairlib.plumbing import copy_model
from repairlib.points import correction_points

cfg = book.settings(
    profile, "5.2", dataset=dataset, models=models, epochs=epochs,
    train_subset=train_subset, batch_size=batch_size, lr=lr, scopes=scopes,
    seeds=seeds, alphas=alphas, seed_pairs=seed_pairs
)
cfg

# %% [markdown]
# ## The networks
#
# Each architecture is trained twice with the paper's recipe for ImageNet ResNets (two seeds), and B
# is aligned to A by activation matching (`repairlib.align`). Every residual stage shares one
# permutation among all the layers that write to or read from its residual stream. The alignment pass
# also gathers REPAIR's endpoint statistics at the convolution outputs (`stats_scope="conv"`). Every
# seed pair of the profile gets its own networks: the figures show the first pair, the verdicts use all.

# %%
ARCH_NAMES = {"tv_resnet18": "ResNet18", "tv_resnet50": "ResNet50"}
train = data.loader(cfg["dataset"], "train", subset=cfg["stats_examples"], device=cfg["device"])
test = data.loader(cfg["dataset"], "test", subset=cfg["eval_examples"], device=cfg["device"])


def arch_name(config):
    width = config.get("width_per_group")
    return ARCH_NAMES.get(config["arch"], config["arch"]) + (f" (width_per_group {width})" if width else "")


def aligned(config, seeds):
    """(A, B aligned to A, B as trained, REPAIR's endpoint statistics) of one seed pair."""
    model_a, model_b = [
        zoo.trained(config, cfg["dataset"], epochs=cfg["epochs"], seed=seed, train_subset=cfg["train_subset"],
                    batch_size=cfg["batch_size"], lr=cfg["lr"], **book.recipe_overrides(cfg), bf16=cfg["train_bf16"],
                    device=cfg["device"])
        for seed in seeds
    ]
    alignment = repairlib.align(model_a, model_b, train, stats_scope="conv")
    return model_a, repairlib.permute(model_b, alignment), model_b, alignment.endpoint_stats


PAIRS = evidence.pair_settings(cfg)
pairs, all_pairs = {}, [{} for _ in PAIRS]  # the first seed pair's networks; every pair's
for config in cfg["models"]:
    for i, settings in enumerate(PAIRS):
        all_pairs[i][arch_name(config)] = aligned(config, settings["seeds"])
    pairs[arch_name(config)] = model_a, _, _, _ = all_pairs[0][arch_name(config)]
    print(f"{arch_name(config)}: {type(model_a).__module__}.{type(model_a).__name__}, "
          f"{sum(p.numel() for p in model_a.parameters()) / 1e6:.1f}M parameters, "
          f"stem {tuple(model_a.conv1.weight.shape)}")

# %% [markdown]
# ## Four ways to interpolate (Fig. 5 left, Fig. 11)
#
# For every $\alpha$ on the path, `evidence.curve` evaluates the interpolated network after each
# correction on the test images, image by image, for every seed pair (the figures show the first). REPAIR's goals at $\alpha$ are $(1-\alpha)$ times A's channel
# statistics plus $\alpha$ times B's; the BatchNorm reset needs no goals, it simply measures the
# interpolated network.

# %% mystnb={"figure": {"caption": "Paper Fig. 5 left (ResNet50, ImageNet; at the cpu profile ResNet50 on Fashion-MNIST, one epoch, first seed pair). Test accuracy (%, linear scale) of networks interpolated between two aligned torchvision ResNets against alpha (0 = A, 1 = B): without correction (dotted), with BatchNorm statistics reset (dashed), with REPAIR of the convolution outputs (blue) and of the convolution and residual-block outputs (red).", "name": "fig-5-2-curves-accuracy"}}
SCOPE_LABELS = {"conv": "REPAIR, conv outputs", "all": "REPAIR, conv + block outputs"}
CORRECTIONS = {"aligned, no correction": {}, "reset BatchNorm statistics": {"correct": "reset_bn"},
               **{SCOPE_LABELS[s]: {"correct": "repair", "scope": s} for s in cfg["scopes"]}}
STYLES = {"aligned, no correction": {"linestyle": ":", "color": "0.4"},
          "reset BatchNorm statistics": {"linestyle": "--", "color": "C2"},
          "REPAIR, conv outputs": {"color": "C0"}, "REPAIR, conv + block outputs": {"color": "C3"}}
MID = cfg["alphas"].index(0.5) if 0.5 in cfg["alphas"] else len(cfg["alphas"]) // 2

def paths(model_a, model_b, _, stats):
    """Per-example test results of the endpoints and of every correction's curve."""
    out = evidence.endpoints(model_a, model_b, test)
    for label, kwargs in CORRECTIONS.items():
        given = {"stats": stats} if kwargs.get("scope") == "conv" else {}
        out[label] = evidence.curve(model_a, model_b, test, cfg["alphas"], stats_data=train, **kwargs, **given)
    return out


measured = [{name: paths(*nets) for name, nets in p.items()} for p in all_pairs]
MAIN = next((n for n in pairs if n.startswith("ResNet50")), next(iter(pairs)))  # the paper's claims are ResNet50's
curves = {}
for name in pairs:
    for label in CORRECTIONS:
        c = curves[name, label] = evidence.summary(measured[0][name], cfg["alphas"], label)
        ends = c["endpoints"]
        print(f"{name} {label:>30}: midpoint {c['accuracy'][MID]:6.1%}   error barrier "
              f"{c['barrier_accuracy']:6.1%}   loss barrier {c['barrier_loss']:.3f}")
    print(f"{name} endpoints: {ends['a']['accuracy']:.1%} / {ends['b']['accuracy']:.1%}")

first = MAIN
plots.curve(cfg["alphas"], {label: [100 * a for a in curves[first, label]["accuracy"]] for label in CORRECTIONS},
            "test accuracy (%)", f"{first}, {cfg['dataset']}", styles=STYLES)

# %% mystnb={"figure": {"caption": "Paper Fig. 11 left (ResNet50, ImageNet; at the cpu profile ResNet50 on Fashion-MNIST, first seed pair). The same interpolations in test loss (cross-entropy, linear scale) against alpha.", "name": "fig-5-2-curves-loss"}}
plots.curve(cfg["alphas"], {label: curves[first, label]["loss"] for label in CORRECTIONS}, "test loss",
            f"{first}, {cfg['dataset']}", styles=STYLES)

# %% [markdown]
# ## Is REPAIR of the convolutions the same as a BatchNorm reset?
#
# In a torchvision ResNet every convolution feeds a BatchNorm. REPAIR at a convolution's output sets
# each channel's mean and standard deviation to the interpolated goals; the BatchNorm after it then
# normalises with its (interpolated) running statistics. A BatchNorm reset instead re-measures those
# running statistics on the interpolated network, so each BatchNorm output gets exactly its
# interpolated affine parameters as mean and scale. The two differ only by the ratio between the
# interpolated standard deviation $(1-\alpha)\sigma_A + \alpha\sigma_B$ and the square root of the
# interpolated variance $\sqrt{(1-\alpha)\sigma_A^2 + \alpha\sigma_B^2}$, which is close to 1 when the
# two networks' channels have similar scales, by the images each statistic is measured on, and by
# how well each endpoint's running statistics describe its BatchNorms' inputs at test time (REPAIR
# keeps any mismatch the endpoints have, a reset removes it; tested below). We
# compare the two corrected midpoints directly, and measure their gap at the midpoint over every
# seed pair with a bootstrap over the test images (the paper's "mathematically equivalent": a gap of 0).

# %%
for name, (model_a, model_b, _, stats) in pairs.items():
    midpoint = repairlib.interpolate(model_a, model_b, 0.5)
    repaired = repairlib.repair(midpoint, model_a, model_b, train, alpha=0.5, scope="conv", stats=stats).eval()
    reset = repairlib.reset_bn(repairlib.interpolate(model_a, model_b, 0.5), train).eval()
    x = next(iter(test))[0]
    with torch.no_grad():
        agree = (repaired(x).argmax(1) == reset(x).argmax(1)).float().mean().item()
    gap = max(abs(r - s) for r, s in zip(curves[name, "REPAIR, conv outputs"]["accuracy"],
                                         curves[name, "reset BatchNorm statistics"]["accuracy"]))
    print(f"{name}: midpoint predictions of conv-only REPAIR and BN reset agree on {agree:.1%} of a test batch; "
          f"largest accuracy gap along the path {gap:.1%} (first seed pair)")
CONV, FULL = SCOPE_LABELS["conv"], SCOPE_LABELS["all" if "all" in cfg["scopes"] else "conv"]
scale = {"profile": profile, "dataset": cfg["dataset"], "seeds": evidence.seed_pairs(cfg), "model": MAIN,
         "alpha": cfg["alphas"][MID]}


def mid(m, label, what="correct", name=MAIN):
    return m[name][label][what][:, MID]


gap = evidence.measure("sec52_reset", lambda m: mid(m, CONV) - mid(m, "reset BatchNorm statistics"), measured, **scale)
print(f"{MAIN}, midpoint accuracy of conv-only REPAIR minus BN reset {gap['mean']:+.1%} (95% interval "
      f"{gap['ci95'][0]:+.1%} to {gap['ci95'][1]:+.1%}): the two",
      evidence.in_words(gap, "agree within half a point", "differ by more than half a point"))

# %% [markdown]
# Where the two differ, the BatchNorms' running statistics are the suspect: REPAIR's goals are the
# endpoints' statistics as measured in eval mode, a reset re-measures the running statistics, so the
# two agree only where each endpoint's running variance is the variance its BatchNorms see at test
# time. `repairlib.metrics.batchnorm_drift` measures that ratio (median over channels, training
# images) for every BatchNorm of network A, here summarised per stage.

# %%
for name, (model_a, _, _, _) in pairs.items():
    drift = batchnorm_drift(model_a, train)
    stages = {}
    for layer, ratio in drift.items():
        stages.setdefault(layer.split(".")[0] if layer.startswith("layer") else "stem", []).append(ratio)
    print(f"{name} A, Var(input) / running_var of its BatchNorms, median per stage: " + ", ".join(
        f"{stage} {torch.tensor(r).median():.2f}" for stage, r in stages.items()))

# %% [markdown]
# ### Why ours differs: the running statistics
#
# If drifted running statistics separate the two corrections, re-measuring them in both endpoints
# (a BatchNorm reset of A and of B on the training images, which leaves each endpoint's function at
# test time unchanged up to that drift) before interpolating should make REPAIR of the convolution
# outputs and the reset agree again, at the midpoint, over every seed pair, up to the small gap between
# interpolated standard deviations and the root of interpolated variances (within a point).

# %%
def fresh_stats_midpoints(model_a, model_b, _, stats):
    """Per-example test results at the midpoint of conv-only REPAIR and of a BN reset, both endpoints'
    running statistics reset first."""
    model_a, model_b = (repairlib.reset_bn(copy_model(m), train) for m in (model_a, model_b))  # copies: reset is in place
    return {label: evidence.curve(model_a, model_b, test, [0.5], stats_data=train, method=f"{method}, endpoints reset",
                                  **kwargs)
            for label, method, kwargs in ((CONV, "repair", {"correct": "repair", "scope": "conv"}),
                                          ("reset", "reset_bn", {"correct": "reset_bn"}))}


fresh = [{MAIN: fresh_stats_midpoints(*p[MAIN])} for p in all_pairs]
causes = [evidence.measure("sec52_reset_running_stats",
                           lambda m: m[MAIN][CONV]["correct"][:, 0] - m[MAIN]["reset"]["correct"][:, 0], fresh, **scale)]
for i, f in enumerate(fresh):
    print(f"{MAIN}, seed pair {i + 1}, endpoints reset first: midpoint conv-only REPAIR "
          f"{f[MAIN][CONV]['correct'][0].double().mean():.1%}, BN reset {f[MAIN]['reset']['correct'][0].double().mean():.1%}")
Markdown(book.cause_box(causes))

# %% [markdown]
# ## Variance collapse in the ResNet50 (Fig. 2 right)
#
# Section 3 of the paper shows the collapse in a ResNet50 on ImageNet: the variance ratio (the summed
# variance of a layer's channels in the midpoint network over the endpoints' mean) at every
# convolution, before and after REPAIR. Here it is measured at every convolution output of the
# profile's main network (the ResNet50 at the `cpu` and `paper` profiles, ResNet18 at `smoke`) with
# `repairlib.variance_ratio` on the statistics images, for the first seed pair; below, the ratio at
# the last convolution for every seed pair, resampled over the training images.

# %% mystnb={"figure": {"caption": "Paper Fig. 2 right (ResNet50, ImageNet; at the cpu profile the torchvision ResNet50 of this page on Fashion-MNIST, one epoch of all 60,000 training images, first seed pair). Variance ratio v_alpha / ((v_1 + v_2) / 2) at alpha 0.5 at every convolution output in network order (linear scale), aligned without correction and with REPAIR of the convolution outputs; the dotted line is no collapse.", "name": "fig-5-2-variance"}}
model_a, model_b, _, stats = pairs[MAIN]
midpoint = repairlib.interpolate(model_a, model_b, 0.5)
layer_ratios = {"aligned, no correction": repairlib.variance_ratio(midpoint, model_a, model_b, train, stats=stats),
                CONV: repairlib.variance_ratio(repairlib.repair(midpoint, model_a, model_b, train, 0.5, scope="conv",
                                                                stats=stats, fuse=False), model_a, model_b, train,
                                               stats=stats)}  # unfused: the ratio at the corrected channels
plots.layer_ratios({k: list(v.values()) for k, v in layer_ratios.items()}, f"{MAIN} midpoint, {cfg['dataset']}",
                   styles={k: STYLES[k] for k in layer_ratios})

# %%
LAST = stats.points[-1]
collapse = [evidence.unit_moments({"a": p[MAIN][0], "b": p[MAIN][1], "mid": repairlib.interpolate(p[MAIN][0], p[MAIN][1], 0.5)},
                                  train, [LAST]) for p in all_pairs]
fig2 = evidence.measure("fig2_right", lambda m: evidence.variance_ratio(m["mid"][LAST], m["a"][LAST], m["b"][LAST]),
                        collapse, **scale, images="training")
before = list(layer_ratios["aligned, no correction"].values())
print(f"{MAIN}: variance ratio of the aligned midpoint from {before[0]:.2f} at the first convolution to "
      f"{before[-1]:.2f} at the last ({len(before)} convolutions, first seed pair); after REPAIR "
      f"{min(layer_ratios[CONV].values()):.2f}-{max(layer_ratios[CONV].values()):.2f}. At the last convolution over "
      f"the seed pairs {fig2['mean']:.3f} (pairs {', '.join(f'{v:.3f}' for v in fig2['values'])}):",
      evidence.in_words(fig2, "a collapse of more than 10x, as in the paper", "a collapse of less than 10x"))

# %% [markdown]
# ## Larger networks, smaller barriers (Fig. 5 right)
#
# The midpoint of every architecture of the profile, without correction and with full REPAIR. At the
# `paper` profile these are ResNet18 and ResNet50 on ImageNet, at the `cpu` profile the same two on
# Fashion-MNIST (11.2M and 23.5M parameters); the paper's double-width ResNet50 needs the `paper`
# profile.

# %% mystnb={"figure": {"caption": "Paper Fig. 5 right (ResNet18, ResNet50, ResNet50x2 on ImageNet; at the cpu profile ResNet18 and ResNet50 on Fashion-MNIST, first seed pair). Test accuracy (%, linear scale) along the interpolation path for each architecture of the profile, aligned without correction (dashed) and with full REPAIR (solid), against alpha.", "name": "fig-5-2-architectures"}}
series, styles = {}, {}
for i, name in enumerate(pairs):
    for label, linestyle in (("aligned, no correction", "--"), ("REPAIR, conv + block outputs", "-")):
        key = f"{name}, {'before' if linestyle == '--' else 'after'} REPAIR"
        series[key] = [100 * a for a in curves[name, label]["accuracy"]]
        styles[key] = {"color": f"C{i}", "linestyle": linestyle}
plots.curve(cfg["alphas"], series, "test accuracy (%)", f"torchvision ResNets, {cfg['dataset']}", styles=styles)

# %% [markdown]
# ## Aligned first-layer filters (Fig. 9)
#
# The stem convolution's filters of network A, of network B after alignment (each filter moved to the
# position of its best-correlated partner in A), side by side, pair by pair. Alignment only reorders
# B's filters; the subtitle says how much more alike the pairs are than B's filters in their trained
# order. At the `cpu` profile the stem has one input channel, so the 7 x 7 filters are grey.

# %% mystnb={"figure": {"caption": "First-layer (stem) 7x7 convolution filters in pairs: filter i of network A (left in each pair) beside filter i of network B after B's channels were permuted to align with A (right), each filter scaled by its own largest magnitude (red positive, blue negative, white zero; filters with three input channels are shown in colour), the correlation of the pair's weights below it, best-matched pairs first. The subtitle compares the pairs' mean correlation with that of B in its trained order. Paper Fig. 9 (ResNet50, ImageNet, colour filters); at the cpu profile grey filters of ResNet50 on Fashion-MNIST.", "name": "fig-5-2-filters"}}
name = MAIN
model_a, model_b, original_b, _ = pairs[name]
plots.filter_pairs(model_a.conv1.weight, model_b.conv1.weight, unaligned=original_b.conv1.weight,
                   title=f"{name}, {plots.dataset_label(cfg['dataset'])}: first-layer filters of A beside aligned B")

# %% [markdown]
# ## The paper's numbers beside ours

# %%
name = MAIN
mean = {label: evidence.average([evidence.summary(m[name], cfg["alphas"], label) for m in measured])
        for label in CORRECTIONS}
at_mid = {label: c["accuracy"][MID] for label, c in mean.items()}
bar = {label: c["barrier_accuracy"] for label, c in mean.items()}
ends = mean["aligned, no correction"]["endpoints"]
setting = (f"{name}, {cfg['dataset']}, {cfg['epochs']} epochs on {cfg['train_subset'] or 'all'} images, "
           f"mean of {len(PAIRS)} seed pair(s)")
rows = {
    "resnet50_imagenet": {
        "before": f"{at_mid['aligned, no correction']:.1%}",
        "after": f"{at_mid[CONV]:.1%} conv only, {at_mid[FULL]:.1%} full",
        "endpoints": f"{ends['a']['accuracy']:.1%} / {ends['b']['accuracy']:.1%}", "note": setting},
    "resnet50_imagenet_barrier": {
        "before": f"{bar['aligned, no correction']:.1%}",
        "after": f"{bar[CONV]:.1%} conv only, {bar[FULL]:.1%} full", "note": setting},
    "resnet18_resnet50x2_imagenet": {
        "before": " / ".join(f"{evidence.average([evidence.means(m[n]['aligned, no correction'])['accuracy'][MID] for m in measured]):.1%}" for n in pairs),
        "after": " / ".join(f"{evidence.average([evidence.means(m[n][FULL])['accuracy'][MID] for m in measured]):.1%}" for n in pairs),
        "note": " / ".join(pairs) + f", {cfg['dataset']}, mean of {len(PAIRS)} seed pair(s)"},
}
Markdown(paper_vs_ours(rows))

# %% [markdown]
# ## Does it match the paper?
#
# Each claim of section 5.2 as a statistic of the per-image results of every seed pair, at the
# midpoint: the gains of each correction, the barriers (Eq. 1 along the whole path) and their cuts;
# the architecture trend (the barrier after REPAIR against the log of the parameter count) wherever
# the profile has two architectures (ResNet18 and ResNet50 at `cpu`); the double-width ResNet50 needs
# the `paper` profile.

# %%
def barrier(m, label, name=MAIN):
    return evidence.barrier(m[name][label], m[name]["a"], m[name]["b"], cfg["alphas"])


classes = data.info(cfg["dataset"])["num_classes"]
statistics = {
    "sec52_chance": lambda m: mid(m, "aligned, no correction") - 1 / classes,
    "fig1_middle": lambda m: 1 - barrier(m, FULL) / barrier(m, "aligned, no correction").clamp_min(1e-4),
    "fig8_right": lambda m: mid(m, FULL) - mid(m, "reset BatchNorm statistics"),
    "fig11_left": lambda m: mid(m, "aligned, no correction", "loss") - mid(m, FULL, "loss"),
}
if "all" in cfg["scopes"]:
    statistics["resnet50_imagenet"] = lambda m: mid(m, FULL) - mid(m, CONV)
    statistics["resnet50_imagenet_barrier"] = lambda m: 1 - barrier(m, FULL) / barrier(m, CONV).clamp_min(1e-4)
if len(pairs) >= 2:
    size = [math.log2(sum(p.numel() for p in nets[0].parameters())) for nets in pairs.values()]
    statistics["resnet18_resnet50x2_imagenet"] = lambda m: evidence.slope(
        size, torch.stack([barrier(m, FULL, n) for n in pairs], -1))
records = [gap, fig2] + [evidence.measure(key, stat, measured, **scale) for key, stat in statistics.items()]
book.save_results("5.2", profile, cfg, rows, start, claims=records, causes=causes)
Markdown(evidence.match_box(records, section="5.2"))

# %% [markdown]
# ## Checks that hold at any scale
#
# Scope `"all"` adds exactly one correction point per residual block (its output, after the addition
# and the ReLU) to the convolution outputs of scope `"conv"`. REPAIR with scope `"conv"` folds every
# correction into the BatchNorm that follows the convolution, so the result is again a plain
# torchvision ResNet; scope `"all"` inserts per-channel affine layers on the residual stream, which no
# existing layer can absorb.

# %%
# NBVAL_CHECK_OUTPUT
x = next(iter(train))[0]
for name, (model_a, model_b, _, stats) in pairs.items():
    blocks = sum(len(getattr(model_a, f"layer{i}")) for i in range(1, 5))
    conv, full = correction_points(model_a, "conv"), correction_points(model_a, "all", x)
    midpoint = repairlib.interpolate(model_a, model_b, 0.5)
    plain = repairlib.repair(midpoint, model_a, model_b, train, alpha=0.5, scope="conv", stats=stats)
    print(f"{name}: {len(conv)} conv outputs; scope 'all' adds the {blocks} residual-block outputs: "
          f"{len(full) - len(conv) == blocks}; conv-only REPAIR gives a plain torchvision ResNet: "
          f"{type(plain) is type(model_a)}")
    assert len(full) - len(conv) == blocks and type(plain) is type(model_a)

# %%
book.show_provenance(profile, cfg, start)
