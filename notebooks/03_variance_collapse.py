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
# # Section 3: variance collapse in interpolated networks
#
# Aligning the hidden units of two networks before averaging their weights works well for shallow
# MLPs, but the barrier grows sharply with depth (Entezari et al., 2021). Section 3 of the paper traces
# this to the statistics of the hidden units:
#
# - **3.1, the symptom.** In the interpolated network the variance of the activations decays layer
#   after layer (*variance collapse*): by the last layers of a 35-layer MLP the units are almost
#   constant, and VGG11 and ResNet50 lose more than 10x of their variance (paper Figs. 1 left and 2).
#   Without alignment it is worse.
# - **3.2, the cause.** A unit of the first layer of the interpolated network computes exactly
#   $X_\alpha = (1-\alpha) X_1 + \alpha X_2$, so its variance follows from the endpoints (Eq. 5):
#
#   $$\mathrm{Var}(X_\alpha) = (1-\alpha)^2 \mathrm{Var}(X_1) + \alpha^2 \mathrm{Var}(X_2)
#     + 2\alpha(1-\alpha)\,\mathrm{Cov}(X_1, X_2).$$
#
#   With equal standard deviations this is $(0.5 + 0.5\,\mathrm{corr}(X_1, X_2))\,\mathrm{Var}(X_1)$ at
#   the midpoint. Aligned units are typically correlated about 0.4, hence a 30% loss of variance in the
#   first layer, which compounds with depth.
#
# This page measures both on two pairs of networks, an MLP and a convolutional network, trained from
# different seeds: the per-layer variance ratio $v_\alpha / \frac{v_1 + v_2}{2}$ (where $v$ sums the
# variances of a layer's units over training data), and the first-layer calculation of section 3.2
# against the variance actually measured in the interpolated network. At the `cpu` profile the MLP is
# the 10-layer MLP and the convolutional network a ResNet20 with BatchNorm, both on Fashion-MNIST; at
# the `paper` profile, a 35-layer MLP on MNIST and VGG11 on CIFAR-10 (the paper's Fig. 2).
#
# **On a free Colab GPU (an estimate, not a measurement).** At the `cpu` profile this page should take
# about 1 minute on Colab's T4, training its networks from scratch, plus the install cell and the data
# download. Measured without a GPU (2026-12-02 and 2026-12-04, 2 CPU cores with AVX512-BF16, one torch
# thread per notebook): 45 s with an empty checkpoint zoo, 29 s with the networks cached; the estimate
# assumes that training runs 10x faster on a T4 and everything else no faster (the basis: the
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
mlp = None
mlp_dataset = None
mlp_epochs = None
mlp_train_subset = None
conv = None
conv_dataset = None
conv_epochs = None
conv_train_subset = None
conv_batch_size = None
conv_lr = None
alpha = None
depths = None
depth_width = None
seeds = None
seed_pairs = None

# %%
import time

start = time.time()

import torch
from matplotlib.figure import Figure

import repairlib
from repairlib import analysis, book, plots
from repairlib.book import evidence
from repairlib.evaluation import per_example

cfg = book.settings(
    profile, "3", mlp=mlp, mlp_dataset=mlp_dataset, mlp_epochs=mlp_epochs,
    mlp_train_subset=mlp_train_subset, conv=conv, conv_dataset=conv_dataset,
    conv_epochs=conv_epochs, conv_train_subset=conv_train_subset,
    conv_batch_size=conv_batch_size, conv_lr=conv_lr, alpha=alpha, depths=depths,
    depth_width=depth_width, seeds=seeds, seed_pairs=seed_pairs
)
cfg

# %% [markdown]
# ## Two pairs of independently trained networks
#
# `zoo.trained` trains each network once with the paper's recipe and caches it (networks of the same
# setting are shared with the other pages). Network B of each pair is then aligned to network A by
# activation matching (`repairlib.align`, section 2.3): the permuted copy computes the same function.
# The figures show the first seed pair of the profile; the verdicts at the end use every pair.

# %%
FAMILIES = {family: book.describe(cfg[family]) for family in ("mlp", "conv")}
nets, train, test = {}, {}, {}
for family, name in FAMILIES.items():
    train[family], test[family] = book.loaders(cfg, family)
    nets[family] = book.aligned_pair(cfg, family, train[family])  # also REPAIR's endpoint statistics
    accuracy = [repairlib.evaluate(nets[family][k], test[family])["accuracy"] for k in ("a", "b")]
    print(f"{name:>10} on {cfg[f'{family}_dataset']}: test accuracy A {accuracy[0]:.2%}, B {accuracy[1]:.2%}")

