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
# # Quickstart: merge two networks in a few lines
#
# Two networks of the same architecture, trained from different random initialisations, solve the same
# task equally well, yet the network whose weights are the average of theirs is usually useless. This
# page shows the three steps of the paper that make weight averaging work, with `repairlib`:
#
# 1. **align** the hidden units of network B to those of network A (B's units are permuted so that
#    each one sits where its best-correlated counterpart in A sits; B computes the same function),
# 2. **interpolate** the weights, $\theta_\alpha = (1-\alpha)\,\theta_A + \alpha\,\theta_B$,
# 3. **REPAIR** the interpolated network: rescale its units so that their means and standard deviations
#    match the interpolation of A's and B's (section 4 of the paper).
#
# At the `cpu` profile the two networks are 10-layer MLPs (512 units per layer) trained for a few
# epochs on Fashion-MNIST; at the `paper` profile, the paper's MLP on MNIST for 100 epochs. Change
# `profile` in the parameters cell below (or the `REPAIR_PROFILE` environment variable) to switch.
#
# **On a free Colab GPU (an estimate, not a measurement).** At the `cpu` profile this page should take
# about 1 minute on Colab's T4, training its networks from scratch, plus the install cell and the data
# download. Measured without a GPU (2026-12-02 and 2026-12-04, 2 CPU cores with AVX512-BF16, one torch
# thread per notebook): 37 s with an empty checkpoint zoo, 12 s with the networks cached; the estimate
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
dataset = None
model = None
epochs = None
train_subset = None
seeds = None

# %%
import time

start = time.time()

import repairlib
from repairlib import book, data, plots, zoo

cfg = book.settings(
    profile, "quickstart", dataset=dataset, model=model, epochs=epochs,
    train_subset=train_subset, seeds=seeds
)
cfg

# %% [markdown]
# ## Two independently trained networks
#
# `repairlib.zoo.trained` trains a network once with the paper's recipe (Table 1) and caches the
# checkpoint (in `$REPAIR_ZOO`, default `~/.cache/repairlib/zoo`), so rerunning this page only
# re-evaluates. The two networks differ only in their random seed.

# %%
dataset, device = cfg["dataset"], cfg["device"]
model_a, model_b = [
    zoo.trained(cfg["model"], dataset, epochs=cfg["epochs"], seed=seed, train_subset=cfg["train_subset"],
                **book.recipe_overrides(cfg), bf16=cfg["train_bf16"], device=device)
    for seed in cfg["seeds"]
]
train = data.loader(dataset, "train", subset=cfg["stats_examples"], device=device)
test = data.loader(dataset, "test", subset=cfg["eval_examples"], device=device)


def report(name, model):
    result = repairlib.evaluate(model, test)
    accuracy, loss = result["accuracy"], result["loss"]
    print(f"{name:>25}: test accuracy {accuracy:6.2%}  test loss {loss:.3f}")


report("network A", model_a)
report("network B", model_b)

# %% [markdown]
# ## Averaging without alignment
#
# The plain average of the two weight vectors mixes unrelated units: unit 7 of A and unit 7 of B have
# nothing in common.

# %%
naive = repairlib.interpolate(model_a, model_b, 0.5)
report("naive midpoint", naive)

# %% [markdown]
# ## One call: `repairlib.merge`
#
# The common case is one call: align B's units to A's, interpolate, and REPAIR the result's statistics
# on training data. It returns a plain network of the same architecture.

# %%
merged = repairlib.merge(model_a, model_b, train)  # alpha=0.5, align="activation", correct="repair"
report("merged (align + REPAIR)", merged)

# %% [markdown]
# ## The same, step by step
#
# `repairlib.align` matches the units of B to those of A by the correlation of their activations on
# training data (Li et al., 2015), layer by layer, with the Hungarian algorithm; `repairlib.permute`
# reorders B accordingly. Aligned units are correlated, but far from perfectly, so the interpolated
# network's activations lose variance (*variance collapse*, section 3). `repairlib.repair` restores
# their statistics with a few forward passes over the training data and folds the correction back into
# the weights: the result is again a plain 10-layer MLP.

# %%
perms = repairlib.align(model_a, model_b, train)  # {layer: permutation of B's units}
model_b_aligned = repairlib.permute(model_b, perms)  # same function, A's unit order
midpoint = repairlib.interpolate(model_a, model_b_aligned, 0.5)
repaired = repairlib.repair(midpoint, model_a, model_b_aligned, train, alpha=0.5)

report("B aligned to A", model_b_aligned)
report("aligned midpoint", midpoint)
report("aligned midpoint + REPAIR", repaired)
correlation = [round(c, 2) for c in perms.matched_correlation().values()]
print(f"mean correlation of matched units, layer by layer: {correlation}")

# %% [markdown]
# ## Along the whole path
#
# The same three networks for every $\alpha$ between 0 (network A) and 1 (network B). The *barrier*
# is the largest drop of the curve below the straight line between the endpoints (Eq. 1 of the paper).

# %% mystnb={"figure": {"caption": "Test accuracy of the networks on the line between two independently trained MLPs. Averaging without alignment fails; aligning the units helps; REPAIR on top of the alignment brings the whole path close to the endpoints.", "name": "quickstart-curve"}}
alphas = cfg["alphas"]
curves = {
    "naive": repairlib.barrier(model_a, model_b, test, alphas),
    "aligned": repairlib.barrier(model_a, model_b_aligned, test, alphas),
    "aligned + REPAIR": repairlib.barrier(model_a, model_b_aligned, test, alphas,
                                          correct="repair", stats_data=train),
}
for name, c in curves.items():
    print(f"{name:>17}: accuracy barrier {c['barrier_accuracy']:6.2%}"
          f"  loss barrier {c['barrier_loss']:.3f}")
accuracy = {name: [100 * a for a in c["accuracy"]] for name, c in curves.items()}
plots.curve(alphas, accuracy, "test accuracy (%)", f"10-layer MLPs, {dataset}",
            styles={"naive": {"linestyle": ":"}, "aligned": {"linestyle": "--"}})

# %% [markdown]
# ## Where to go next
#
# The following pages take each step apart: why interpolated networks collapse (section 3), the two
# variants of REPAIR (section 4), and how the normalisation layer, the width and the depth of the
# networks change the picture (section 5). `repairlib`'s [API](../../api.md) works on any PyTorch
# network that `torch.fx` can trace.

# %%
book.show_provenance(profile, cfg, start)
