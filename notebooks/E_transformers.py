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
# # Beyond the paper: REPAIR in vision transformers and ConvNeXts
#
# The paper studies MLPs, VGGs and ResNets. This page asks the same questions of two architectures it
# does not cover: a small vision transformer (timm's `VisionTransformer`) and a small ConvNeXt (timm's
# `ConvNeXt`: depthwise 7x7 convolutions, channels-last LayerNorm, inverted MLPs). Everything here is
# this project's own measurement; no figure on this page is a figure of the paper.
#
# Two things are new compared with a ResNet.
#
# * **Attention heads.** A permutation of the query/key dimensions or of the value dimensions keeps a
#   transformer's function only if it moves *whole heads* (and permutes the dimensions inside each
#   head consistently): attention contracts the dimensions of one head and keeps heads apart.
#   `repairlib.permutation_spec` finds these head groups in the traced graph and the solvers only
#   return head-structured permutations. `permutation_spec(..., heads=False)` describes the same
#   dimensions as independent units instead, as a spec finder that ignores heads would; the last
#   section measures what that costs.
# * **Where REPAIR acts.** The statistics live on the last axis of `[N, T, D]` token tensors (a
#   ConvNeXt block's MLP, too, works channels-last). At scope `"conv"` REPAIR corrects the outputs of
#   every linear and conv layer: the patch embedding, the attention output projection, the MLP hidden
#   units and the MLP output (in a ConvNeXt also the depthwise convolutions); scope `"all"` adds the
#   residual stream.
#
# At the `cpu` profile: two ViTs (embedding 48, 3 blocks of 4 heads, 4 x 4 patches of 7 px and a class
# token, read out by the mean of the patch tokens) and two ConvNeXts (channels 16-128 over four stages
# of one block) on Fashion-MNIST, trained with SGD (`repairlib.train`'s "vit" / "convnext" recipe:
# AdamW is the norm for these networks, but this trainer is SGD only) for a few hundred steps, so
# their accuracies are far below what these architectures reach with a full run; the barriers are
# those of these short-trained networks. Two seed pairs per family, (0, 1) and (2, 3): training all
# eight networks takes a few minutes on two CPU cores (measured: 30 s for a ViT pair and 118 s for a
# ConvNeXt pair with one torch thread); the page's own measurements take a few more.
#
# **On a free Colab GPU (an estimate, not a measurement).** At the `cpu` profile this page should take
# about 2 minutes on Colab's T4, training its networks from scratch, plus the install cell and the
# data download. Measured without a GPU (2026-12-02 and 2026-12-04, 2 CPU cores with AVX512-BF16, one
# torch thread per notebook): 331 s with an empty checkpoint zoo, 47 s with the networks cached; the
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
vit = None
vit_dataset = None
vit_epochs = None
vit_train_subset = None
vit_batch_size = None
vit_lr = None
convnext = None
convnext_dataset = None
convnext_epochs = None
convnext_train_subset = None
convnext_batch_size = None
convnext_lr = None
alphas = None
seeds = None
stats_examples = None
eval_examples = None
seed_pairs = None

# %%
import time

start = time.time()

import torch
from IPython.display import Markdown

import repairlib
from repairlib import analysis, book, data, metrics, plots
from repairlib.book import evidence
from repairlib.evaluation import per_example

cfg = book.settings(
    profile, "transformers", vit=vit, vit_dataset=vit_dataset, vit_epochs=vit_epochs,
    vit_train_subset=vit_train_subset, vit_batch_size=vit_batch_size, vit_lr=vit_lr, convnext=convnext,
    convnext_dataset=convnext_dataset, convnext_epochs=convnext_epochs,
    convnext_train_subset=convnext_train_subset, convnext_batch_size=convnext_batch_size,
    convnext_lr=convnext_lr, alphas=alphas, seeds=seeds, stats_examples=stats_examples,
    eval_examples=eval_examples, seed_pairs=seed_pairs
)
cfg

# %% [markdown]
# ## Two pairs of networks
#
# Each family is trained once per seed of every seed pair of the profile (`zoo.trained` caches them).
# REPAIR's statistics and the activation matching use `stats_examples` training images; every accuracy
# and loss on this page is measured on the first `eval_examples` test images. The figures show the first
# pair; the box at the end measures every pair.