# %% [markdown]
# ## 3.1 The symptom: variance collapses layer by layer
#
# For each pair we build the interpolated network $\theta_\alpha$ from B as trained (*unaligned*)
# and from B aligned to A (*aligned*), and each of them once more with REPAIR (section 4) applied. For
# every layer we divide the summed variance of the interpolated network's units (preactivations of
# each conv/linear layer, the classifier excluded) by the average of the endpoints'.
#
# REPAIR is called with `fuse=False` here: it then keeps its correction as a separate per-channel
# affine after each layer, and `repairlib.variance_ratio` measures that corrected value. (By
# default REPAIR folds the correction into the weights; in a BatchNorm network it folds it into the
# BatchNorm *after* the conv, so the conv output itself would still look collapsed although the
# network computes exactly the same function.)

# %%
alpha = cfg["alpha"]
METHODS = {"unaligned": "naive", "aligned": "aligned", "unaligned + REPAIR": "naive_repair", "aligned + REPAIR": "repair"}
FIGURES = {"mlp": "Fig. 2 left", "conv": "Fig. 2 middle"}
stats, variants, ratios, midpoints = {}, {}, {}, {}
for family, n in nets.items():
    a, d = n["a"], train[family]
    for pairing, b in (("unaligned", n["b"]), ("aligned", n["aligned"])):
        s = n["alignment"].endpoint_stats if pairing == "aligned" else repairlib.endpoint_stats(a, b, d)
        stats[family, pairing] = s  # Var, Cov of every unit of both endpoints; reused below
        mid = repairlib.interpolate(a, b, alpha)
        variants[family, pairing] = (mid, b, s)
        variants[family, f"{pairing} + REPAIR"] = (repairlib.repair(mid, a, b, d, alpha, stats=s, fuse=False), b, s)
    ratios[family] = {label: list(repairlib.variance_ratio(m, a, b, d, stats=s).values())
                      for (f, label), (m, b, s) in variants.items() if f == family}
    midpoints[family] = {  # each also a plain measurement record (the page's `measurements`)
        label: evidence.record(a, b, alpha, METHODS[label], per_example(m, test[family]), figure=FIGURES[family],
                               variance_ratio_last_layer=ratios[family][label][-1])["accuracy"]
        for (f, label), (m, b, _) in variants.items() if f == family}
    print(f"{FAMILIES[family]}: variance ratio of the last corrected layer and test accuracy at alpha = {alpha}")
    for label, r in ratios[family].items():
        print(f"  {label:>20}: {r[-1]:7.3f}   accuracy {midpoints[family][label]:6.2%}")

# %% mystnb={"figure": {"caption": "Paper Figs. 1 left and 2 left. Variance collapse in an interpolated MLP: for each hidden layer, the summed variance of its preactivations over training data in the interpolated network, divided by the endpoints' average (log scale; 1 = no collapse). Lines: interpolation of the unaligned and of the aligned pair, each before and after REPAIR. First seed pair; scale: the profile and data set in the provenance table at the end of the page.", "name": "variance-collapse-mlp"}}
STYLES = {"unaligned": {"linestyle": ":", "color": "C3"}, "aligned": {"linestyle": "--", "color": "C0"},
          "unaligned + REPAIR": {"color": "C1"}, "aligned + REPAIR": {"color": "C2"}}
plots.layer_ratios(ratios["mlp"], title=f"{FAMILIES['mlp']}, {cfg['mlp_dataset']}, alpha = {alpha}",
                   styles=STYLES, logy=True)

# %% mystnb={"figure": {"caption": "Paper Fig. 2 middle (VGG11 on CIFAR-10; at the cpu profile a ResNet20 on Fashion-MNIST, first seed pair). The same for the convolutional network: per conv layer, the summed variance of its output channels (every pixel a sample) in the interpolated network over the endpoints' average, log scale. Unaligned and aligned interpolation, before and after REPAIR.", "name": "variance-collapse-conv"}}
plots.layer_ratios(ratios["conv"], title=f"{FAMILIES['conv']}, {cfg['conv_dataset']}, alpha = {alpha}",
                   styles=STYLES, logy=True)

