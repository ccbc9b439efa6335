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
# # Merging more than two networks
#
# The paper merges two networks. People merge more: model soups, federated rounds, an ensemble
# folded into one network. This page is **this project's own experiment, not one of the paper's**
# (its figures are ours, not reproductions). `repairlib.merge_many` aligns N networks into the unit
# order of the first one (activation matching: one pass of all N networks over the statistics
# data), averages their weights and applies REPAIR with the N-network form of its goals (Eqs. 3, 4):
#
# $$E[y] = \tfrac{1}{N}\textstyle\sum_i E[X_i], \qquad \mathrm{std}(y) = \tfrac{1}{N}\sum_i \mathrm{std}(X_i).$$
#
# We merge 2, 4 and 8 independently trained networks (seeds 0, 1, ...; the first N seeds for N
# networks) of two kinds, a 10-layer MLP and a ResNet20 with BatchNorm, with and without REPAIR, and
# compare the merged network with two references built from the *same* N networks: their ensemble
# (the average of their softmax outputs, which costs N forward passes per input instead of one) and
# the best of them alone. Then a smaller panel compares three corrections of a merged pair, on a
# VGG16 (no BatchNorm) and on the ResNet20, with both alignment methods: exact REPAIR, *rescale only*
# (the standard deviation corrected, the mean left as interpolated; a follow-up to the paper found it
# better than REPAIR for VGG16 with weight matching on CIFAR-10) and a BatchNorm reset.
#
# **On a free Colab GPU (an estimate, not a measurement).** At the `cpu` profile this page should take
# about 6 minutes on Colab's T4, training its networks from scratch, plus the install cell and the
# data download. Measured without a GPU (2026-12-02 and 2026-12-04, 2 CPU cores with AVX512-BF16, one
# torch thread per notebook): 2067 s with an empty checkpoint zoo, 109 s with the networks cached; the
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
sizes = None
seeds = None
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
vgg = None
vgg_dataset = None
vgg_epochs = None
vgg_train_subset = None
vgg_batch_size = None
vgg_lr = None
stats_examples = None
eval_examples = None
panel_examples = None
panel_stats_examples = None

# %%
import time

start = time.time()

from IPython.display import Markdown, display
from torch import nn

import repairlib
from repairlib import analysis, book, data, plots

cfg = book.settings(
    profile, "many", sizes=sizes, seeds=seeds, mlp=mlp, mlp_dataset=mlp_dataset, mlp_epochs=mlp_epochs,
    mlp_train_subset=mlp_train_subset, conv=conv, conv_dataset=conv_dataset, conv_epochs=conv_epochs,
    conv_train_subset=conv_train_subset, conv_batch_size=conv_batch_size, conv_lr=conv_lr, vgg=vgg,
    vgg_dataset=vgg_dataset, vgg_epochs=vgg_epochs, vgg_train_subset=vgg_train_subset,
    vgg_batch_size=vgg_batch_size, vgg_lr=vgg_lr, stats_examples=stats_examples, eval_examples=eval_examples,
    panel_examples=panel_examples, panel_stats_examples=panel_stats_examples
)
SIZES = sorted(cfg["sizes"])
if len(cfg["seeds"]) < SIZES[-1]:
    raise ValueError(f"merging {SIZES[-1]} networks needs {SIZES[-1]} seeds, got {cfg['seeds']}")
cfg

# %% [markdown]
# ## The networks
#
# The MLPs and ResNet20s are trained exactly as on the other pages (same recipe, one checkpoint per
# seed in the zoo), so seeds 0 and 1 are the pairs of sections 3, 4 and appendix C. Statistics for
# alignment and REPAIR come from training images; every accuracy and loss below is measured on the
# test images the profile names (at the `cpu` profile: all 10,000 Fashion-MNIST test images).

# %%
FAMILIES = {"mlp": "MLP", "conv": "ResNet20"}
nets, train, test = {}, {}, {}
for family, label in FAMILIES.items():
    dataset = cfg[f"{family}_dataset"]
    train[family], test[family] = book.loaders(cfg, family)
    nets[family] = book.trained_pair({**cfg, "seeds": cfg["seeds"][:SIZES[-1]]}, family)
    print(f"{label} ({book.describe(cfg[family])}) on {dataset}: {len(nets[family])} networks, seeds "
          f"{list(cfg['seeds'][:SIZES[-1]])}; statistics on {train[family].num_examples} training images, "
          f"evaluation on {test[family].num_examples} test images")