# %%
FAMILIES = ("vit", "convnext")
NAMES = {"vit": "ViT", "convnext": "ConvNeXt"}
ALPHAS = [float(t) for t in cfg["alphas"]]
MID = evidence.midpoint(ALPHAS)
PAIRS = evidence.pair_settings(cfg)
pairs_of, nets, train, test = {}, {}, {}, {}
for family in FAMILIES:
    dataset = cfg[f"{family}_dataset"]
    train[family] = data.loader(dataset, "train", subset=cfg["stats_examples"], device=cfg["device"])
    test[family] = data.loader(dataset, "test", subset=cfg["eval_examples"], device=cfg["device"])
    pairs_of[family] = [dict(zip("ab", book.trained_pair(settings, family))) for settings in PAIRS]
    nets[family] = pairs_of[family][0]
    params = sum(p.numel() for p in nets[family]["a"].parameters())
    print(f"{NAMES[family]:>8} ({book.describe(cfg[family])}, {params:,} parameters), {dataset}, "
          f"{cfg[f'{family}_epochs']} epochs on {cfg[f'{family}_train_subset'] or 'all'} training images")
SCALE = (f"{profile} profile, {plots.dataset_label(cfg['vit_dataset'])}, {test['vit'].num_examples:,} test images, "
         f"seed pairs {', '.join(map(str, evidence.seed_pairs(cfg)))}, {cfg['vit_epochs']} (ViT) / "
         f"{cfg['convnext_epochs']} (ConvNeXt) epochs")
print(SCALE)

# %% [markdown]
# ## Permutation groups: heads as heads, or as independent units
#
# The spec of each network, found from its graph. The ViT's query/key and value/output dimensions are
# head groups (*4 heads x 16*), moved together per attention layer; the MLP hidden units and the
# residual stream are plain groups. The ConvNeXt has no attention, so there the two kinds of spec are
# the same. Aligning B to A with the head-structured spec permutes B without changing its function;
# with heads as independent units the aligned B is a different network.

# %%
specs, aligned, perms_of, aligned_pairs = {}, {}, {}, {}
for family in FAMILIES:
    a, b = nets[family]["a"], nets[family]["b"]
    x = next(iter(train[family]))[0]
    specs[family] = {"heads": repairlib.permutation_spec(a, x), "units": repairlib.permutation_spec(a, x, heads=False)}
    head_groups = [g for g, grp in specs[family]["heads"].groups.items() if grp.heads > 1]
    kinds = ("heads", "units") if head_groups else ("heads",)
    print(f"{NAMES[family]}: {len(specs[family]['heads'].groups)} permutation groups, {len(head_groups)} of them "
          "attention head groups")
    aligned_pairs[family] = []
    for i, pair in enumerate(pairs_of[family]):
        found = {kind: repairlib.align(pair["a"], pair["b"], train[family], spec=specs[family][kind]) for kind in kinds}
        aligned_pairs[family].append({kind: repairlib.permute(pair["b"], p, specs[family][kind])
                                      for kind, p in found.items()})
        if i == 0:
            perms_of[family], aligned[family] = found, aligned_pairs[family][0]
    for kind in kinds:
        change = analysis.output_difference(b, aligned[family][kind], test[family])
        print(f"  heads as {kind:>5}: largest change of an output logit of B after the alignment "
              f"{change['max_diff']:.1e} (largest logit {change['max_output']:.1f}), first seed pair")

# %% [markdown]
# ## Three interpolation paths per family
#
# For each pair: plain interpolation between A and B as trained (*naive*), between A and B aligned to
# A with the head-structured spec (*aligned*), and the aligned path with REPAIR (exact variant, scope
# `"conv"`, statistics of the training images) applied at every alpha. REPAIR's endpoint statistics
# (per feature of the `[N, T, D]` tokens, over all positions) are measured once on A and the aligned B
# (`repairlib.endpoint_stats`). The endpoints are measured once:
# interpolation at alpha 0 and 1 is A and B, and REPAIR leaves them as they are.

# %%
PATHS = ("naive", "aligned", "aligned + REPAIR")
STYLES = {"naive": {"linestyle": ":", "color": "C3"}, "aligned": {"linestyle": "--", "color": "C0"},
          "aligned + REPAIR": {"color": "C2"}, "heads as units": {"linestyle": "--", "color": "C1"},
          "heads as units + REPAIR": {"color": "C4"}}