# %% [markdown]
# **How to read these figures.** Without alignment the variance falls fastest; alignment slows the
# decay but does not stop it; after REPAIR every layer is back at about its endpoints' variance,
# aligned or not, because REPAIR sets each unit's statistics directly. (The ratio after REPAIR can sit a
# little below 1: REPAIR's goal is the average of the endpoints' *standard deviations*, whose square is
# below the average of their variances when the two differ.) Which of the repaired networks also
# *works* is another matter: compare the accuracies printed above, where REPAIR without alignment stays
# below the aligned and REPAIRed midpoint (appendix C takes this up).
#
# ## 3.2 The cause: the first layer, computed and measured
#
# For the first layer Eq. 5 is exact, so the variance of every unit of $\theta_\alpha$ can be
# predicted from statistics of the two endpoints alone: $\mathrm{Var}(X_1)$, $\mathrm{Var}(X_2)$ and
# $\mathrm{Cov}(X_1, X_2)$, which `repairlib.endpoint_stats` measures in one pass (it is also what
# REPAIR's closed-form variant uses). We compare the prediction with the variance measured in the
# interpolated network, and look at the correlation of paired units with and without alignment.

# %%
first_layer = {}
for (family, pairing), s in stats.items():
    point = s.points[0]
    mid, _, _ = variants[family, pairing]
    _, measured = repairlib.metrics.point_statistics(mid, train[family], [point])[point]
    first_layer[family, pairing] = f = {
        "corr": analysis.unit_correlations(s)[point],
        "predicted": analysis.predicted_variance(s, alpha)[point],
        "measured": measured,
        "endpoint_mean": (s.var_a[point] + s.var_b[point]) / 2,
    }
    print(f"{FAMILIES[family]:>10}, {pairing:>9}: first-layer units: mean corr(X1, X2) = {f['corr'].mean():.3f};"
          f" Var(X_a) / mean endpoint Var: measured {(f['measured'] / f['endpoint_mean']).mean():.3f},"
          f" 0.5 + 0.5 corr = {analysis.equal_std_factor(f['corr'], alpha).mean():.3f}")


# %%
# NBVAL_CHECK_OUTPUT
def matches_eq5(f):
    return torch.allclose(f["measured"], f["predicted"], rtol=1e-3, atol=1e-6 * float(f["predicted"].max()))


print("first-layer variance matches Eq. 5:", all(matches_eq5(f) for f in first_layer.values()))

# %% mystnb={"figure": {"caption": "Paper Sec. 3.2 (no figure in the paper), checked unit by unit in the first layer of both interpolated networks (aligned and unaligned pairs, first seed pair). Left: the variance measured in the interpolated network against Eq. 5's prediction from the endpoints (log-log; the dotted diagonal is equality). Right: each unit's variance relative to its endpoints' mean against the correlation of the paired units; the dotted line is the equal-std simplification 0.5 + 0.5 corr. Training data of the page's profile.", "name": "variance-first-layer"}}
fig = Figure(figsize=(6.6, 4.4), layout="constrained")  # shown at full size in the 740 px column
left, right = fig.subplots(1, 2)
for (family, pairing), f in first_layer.items():
    label = f"{FAMILIES[family]}, {pairing}"
    left.scatter(f["predicted"].cpu(), f["measured"].cpu(), s=8, alpha=0.6, label=label)
    right.scatter(f["corr"].cpu(), (f["measured"] / f["endpoint_mean"]).cpu(), s=8, alpha=0.6, label=label)
top = max(float(f["measured"].max()) for f in first_layer.values())
left.plot([0, top], [0, top], ":", color="0.4", linewidth=1)
left.set(xlabel="Var($X_\\alpha$) predicted by Eq. 5", ylabel="Var($X_\\alpha$) measured",
         title="every first-layer unit", xscale="log", yscale="log")
rho = torch.linspace(-0.2, 1, 50)
right.plot(rho, analysis.equal_std_factor(rho, alpha), ":", color="0.4", label="$0.5 + 0.5\\,\\rho$ (equal stds)")
right.set(xlabel="correlation $\\rho$ of the paired units", ylabel="Var($X_\\alpha$) / mean endpoint Var",
          title=f"alpha = {alpha}")