# %% [markdown]
# ## Accuracy and loss against N
#
# For each N: the first N networks aligned once (activation matching, shared by both merges) and
# averaged with equal weights, then left as they are (*merged*) or REPAIRed (*merged + REPAIR*, exact
# variant); beside them the ensemble of the same N networks and the most accurate of them alone.
# REPAIR's corrections are kept as separate per-channel affines (`fuse=False`, the same function as
# the folded network) so that the variance ratios below see the corrected values.

# %%
sweep, last = {}, {}
for family, label in FAMILIES.items():
    ens = analysis.ensembles(nets[family], test[family], SIZES)
    rows = {}
    for n in SIZES:
        each = analysis.merge_many_each(nets[family][:n], train[family], ["none", "repair"], fuse=False)
        rows[n] = {"merged": repairlib.evaluate(each["merged"]["none"], test[family]),
                   "merged + REPAIR": repairlib.evaluate(each["merged"]["repair"], test[family]),
                   "ensemble": ens["ensemble"][n], "best single": ens["best_single"][n]}
    last[family] = each  # the merges of all SIZES[-1] networks, for the variance ratios below
    sweep[family] = {"members": ens["members"], "rows": rows}
    print(f"{label}: the {len(ens['members'])} networks alone: "
          + ", ".join(f"{m['accuracy']:.1%}" for m in ens["members"]))
COLUMNS = ("merged", "merged + REPAIR", "ensemble", "best single")
display(Markdown(book.markdown_table(
    ["network", "N"] + [f"{c}: accuracy (loss)" for c in COLUMNS],
    [[FAMILIES[f], n] + [f"{r[c]['accuracy']:.1%} ({r[c]['loss']:.3f})" for c in COLUMNS]
     for f, s in sweep.items() for n, r in s["rows"].items()])))

# %%
STYLES = {"merged": {"linestyle": ":", "color": "C3"}, "merged + REPAIR": {"color": "C2"},
          "ensemble": {"linestyle": "--", "color": "C0"}, "best single": {"linestyle": "-.", "color": "0.4"}}


def panels(family):
    rows = sweep[family]["rows"]
    return {f"{FAMILIES[family]}: accuracy": ("test accuracy (%)", {c: [100 * rows[n][c]["accuracy"] for n in SIZES]
                                                                     for c in COLUMNS}),
            f"{FAMILIES[family]}: loss": ("test loss", {c: [rows[n][c]["loss"] for n in SIZES] for c in COLUMNS})}


# %% mystnb={"figure": {"caption": "This project's measurement (not a paper figure): test accuracy and loss of N merged MLPs (10 layers of 512 units), without and with REPAIR, against the ensemble of the same N networks and the best of them alone. Data set, test set and seeds of the page's profile (provenance table).", "name": "many-mlp"}}
plots.sweep_panels(SIZES, panels("mlp"), "networks merged (N)", log2=True, styles=STYLES)

# %% mystnb={"figure": {"caption": "This project's measurement (not a paper figure): the same for N ResNet20s with BatchNorm.", "name": "many-resnet20"}}
plots.sweep_panels(SIZES, panels("conv"), "networks merged (N)", log2=True, styles=STYLES)

# %% [markdown]
# The same numbers, read out (these sentences are generated from the measurements above):

# %%
def points(x):
    return f"{100 * x:+.1f} points"