def path(family, ends, a, b, correct="none", stats=None):
    """Per-example test results along a -> b: the endpoints' results ``ends`` (a, b) around the
    interior alphas (``evidence.curve``, after ``correct``)."""
    inner = evidence.curve(a, b, test[family], ALPHAS[1:-1], correct, train[family], stats=stats)
    return {k: torch.cat([ends[0][k][None], inner[k], ends[1][k][None]]) for k in inner}


def paths(family, i):
    """Per-example test results of the endpoints and of each path (head-structured alignment) of pair ``i``;
    for a network with head groups also B permuted with heads matched as units ("b as units")."""
    pair, t = pairs_of[family][i], test[family]
    a, b, b_aligned = pair["a"], pair["b"], aligned_pairs[family][i]["heads"]
    stats = repairlib.endpoint_stats(a, b_aligned, train[family], "conv")
    ends = tuple(evidence.endpoints(a, b, t).values())  # B aligned computes B's function
    out = {"a": ends[0], "b": ends[1], "naive": path(family, ends, a, b), "aligned": path(family, ends, a, b_aligned),
           "aligned + REPAIR": path(family, ends, a, b_aligned, "repair", stats), "stats": stats}
    if "units" in aligned_pairs[family][i]:
        out["b as units"] = per_example(aligned_pairs[family][i]["units"], t)
    return out


measured = {family: [paths(family, i) for i in range(len(PAIRS))] for family in FAMILIES}
endpoint_stats = {family: measured[family][0].pop("stats") for family in FAMILIES}
for runs in measured.values():
    for run in runs:
        run.pop("stats", None)
curves = {family: {k: evidence.summary(measured[family][0], ALPHAS, k) for k in PATHS} for family in FAMILIES}
for family, fc in curves.items():
    ends = fc["naive"]["endpoints"]
    print(f"{NAMES[family]} (first seed pair): endpoints A {ends['a']['accuracy']:.1%}, B {ends['b']['accuracy']:.1%}; "
          "at alpha =", " ".join(f"{t:6.2f}" for t in ALPHAS))
    for name, c in fc.items():
        print(f"  {name:>16} accuracy " + " ".join(f"{v:6.1%}" for v in c["accuracy"])
              + f"   barrier {c['barrier_accuracy']:6.1%}")
        print(f"  {'':>16}     loss " + " ".join(f"{v:6.3f}" for v in c["loss"]) + f"   barrier {c['barrier_loss']:6.3f}")

# %% mystnb={"figure": {"caption": "This project's own measurement, not a figure of the paper: test accuracy along the linear path between two ViTs (embedding 48, 3 blocks, 4 heads) trained from different seeds, naive, aligned (attention heads matched as heads) and aligned + REPAIR (exact, scope \"conv\"). Scale: cpu profile, Fashion-MNIST, all 10,000 test images, seeds 0 and 1; ViTs 4 epochs on 8,000 training images, ConvNeXts 2 epochs on 6,000 (the provenance table gives the run's values).", "name": "transformers-vit-curves"}}
plots.curve(ALPHAS, {k: [100 * a for a in c["accuracy"]] for k, c in curves["vit"].items()},
            "test accuracy (%)", f"ViT, {plots.dataset_label(cfg['vit_dataset'])}", styles=STYLES)

# %% mystnb={"figure": {"caption": "This project's own measurement, not a figure of the paper: the same three paths for two ConvNeXts (channels 16-128, one block per stage). Scale: cpu profile, Fashion-MNIST, all 10,000 test images, seeds 0 and 1; ViTs 4 epochs on 8,000 training images, ConvNeXts 2 epochs on 6,000 (the provenance table gives the run's values).", "name": "transformers-convnext-curves"}}
plots.curve(ALPHAS, {k: [100 * a for a in c["accuracy"]] for k, c in curves["convnext"].items()},
            "test accuracy (%)", f"ConvNeXt, {plots.dataset_label(cfg['convnext_dataset'])}", styles=STYLES)