fig.legend(*right.get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
fig

# %% [markdown]
# The alignment finds partners that are correlated, but far from perfectly; unaligned pairs are
# essentially uncorrelated, so their midpoint keeps about half of the variance. The relation
# holds exactly in the first layer. Deeper, Eq. 5 applied to each layer's own endpoint units
# (treating every layer as if it were the first) overestimates the variance left, because each layer
# also receives collapsed inputs:

# %%
for family in nets:
    predicted = list(analysis.predicted_variance_ratios(stats[family, "aligned"], alpha).values())
    measured = ratios[family]["aligned"]
    print(f"{FAMILIES[family]} aligned, layer by layer: Eq. 5 per layer", [round(v, 2) for v in predicted])
    print(f"{'':>{len(FAMILIES[family])}}                           measured", [round(v, 2) for v in measured])

# %% [markdown]
# ## The paper's numbers beside ours
#
# The paper quotes a typical correlation of about 0.4 for aligned units and therefore a midpoint
# variance of about 0.7 of the endpoints' in the first layer. Ours, per seed pair: every unit's
# moments at the first and the last corrected layer, image by image over the training images
# (`evidence.unit_moments`), so that the verdicts below can resample those images. The first pair
# reuses the networks above.

# %%
from IPython.display import Markdown


def collapse(family, a, b, b_aligned, mids):
    """Per-image moments at the first and last layer of A, aligned B and the two midpoints (before REPAIR)."""
    points = nets[family]["alignment"].endpoint_stats.points
    return evidence.unit_moments({"a": a, "b": b_aligned, **mids}, train[family], [points[0], points[-1]],
                                 cross=("a", "b"))


measured = [{family: collapse(family, n["a"], n["b"], n["aligned"],
                              {p: variants[family, p][0] for p in ("unaligned", "aligned")}) for family, n in nets.items()}]
for settings in evidence.pair_settings(cfg)[1:]:
    one = {}
    for family in nets:
        p = book.aligned_pair(settings, family, train[family])
        one[family] = collapse(family, p["a"], p["b"], p["aligned"], {"unaligned": repairlib.interpolate(p["a"], p["b"], alpha),
                                                                     "aligned": repairlib.interpolate(p["a"], p["aligned"], alpha)})
    measured.append(one)

# %%
FIRST, LAST = ({f: nets[f]["alignment"].endpoint_stats.points[i] for f in nets} for i in (0, -1))


def ratio(family, pairing, where=LAST):
    p = where[family]
    return lambda m: evidence.variance_ratio(m[pairing][p], m["a"][p], m["b"][p])


def kept(m, p=FIRST["mlp"]):
    """First layer: the mean over units of Var(X_alpha) / mean endpoint Var."""
    v = [evidence.unit_variance(m[k][p]) for k in ("aligned", "a", "b")]
    return (v[0] / ((v[1] + v[2]) / 2).clamp_min(1e-30)).mean(-1)


def corr(m, p=FIRST["mlp"]):
    return evidence.unit_correlation(m["a"][p], m["b"][p], m["cross"][p]).mean(-1)


statistics = {("fig1_left", "conv"): ratio("conv", "aligned"), ("fig2_left", "mlp"): ratio("mlp", "aligned"),
              ("fig2_middle", "conv"): ratio("conv", "aligned"),
              **{("sec31_unaligned", f): (lambda m, f=f: ratio(f, "aligned")(m) - ratio(f, "unaligned")(m))
                 for f in nets},
              ("variance_ratio", "mlp"): lambda m: kept(m) - analysis.equal_std_factor(corr(m), alpha)}
pairs = evidence.seed_pairs(cfg)
records = [evidence.measure(key, stat, [m[family] for m in measured], profile=profile,
                            dataset=cfg[f"{family}_dataset"], model=FAMILIES[family], seeds=pairs,
                            arch=cfg[family]["arch"], alpha=alpha, images="training")
           for (key, family), stat in statistics.items()]
k, c = (evidence.average(evidence.values(f, [m["mlp"] for m in measured])) for f in (kept, corr))
rows = {"variance_ratio": {"before": f"{k:.2f} at corr {c:.2f}",
                           "note": f"first layer, {FAMILIES['mlp']}, {cfg['mlp_dataset']}, {profile} profile, "
                                   f"mean of {len(pairs)} seed pair(s)"}}
matched = nets["mlp"]["alignment"].matched_correlation()
print("MLP: mean correlation of matched units per layer, measured where the alignment matches them (Eq. 2):",
      [round(c, 2) for c in matched.values()])
Markdown(book.paper_vs_ours(rows))

# %% [markdown]
# ## Does it match the paper?
#
# Each claim of section 3 as a statistic of the per-image moments of the training images (the
# bootstrap resamples those images; the variance ratio is the one of the figures, at the last or the
# first corrected layer, at alpha = 0.5).

# %%
collapse_here = next(r for r in records if r["key"] == "fig2_left")
print("The aligned MLP midpoint", evidence.in_words(
    collapse_here, "loses more than 90% of its variance by the last layer, as in the paper",
    "keeps more than 10% of its variance by the last layer, unlike the paper's 35-layer MLP"))
Markdown(evidence.match_box(records, section="3"))

# %% [markdown]
# ## Why ours differs: depth
#
# The paper's Fig. 2 left is a 35-layer MLP, whose aligned midpoint has lost nearly all of its variance
# by the last layer; ours has 10 hidden layers and keeps more. If depth is the cause, the last-layer
# ratio should fall steadily as MLPs get deeper. Page 4's depth sweep trains aligned pairs of MLPs of
# `depths` hidden layers (width `depth_width`; the same networks, from the zoo), so we measure that
# ratio on each of them, per seed pair, image by image over the training images, and test the slope
# of its logarithm over depth.

# %%
def last_layer_moments(settings, depth):
    """Per-image moments at the last hidden layer of A, aligned B and their midpoint, for one depth."""
    n = book.aligned_pair(settings, "mlp", train["mlp"], {"arch": "mlp", "depth": depth, "width": cfg["depth_width"]})
    last = n["stats"].points[-1]
    mid = repairlib.interpolate(n["a"], n["aligned"], alpha)
    return {k: v[last] for k, v in evidence.unit_moments({"a": n["a"], "b": n["aligned"], "mid": mid},
                                                        train["mlp"], [last]).items()}


def depth_ratios(m):
    """The midpoint's last-layer variance ratio at each depth: ``[B, depths]``."""
    return torch.stack([evidence.variance_ratio(one["mid"], one["a"], one["b"]) for one in m], -1)


by_depth = [[last_layer_moments(settings, depth) for depth in cfg["depths"]] for settings in evidence.pair_settings(cfg)]
by_pair = {depth: evidence.values(lambda m, i=i: depth_ratios(m)[:, i], by_depth)  # one value per seed pair
           for i, depth in enumerate(cfg["depths"])}
for depth, values in by_pair.items():
    print(f"{depth:>2} hidden layers: last-layer variance ratio of the aligned midpoint "
          + " / ".join(f"{v:.3f}" for v in values) + f"  ({len(values)} seed pair(s))")
depth_model = f"MLPs of width {cfg['depth_width']}, depths {', '.join(map(str, cfg['depths']))}"
causes = [evidence.measure("fig2_left_depth", lambda m: evidence.slope(cfg["depths"], depth_ratios(m).log10()),
                           by_depth, profile=profile, dataset=cfg["mlp_dataset"], model=depth_model, seeds=pairs,
                           arch="mlp", alpha=alpha, images="training")]
book.save_results("3", profile, cfg, rows, start, claims=records, causes=causes)

# %% mystnb={"figure": {"caption": "Why Fig. 2 left differs (no panel of the paper). Last-layer variance ratio of the aligned midpoint (alpha = 0.5; summed unit variance over the endpoints' mean, linear scale; 1 = no collapse) against the number of hidden layers of the MLP (page 4's depth sweep), one line per seed pair; the dotted line is 0.1, below which the collapse is 'nearly complete'. Width, data set and training images of the page's profile.", "name": "variance-collapse-depth"}}
fig = plots.barrier_vs(cfg["depths"], {f"seeds {a}, {b}": [by_pair[d][k] for d in cfg["depths"]]
                                       for k, (a, b) in enumerate(pairs)},
                       "hidden layers", "last-layer variance ratio", title=f"aligned MLP midpoints, width {cfg['depth_width']}")
fig.axes[0].axhline(0.1, linestyle=":", color="0.4", linewidth=1)
fig

# %%
Markdown(book.cause_box(causes))

# %%
book.show_provenance(profile, cfg, start)