for family, label in FAMILIES.items():
    rows = sweep[family]["rows"]
    gain = {n: r["merged + REPAIR"]["accuracy"] - r["merged"]["accuracy"] for n, r in rows.items()}
    wins = [n for n in SIZES if gain[n] > 0]
    verdict = ("beats the unrepaired merge at every N" if len(wins) == len(SIZES) else
               f"beats the unrepaired merge only at N = {', '.join(map(str, wins))}" if wins else
               "does not beat the unrepaired merge at any N")
    print(f"{label}: REPAIR {verdict} (" + ", ".join(f"N={n}: {points(gain[n])}" for n in SIZES) + ").")
    rep = [rows[n]["merged + REPAIR"]["accuracy"] for n in SIZES]
    trend = "falls" if rep[-1] < rep[0] else "rises" if rep[-1] > rep[0] else "stays"
    print(f"  The REPAIRed merge {trend} from {rep[0]:.1%} at N={SIZES[0]} to {rep[-1]:.1%} at N={SIZES[-1]}; "
          f"unrepaired: {rows[SIZES[0]]['merged']['accuracy']:.1%} -> {rows[SIZES[-1]]['merged']['accuracy']:.1%}.")
    vs_best = {n: rows[n]["merged + REPAIR"]["accuracy"] - rows[n]["best single"]["accuracy"] for n in SIZES}
    above = [n for n in SIZES if vs_best[n] > 0]
    print("  Against the best single network of the same N: " + ", ".join(f"N={n}: {points(vs_best[n])}" for n in SIZES)
          + (f" (above it at N = {', '.join(map(str, above))})." if above else " (below it at every N)."))
    vs_ens = {n: rows[n]["merged + REPAIR"]["accuracy"] - rows[n]["ensemble"]["accuracy"] for n in SIZES}
    print("  Against the ensemble (N forward passes per input): " + ", ".join(f"N={n}: {points(vs_ens[n])}"
                                                                         for n in SIZES) + ".")
    ens_gain = rows[SIZES[-1]]["ensemble"]["accuracy"] - rows[SIZES[-1]]["best single"]["accuracy"]
    print(f"  The ensemble of {SIZES[-1]} is {points(ens_gain)} from its best member.")

# %% [markdown]
# ## Variance collapse of an N-way average
#
# Section 3.1 measures, layer by layer, the variance of the interpolated network's preactivations
# against that of the endpoints. For N networks the reference is the mean over the aligned networks:
# $v \,/\, \frac{1}{N}\sum_i v_i$, each $v$ the sum of a layer's channel variances, measured on the
# statistics data. Averaging more networks averages more, partly unrelated, units, so one would
# expect the collapse to deepen with N; here it is for the largest N.

# %%
ratios = {}
for family, label in FAMILIES.items():
    each = last[family]
    for c, name in (("none", "merged"), ("repair", "merged + REPAIR")):
        ratios[f"{label}, {name}"] = list(analysis.variance_ratios_many(each["merged"][c], each["stats"],
                                                                        train[family]).values())
for name, r in ratios.items():
    print(f"{name:>28}: layers 1-{len(r)}, ratio from {min(r):.3f} to {max(r):.3f}, last layer {r[-1]:.3f}")
for label in FAMILIES.values():
    before, after = ratios[f"{label}, merged"], ratios[f"{label}, merged + REPAIR"]
    print(f"{label}: averaging {SIZES[-1]} networks leaves the last corrected layer {before[-1]:.1%} of the networks' "
          f"mean variance; after REPAIR {after[-1]:.1%} (REPAIR's goal, the mean of the stds, squared is the "
          f"mean variance less the variance of the stds across networks).")

# %% mystnb={"figure": {"caption": "This project's measurement (not a paper figure): variance ratio per layer of the average of N aligned networks (N the page's largest), without and with REPAIR, for the MLP and the ResNet20 (conv outputs; the classifier excluded). 1 = no collapse.", "name": "many-variance"}}
plots.layer_ratios(ratios, title=f"N = {SIZES[-1]} networks",
                   ylabel=r"variance ratio $v \,/\, \frac{1}{N}\sum_i v_i$",
                   styles={k: {"linestyle": ":"} for k in ratios if k.endswith("merged")}, logy=True)

# %% [markdown]
# ## Which correction? REPAIR, rescale only, BatchNorm reset
#
# Two networks (seeds 0 and 1) per architecture, aligned by activation matching or by weight matching
# (data-free), averaged at the midpoint and then corrected: not at all, by exact REPAIR, by
# rescaling only (each channel's std brought to its goal, its mean left as interpolated), or by
# resetting the BatchNorm statistics on the training data. The VGG16 has no BatchNorm, so the last
# does not apply to it. A VGG16 pass costs several ResNet20 passes, so this panel is measured on the
# smaller test and statistics sets `panel_examples` and `panel_stats_examples` of the profile.
# (Activation matching may warn that the data do not determine some VGG16 units' assignment: units
# that never fire on the statistics images are tied; any of their orders fits equally well.)

# %%
def short(config):
    return f"VGG{config['depth']}" if config["arch"] == "vgg" else "ResNet20" if config["arch"] == "resnet20" \
        else book.describe(config)