# %% mystnb={"figure": {"caption": "This project's own measurement, not a figure of the paper: test loss along the same paths, one line per family (colour) and path (line style). Scale as in the curves above.", "name": "transformers-loss"}}
plots.curve(ALPHAS, {f"{NAMES[f]}, {k}": c["loss"] for f, fc in curves.items() for k, c in fc.items()},
            "test loss", "test loss along the path",
            styles={f"{NAMES[f]}, {k}": {"color": color, "linestyle": line}
                    for f, color in zip(FAMILIES, ("C0", "C3")) for k, line in zip(PATHS, (":", "--", "-"))})


# %% [markdown]
# ## What the curves say
#
# The sentences below are generated from this run's numbers.

# %%
def change(delta, noise=0.01):
    """'raises it' / 'lowers it' / 'leaves it about unchanged' for an accuracy difference (within +-1 point:
    unchanged)."""
    return "raises it" if delta > noise else "lowers it" if delta < -noise else "leaves it about unchanged"


def midpoint_words(family):
    fc, name = curves[family], NAMES[family]
    ends = fc["naive"]["endpoints"]
    mean_end = (ends["a"]["accuracy"] + ends["b"]["accuracy"]) / 2
    naive, al, rep = (fc[k]["accuracy"][MID] for k in PATHS)
    lines = [(f"{name}: the endpoints reach {ends['a']['accuracy']:.1%} and {ends['b']['accuracy']:.1%}; "
              f"at alpha {ALPHAS[MID]:.2f} the naive midpoint reaches {naive:.1%}, the aligned one {al:.1%} and "
              f"the aligned and REPAIRed one {rep:.1%}.")]
    lines.append(f"Alignment {change(al - naive).replace(' it', ' the midpoint', 1)} ({al - naive:+.1%}); REPAIR "
                 f"on top {change(rep - al)} ({rep - al:+.1%}), leaving it {mean_end - rep:.1%} below the endpoints' mean "
                 f"(accuracy barrier {fc['aligned + REPAIR']['barrier_accuracy']:.1%} against "
                 f"{fc['aligned']['barrier_accuracy']:.1%} aligned and {fc['naive']['barrier_accuracy']:.1%} naive).")
    if rep < al - 0.01:
        lines.append("Here REPAIR of the conv/linear outputs hurts the aligned path: the corrected points include "
                     "layers that write into the uncorrected residual stream (attention output projection, MLP "
                     "output); the section on the residual stream below tries scope 'all'.")
    return " ".join(lines)


for family in FAMILIES:
    print(midpoint_words(family))

# %% [markdown]
# ## Variance collapse, block by block
#
# The paper's variance ratio (section 3.1), the summed variance of a layer's units in the midpoint
# network over the mean of the endpoints', at every scope-`"conv"` point in network order
# (`repairlib.metrics.variance_ratio`, on the statistics images). A ratio below 1 is variance
# collapse. REPAIR gives every unit the standard deviation $(\sigma_A + \sigma_B)/2$, whose square is at
# most $(\sigma_A^2 + \sigma_B^2)/2$, so even a perfect correction leaves the ratio at or a little
# below 1; the printed range says how close this run gets.

# %%
ratios = {}
for family in FAMILIES:
    a, b = nets[family]["a"], nets[family]["b"]
    b_aligned, stats = aligned[family]["heads"], endpoint_stats[family]
    mid_aligned = repairlib.interpolate(a, b_aligned, 0.5)
    models = {"naive": repairlib.interpolate(a, b, 0.5), "aligned": mid_aligned,
              "aligned + REPAIR": repairlib.repair(mid_aligned, a, b_aligned, train[family], 0.5, stats=stats)}
    # the endpoint statistics of the aligned pair serve the naive midpoint too: summed variances do not
    # depend on the order of the units
    ratios[family] = {k: metrics.variance_ratio(m, a, b_aligned, train[family], stats=stats) for k, m in models.items()}
    points = list(ratios[family]["aligned"])
    print(f"{NAMES[family]}: variance ratio at alpha 0.5, {len(points)} points")
    for p in points:
        print(f"  {p:>34} " + "  ".join(f"{k} {r[p]:5.2f}" for k, r in ratios[family].items()))

