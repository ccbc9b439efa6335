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
# # Appendix C: REPAIR without alignment
#
# Everywhere else in the paper the two networks are first aligned (their hidden units permuted so
# that matching units sit in the same place) and REPAIR is applied on top. The two steps fix different
# things: alignment pairs each unit with a partner that computes a similar feature; REPAIR restores the
# statistics that interpolation destroys (variance collapse, section 3). Figure 14 of the paper
# separates them: interpolation curves between the *unaligned* endpoints and between the aligned ones,
# each with and without REPAIR. Its reading: *REPAIR is effective towards the endpoints, and
# neuron alignment becomes essential near the midpoint. Both are necessary for a high-performing
# midpoint.*
#
# We repeat the experiment with a 10-layer MLP and a ResNet20 with BatchNorm (`cpu` profile:
# Fashion-MNIST; `paper` profile: MNIST and a ResNet20 x4 on CIFAR-10). In a BatchNorm network REPAIR
# of the conv outputs amounts to re-estimating the BatchNorm statistics of the interpolated network,
# as the paper notes for its ResNet18.
#
# **On a free Colab GPU (an estimate, not a measurement).** At the `cpu` profile this page should take
# about 2 minutes on Colab's T4, training its networks from scratch, plus the install cell and the
# data download. Measured without a GPU (2026-12-02 and 2026-12-04, 2 CPU cores with AVX512-BF16, one
# torch thread per notebook): 234 s with an empty checkpoint zoo, 48 s with the networks cached; the
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
alphas = None
conv_alphas = None
seeds = None
seed_pairs = None

# %%
import time

start = time.time()

import torch
from IPython.display import Markdown

from repairlib import analysis, book, plots
from repairlib.book import evidence

cfg = book.settings(
    profile, "C", mlp=mlp, mlp_dataset=mlp_dataset, mlp_epochs=mlp_epochs,
    mlp_train_subset=mlp_train_subset, conv=conv, conv_dataset=conv_dataset,
    conv_epochs=conv_epochs, conv_train_subset=conv_train_subset,
    conv_batch_size=conv_batch_size, conv_lr=conv_lr, alphas=alphas,
    conv_alphas=conv_alphas, seeds=seeds, seed_pairs=seed_pairs
)
cfg

# %% [markdown]
# ## Two pairs, and what alignment changes
#
# The networks are the ones the other pages use (`zoo.trained` caches them). Aligning B to A permutes
# its units, so most of its weight matrices look different, yet it computes exactly the same function:
# a permutation of hidden units is a symmetry of the network. Every seed pair of the profile gets the
# same treatment; the figures show the first pair, the verdicts at the end use them all.

# %%
FAMILIES = {family: book.describe(cfg[family]) for family in ("mlp", "conv")}
PAIRS = evidence.pair_settings(cfg)
nets, pairs_of, train, test, difference = {}, {}, {}, {}, {}


def three(settings, family):
    """A, B as trained and B aligned to A (with REPAIR's statistics of the aligned pair), and the permutation."""
    p = book.aligned_pair(settings, family, train[family])
    return {"a": p["a"], "unaligned": p["b"], "aligned": p["aligned"], "stats": p["stats"]}, p["alignment"]


for family, name in FAMILIES.items():
    dataset = cfg[f"{family}_dataset"]
    train[family], test[family] = book.loaders(cfg, family)
    nets[family], perms = three(PAIRS[0], family)
    pairs_of[family] = [nets[family]] + [three(settings, family)[0] for settings in PAIRS[1:]]
    a, b = nets[family]["a"], nets[family]["unaligned"]
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values()) / sum(len(p) for p in perms.values())
    difference[family] = analysis.output_difference(b, nets[family]["aligned"], test[family])
    print(f"{name:>28} on {dataset}: the alignment moves {moved:.0%} of B's hidden units; largest change of "
          f"an output logit {difference[family]['max_diff']:.1e} (largest logit {difference[family]['max_output']:.1f})")

# %%
# NBVAL_CHECK_OUTPUT
print("a permutation leaves outputs unchanged:",
      all(d["max_diff"] <= 1e-4 * max(d["max_output"], 1.0) for d in difference.values()))

# %% [markdown]
# ## Four interpolation paths per pair (Fig. 14)
#
# For each pair: the path from A to B as trained (*unaligned*) and from A to B aligned to A
# (*aligned*), each as plain interpolation and with REPAIR applied at every $\alpha$ (exact variant,
# statistics of the training data). We report test accuracy, image by image (`evidence.curve`), so
# that the verdicts at the end can resample the test images.

# %%
ALPHAS = {"mlp": cfg["alphas"], "conv": cfg["conv_alphas"]}


def four_paths(n, family):
    """Per-example test results of the endpoints and of the four paths of one pair."""
    t, d, alphas = test[family], train[family], ALPHAS[family]
    return {**evidence.endpoints(n["a"], n["aligned"], t),  # B aligned computes B's function
            "unaligned": evidence.curve(n["a"], n["unaligned"], t, alphas),
            "unaligned + REPAIR": evidence.curve(n["a"], n["unaligned"], t, alphas, "repair", d),
            "aligned": evidence.curve(n["a"], n["aligned"], t, alphas),
            "aligned + REPAIR": evidence.curve(n["a"], n["aligned"], t, alphas, "repair", d, stats=n["stats"])}