PANEL = {"vgg": short(cfg["vgg"]), "conv": short(cfg["conv"])}
CORRECTIONS = {"none": "no correction", "repair": "REPAIR", "rescale": "rescale only", "reset_bn": "BN reset"}
pairs = {"vgg": book.trained_pair({**cfg, "seeds": cfg["seeds"][:2]}, "vgg"), "conv": nets["conv"][:2]}
panel, panel_ends = {}, {}
for family, label in PANEL.items():
    dataset = cfg[f"{family}_dataset"]
    stats_data = data.loader(dataset, "train", subset=cfg["panel_stats_examples"], device=cfg["device"])
    panel_test = data.loader(dataset, "test", subset=cfg["panel_examples"], device=cfg["device"])
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pairs[family][0].modules())
    corrections = [c for c in CORRECTIONS if c != "reset_bn" or has_bn]
    panel_ends[label] = [repairlib.evaluate(m, panel_test) for m in pairs[family]]
    for align in ("activation", "weight"):
        each = analysis.merge_many_each(pairs[family], stats_data, corrections, align=align)
        panel[(label, align)] = {c: repairlib.evaluate(m, panel_test) for c, m in each["merged"].items()}
    print(f"{label} ({book.describe(cfg[family])}): endpoints "
          + " / ".join(f"{e['accuracy']:.1%}" for e in panel_ends[label])
          + f" on {panel_test.num_examples} test images; statistics on {stats_data.num_examples} training images")
display(Markdown(book.markdown_table(
    ["network", "alignment"] + [f"{name}: accuracy (loss)" for name in CORRECTIONS.values()],
    [[label, align] + [f"{r[c]['accuracy']:.1%} ({r[c]['loss']:.3f})" if c in r else "n/a (no BatchNorm)"
                       for c in CORRECTIONS] for (label, align), r in panel.items()])))

# %% mystnb={"figure": {"caption": "This project's measurement (not a paper figure): test accuracy of the midpoint of two aligned networks, uncorrected and after each correction, for a VGG16 (no BatchNorm, so no BatchNorm reset) and a ResNet20 with BatchNorm, aligned by activation or by weight matching. Test and statistics subsets of the page's profile.", "name": "many-corrections"}}
plots.grouped_bars({f"{label}\n{align}": {CORRECTIONS[c]: 100 * r[c]["accuracy"] for c in r}
                    for (label, align), r in panel.items()}, "test accuracy (%)")

# %% [markdown]
# Read out from the panel (generated from the measurements):

# %%
for (label, align), r in panel.items():
    best = max(r, key=lambda c: r[c]["accuracy"])
    line = (f"{label}, {align} matching: best {CORRECTIONS[best]} ({r[best]['accuracy']:.1%}); "
            f"rescale only vs REPAIR {points(r['rescale']['accuracy'] - r['repair']['accuracy'])}")
    if "reset_bn" in r:
        line += f"; BN reset vs REPAIR {points(r['reset_bn']['accuracy'] - r['repair']['accuracy'])}"
    ends = sum(e["accuracy"] for e in panel_ends[label]) / len(panel_ends[label])
    print(line + f"; uncorrected {r['none']['accuracy']:.1%}; endpoints {ends:.1%} on average, so the best "
          f"correction reaches {r[best]['accuracy'] / ends:.0%} of that.")
vgg_weight = panel.get((PANEL["vgg"], "weight"))
if cfg["vgg"]["arch"] == "vgg":
    agrees = vgg_weight["rescale"]["accuracy"] > vgg_weight["repair"]["accuracy"]
    print(f"The follow-up's finding for VGG16 with weight matching (rescale only above REPAIR, on CIFAR-10) "
          f"{'holds' if agrees else 'does not hold'} in this run ({cfg['vgg_dataset']}).")

# %% [markdown]
# ## What this page does not show
#
# Only equal weights and the first N seeds are measured, one set of networks per N (no spread over
# different draws of N networks), and the panel uses a single pair per architecture. At the `cpu`
# profile the networks are short-trained Fashion-MNIST models (see the provenance table and the
# endpoint accuracies above: a weakly trained pair, such as a plain VGG16 after a few hundred SGD
# steps, leaves the corrections little to tell apart); whether the picture holds for well-trained, wide
# networks on harder data is what the `paper` profile (MNIST, CIFAR-10, ResNet20 x4) is for.

# %%
book.show_provenance(profile, cfg, start)