# %% mystnb={"figure": {"caption": "This project's own measurement, not a figure of the paper: the variance ratio at alpha 0.5 of every corrected layer of the ViT, in network order (per block: attention output projection, MLP hidden units, MLP output; the first point is the patch embedding), naive, aligned, and aligned + REPAIR. Statistics of 500 training images; the rest of the scale as in the curves above.", "name": "transformers-vit-variance"}}
plots.layer_ratios({k: list(r.values()) for k, r in ratios["vit"].items()}, "ViT, midpoint",
                   styles={k: STYLES[k] for k in PATHS})

# %% mystnb={"figure": {"caption": "This project's own measurement, not a figure of the paper: the same for the ConvNeXt (per block: depthwise conv, MLP hidden units, MLP output; the stem and the downsampling convolutions in between).", "name": "transformers-convnext-variance"}}
plots.layer_ratios({k: list(r.values()) for k, r in ratios["convnext"].items()}, "ConvNeXt, midpoint",
                   styles={k: STYLES[k] for k in PATHS})


# %%
def block_of(point):
    """The block a correction point belongs to: 'blocks_2_mlp_fc1' -> 'blocks 2', 'stages_1_blocks_0_...' -> 'stage 1'."""
    parts = point.split("_")
    if parts[0] == "blocks":
        return f"block {parts[1]}"
    if parts[0] == "stages":
        return f"stage {parts[1]}"
    return "stem"


for family in FAMILIES:
    by_block = {}
    for p, r in ratios[family]["aligned"].items():
        by_block.setdefault(block_of(p), []).append(r)
    worst = min(by_block, key=lambda k: min(by_block[k]))
    mean = {k: sum(v) / len(v) for k, v in by_block.items()}
    print(f"{NAMES[family]}: mean variance ratio of the aligned midpoint per block: "
          + ", ".join(f"{k} {v:.2f}" for k, v in mean.items())
          + f". The strongest collapse is in {worst} ({min(by_block[worst]):.2f}); after REPAIR the ratios lie in "
          f"{min(ratios[family]['aligned + REPAIR'].values()):.2f}-{max(ratios[family]['aligned + REPAIR'].values()):.2f}.")

# %% [markdown]
# ## Heads matched as heads, or as independent units
#
# With `heads=False` the query/key and value/output dimensions are matched like any other units: the
# assignment may send a dimension of one head into another head. The permuted B then no longer
# computes B's function (its accuracy at alpha = 1 shows by how much), and REPAIR cannot put back what
# the permutation broke. The same paths with that alignment, for the ViT:

# %%
a, b = nets["vit"]["a"], nets["vit"]["b"]
b_units = aligned["vit"]["units"]
ends = (measured["vit"][0]["a"], measured["vit"][0]["b as units"])
units = {"a": ends[0], "b": ends[1], "heads as units": path("vit", ends, a, b_units),
         "heads as units + REPAIR": path("vit", ends, a, b_units, "repair")}
unit_curves = {k: evidence.summary(units, ALPHAS, k) for k in ("heads as units", "heads as units + REPAIR")}
heads_curves = {"aligned": curves["vit"]["aligned"], "aligned + REPAIR": curves["vit"]["aligned + REPAIR"]}
b_acc = {"heads": curves["vit"]["aligned"]["accuracy"][-1], "units": unit_curves["heads as units"]["accuracy"][-1]}
moved = {kind: sum(int((p != torch.arange(len(p))).sum()) for g, p in perms_of["vit"][kind].items()
                   if specs["vit"]["heads"].groups[g].heads > 1) for kind in ("heads", "units")}
print("ViT, at alpha =", " ".join(f"{t:6.2f}" for t in ALPHAS))
for name, c in {**heads_curves, **unit_curves}.items():
    label = name.replace("aligned", "heads as heads")
    print(f"  {label:>24} accuracy " + " ".join(f"{v:6.1%}" for v in c["accuracy"])
          + f"   barrier {c['barrier_accuracy']:6.1%}")

# %% mystnb={"figure": {"caption": "This project's own measurement, not a figure of the paper: the ViT pair aligned with attention heads matched as whole heads (the library's default) and with the query/key and value/output dimensions matched as independent units (permutation_spec(..., heads=False)), each without and with REPAIR. At alpha = 1 the second is B permuted across heads, a different network. Scale as in the curves above.", "name": "transformers-heads"}}
plots.curve(ALPHAS, {**{k.replace("aligned", "heads as heads"): [100 * v for v in c["accuracy"]] for k, c in heads_curves.items()},
                     **{k: [100 * v for v in c["accuracy"]] for k, c in unit_curves.items()}},
            "test accuracy (%)", "ViT: how heads are matched",
            styles={"heads as heads": STYLES["aligned"], "heads as heads + REPAIR": STYLES["aligned + REPAIR"],
                    **{k: STYLES[k] for k in unit_curves}})