measured = {family: [four_paths(n, family) for n in pairs_of[family]] for family in nets}
PATHS = ("unaligned", "unaligned + REPAIR", "aligned", "aligned + REPAIR")
curves = {family: {k: evidence.summary(measured[family][0], ALPHAS[family], k) for k in PATHS} for family in nets}
STYLES = {"unaligned": {"linestyle": ":", "color": "C3"}, "unaligned + REPAIR": {"color": "C1"},
          "aligned": {"linestyle": "--", "color": "C0"}, "aligned + REPAIR": {"color": "C2"}}
for family, fc in curves.items():
    print(f"{FAMILIES[family]} (first seed pair): test accuracy at alpha =", fc["aligned"]["alphas"])
    for name, c in fc.items():
        print(f"  {name:>18}: " + " ".join(f"{a:6.1%}" for a in c["accuracy"])
              + f"   accuracy barrier {c['barrier_accuracy']:6.1%}")

# %% mystnb={"figure": {"caption": "Appendix C, Fig. 14 for MLPs: test accuracy along the linear path between two independently trained MLPs (first seed pair), unaligned and aligned, each without and with REPAIR (exact variant, applied at every alpha). Network, data set and test subset of the page's profile (provenance table).", "name": "no-alignment-mlp"}}
plots.curve(curves["mlp"]["aligned"]["alphas"], {k: [100 * a for a in c["accuracy"]] for k, c in curves["mlp"].items()},
            "test accuracy (%)", f"{FAMILIES['mlp']}, {cfg['mlp_dataset']}", styles=STYLES)

# %% mystnb={"figure": {"caption": "Paper Fig. 14, the same for two ResNet20s with BatchNorm (first seed pair): unaligned and aligned interpolation, each without and with REPAIR of the conv outputs (which in a BatchNorm network amounts to re-estimating the BatchNorm statistics).", "name": "no-alignment-conv"}}
plots.curve(curves["conv"]["aligned"]["alphas"], {k: [100 * a for a in c["accuracy"]] for k, c in curves["conv"].items()},
            "test accuracy (%)", f"{FAMILIES['conv']}, {cfg['conv_dataset']}", styles=STYLES)


# %% [markdown]
# ## Reading the curves
#
# Near the endpoints, REPAIR alone already recovers much of the loss of the unaligned path: a network
# close to A is mostly A, and it mainly needs its statistics put back. Near the midpoint, the
# unaligned network averages unrelated units, and no rescaling of each unit can turn that average into
# a useful feature: there REPAIR without alignment stays far below the endpoints, and only the aligned
# and REPAIRed path keeps a working midpoint. Alignment without REPAIR helps at the midpoint but still
# suffers from variance collapse. The numbers from this run (first seed pair):

# %%
def accuracy_at(curve, alpha):
    return curve["accuracy"][min(range(len(curve["alphas"])), key=lambda i: abs(curve["alphas"][i] - alpha))]


for family, fc in curves.items():
    near = min((a for a in fc["aligned"]["alphas"] if a > 0), default=0.5)
    print(f"{FAMILIES[family]}:")
    for name, c in fc.items():
        print(f"  {name:>18}: near the endpoints (alpha {near:.2f} and {1 - near:.2f}) "
              f"{accuracy_at(c, near):6.1%} and {accuracy_at(c, 1 - near):6.1%}, midpoint {accuracy_at(c, 0.5):6.1%}")

# %% [markdown]
# ## Does it match the paper?
#
# The two readings of Fig. 14 as statistics of the per-image results of every seed pair, for both
# families: at the midpoint, the aligned and REPAIRed path against the unaligned and REPAIRed one;
# at the alpha nearest 0.25, REPAIR alone against plain unaligned interpolation.


# %%
def at(m, path, alpha, alphas):
    """Accuracy ``[B]`` at the interior alpha nearest ``alpha`` (never an endpoint)."""
    return m[path]["correct"][:, min(evidence.interior(alphas), key=lambda i: abs(alphas[i] - alpha))]


records = []
for family in nets:
    alphas = ALPHAS[family]
    statistics = {"fig14": lambda m, a=alphas: at(m, "aligned + REPAIR", 0.5, a) - at(m, "unaligned + REPAIR", 0.5, a),
                  "fig14_ends": lambda m, a=alphas: at(m, "unaligned + REPAIR", 0.25, a) - at(m, "unaligned", 0.25, a)}
    records += [evidence.measure(key, stat, measured[family], profile=profile, dataset=cfg[f"{family}_dataset"],
                                 model=FAMILIES[family], seeds=evidence.seed_pairs(cfg), arch=cfg[family]["arch"])
                for key, stat in statistics.items()]
for r in records:
    claim = {"fig14": ("alignment is needed for a good REPAIRed midpoint", "REPAIR alone reaches the aligned midpoint"),
             "fig14_ends": ("REPAIR alone helps near the endpoints", "REPAIR alone does not help near the endpoints")}
    print(f"{r['model']}: " + evidence.in_words(r, *claim[r["key"]]))
book.save_results("C", profile, cfg, {}, start, claims=records)
Markdown(evidence.match_box(records, section="C"))

# %%
book.show_provenance(profile, cfg, start)