# %%
h_mid, u_mid = heads_curves["aligned + REPAIR"]["accuracy"][MID], unit_curves["heads as units + REPAIR"]["accuracy"][MID]
print(f"Matched as independent units, the query/key/value dimensions of B move {moved['units']} positions "
      f"(as heads: {moved['heads']}), and B permuted that way reaches {b_acc['units']:.1%} test accuracy instead "
      f"of its own {b_acc['heads']:.1%} ({b_acc['units'] - b_acc['heads']:+.1%}). "
      f"With REPAIR the midpoint is {u_mid:.1%} against {h_mid:.1%} with heads matched as heads "
      f"({u_mid - h_mid:+.1%}); without REPAIR {unit_curves['heads as units']['accuracy'][MID]:.1%} against "
      f"{heads_curves['aligned']['accuracy'][MID]:.1%}. "
      + ("Matching heads as heads is what keeps the aligned endpoint B itself."
         if b_acc["units"] < b_acc["heads"] - 0.01 else
         "On this pair the independent matching happens to cost the endpoint little."))

# %% [markdown]
# ## REPAIR of the residual stream
#
# Scope `"all"` also corrects the residual stream (the sums after every block, in a ViT the class
# token and position embeddings' stream). At the midpoint of the aligned paths:

# %%
for family in FAMILIES:
    a, b_aligned = nets[family]["a"], aligned[family]["heads"]
    mid = repairlib.interpolate(a, b_aligned, 0.5)
    full = repairlib.repair(mid, a, b_aligned, train[family], 0.5, scope="all")
    acc_all = float(per_example(full, test[family])["correct"].double().mean())
    print(f"{NAMES[family]}: aligned midpoint {curves[family]['aligned']['accuracy'][MID]:.1%}; REPAIR scope 'conv' "
          f"{curves[family]['aligned + REPAIR']['accuracy'][MID]:.1%}, scope 'all' {acc_all:.1%}")

# %% [markdown]
# ## Does it match the paper?
#
# The paper makes no claim about transformers; the box tries its premise (alignment beats naive
# interpolation) and its main claim (REPAIR raises the aligned midpoint) on both families, and this
# page's own claim about heads, as statistics of the per-image results of every seed pair: at the
# midpoint, aligned minus naive and aligned + REPAIR minus aligned; for the ViT, B permuted with heads
# matched as independent units against B itself.


# %%
def at_mid(m, name):
    """Accuracy ``[B]`` of path ``name`` at the midpoint alpha."""
    return m[name]["correct"][:, MID]


STATISTICS = {"beyond_alignment": lambda m: at_mid(m, "aligned") - at_mid(m, "naive"),
              "beyond_repair": lambda m: at_mid(m, "aligned + REPAIR") - at_mid(m, "aligned"),
              "beyond_heads": lambda m: m["b as units"]["correct"] - m["b"]["correct"]}
records = [evidence.measure(key, stat, measured[family], profile=profile, dataset=cfg[f"{family}_dataset"],
                            model=NAMES[family], seeds=evidence.seed_pairs(cfg), arch=cfg[family]["arch"],
                            alpha=ALPHAS[MID] if key != "beyond_heads" else 1.0)
           for family in FAMILIES for key, stat in STATISTICS.items()
           if key != "beyond_heads" or "b as units" in measured[family][0]]
for r in records:
    words = {"beyond_alignment": ("alignment beats naive interpolation", "alignment does not beat naive interpolation"),
             "beyond_repair": ("REPAIR raises the aligned midpoint", "REPAIR lowers the aligned midpoint"),
             "beyond_heads": ("matched as units, B loses accuracy", "matched as units, B keeps its accuracy")}
    print(f"{r['model']}: " + evidence.in_words(r, *words[r["key"]]))
book.save_results("transformers", profile, cfg, {}, start, claims=records)
Markdown(evidence.match_box(records, section="transformers"))

# %%
book.show_provenance(profile, cfg, start)
