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
# # 5.4 Merging networks trained on different data
#
# **The paper's claim.** Ainsworth et al. (2022) split the CIFAR-100 training set into two disjoint
# halves, each biased towards half of the classes: the first holds a random 80% of the images of
# classes 0-49 and 20% of those of classes 50-99, the second the rest. A network trained on either
# half is better on "its" classes and worse overall than a network trained on all the data or than the
# ensemble of the two. Section 5.4 repeats the experiment with standard BatchNorm ResNet20s: after
# alignment and REPAIR, many interpolations between the two networks have a **lower test loss on the
# full test set than either endpoint**; the best reaches **1.30 at $\alpha = 0.3$**, against **1.73** for
# the best interpolation of Ainsworth et al. (LayerNorm ResNets, no REPAIR). Fig. 13 adds baselines:
# the ensemble of the two networks (mixing their logits), a network trained on the full training set,
# and each endpoint with a *distribution-shift correction*: endpoint A over-predicts the classes it saw
# most, so their logits are lowered until its predictions on the test set are balanced. This simple
# correction beats the best REPAIRed interpolation.
#
# **What we measure here.** The same experiment and the same baselines. At the `cpu` profile the data
# set is Fashion-MNIST (10 classes: the halves are biased towards classes 0-4 and 5-9) and the networks
# are ResNet20s trained for a few epochs on a subset of each half; the paper's CIFAR-100 networks
# (`paper` profile) are wider and trained for 200 epochs. Compare the shape of the curves, not the
# values: a loss of 1.30 on 100 classes and a loss on 10 classes are different scales.
#
# **On a free Colab GPU (an estimate, not a measurement).** At the `cpu` profile this page should take
# about 3 minutes on Colab's T4, training its networks from scratch, plus the install cell and the
# data download. Measured without a GPU (2026-12-02 and 2026-12-04, 2 CPU cores with AVX512-BF16, one
# torch thread per notebook): 964 s with an empty checkpoint zoo, 75 s with the networks cached; the
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
model = None
epochs = None
train_subset = None
batch_size = None
lr = None
seeds = None
alphas = None

# %%
import time

start = time.time()

import torch
from IPython.display import Markdown

import repairlib
from repairlib import baselines, book, data, plots, zoo
from repairlib.book import evidence
from repairlib.evaluation import per_example_logits

cfg = book.settings(
    profile, "5.4", dataset=dataset, model=model, epochs=epochs,
    train_subset=train_subset, batch_size=batch_size, lr=lr, seeds=seeds,
    alphas=alphas
)
cfg

# %% [markdown]
# ## The two halves and the networks
#
# `repairlib.data.biased_split` builds the halves; `zoo.trained(..., split_part=0 or 1)` trains a
# network on one of them (the `train_subset` images drawn from that half). The reference network is
# trained on as many images drawn from the whole training set (both halves together). Per-half test
# accuracies show the bias. Every seed pair of the profile gets its own three networks (the figures
# show the first pair; the verdicts at the end use them all).

# %%
info = data.info(cfg["dataset"])
classes = info["num_classes"]
favoured = [baselines.favoured_classes(part, classes) for part in (0, 1)]
train = data.loader(cfg["dataset"], "train", subset=cfg["stats_examples"], device=cfg["device"])
test = data.loader(cfg["dataset"], "test", subset=cfg["eval_examples"], device=cfg["device"])


def trained(**kwargs):
    return zoo.trained(cfg["model"], cfg["dataset"], epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                       lr=cfg["lr"], **book.recipe_overrides(cfg), bf16=cfg["train_bf16"], device=cfg["device"],
                       **kwargs)


pairs = evidence.seed_pairs(cfg)


def networks(seeds):
    """A and B (trained on the two halves) and the network trained on the whole set, for one seed pair."""
    a, b = [trained(seed=seed, train_subset=cfg["train_subset"], split_part=part) for part, seed in zip((0, 1), seeds)]
    return a, b, trained(seed=seeds[0], train_subset=cfg["train_subset"] and 2 * cfg["train_subset"])


def test_logits(a, b, whole):
    return {name: baselines.predict_logits(m, test) for name, m in
            (("A (half 0)", a), ("B (half 1)", b), ("full training set", whole))}


model_a, model_b, full = networks(pairs[0])
logits = test_logits(model_a, model_b, full)
targets = logits["full training set"][1]
for name, (out, _) in logits.items():
    whole = baselines.logit_metrics(out, targets)
    groups = [baselines.group_accuracy(out, targets, f) for f in favoured]
    print(f"{name:>17}: test accuracy {whole['accuracy']:6.1%}  loss {whole['loss']:.3f}   on classes "
          f"{favoured[0][0]}-{favoured[0][-1]}: {groups[0]:6.1%}   on classes {favoured[1][0]}-{favoured[1][-1]}: "
          f"{groups[1]:6.1%}")

# %% [markdown]
# ## Aligned, REPAIRed interpolation against the baselines (Fig. 7, Fig. 13)
#
# B is aligned to A on training images from the whole training set (the statistics REPAIR needs are
# gathered in the same pass). Along the path we evaluate the aligned interpolation with and without
# REPAIR, and the logit ensemble $(1-\alpha) f_A(x) + \alpha f_B(x)$. The distribution-shift
# correction (`repairlib.baselines.balancing_shift`) lowers the logits of the classes an endpoint
# favours by the one amount that makes half of its test predictions fall in them. Every network is
# evaluated image by image (`repairlib.evaluation.per_example`), so that the verdicts at the end can
# resample the test images.

# %%
def examples(a, b, out):
    """Everything the verdicts resample, per test image: endpoints, the full-data network, both curves,
    the logit ensemble and the shift-corrected endpoints. Each is also kept as a plain measurement
    record (`evidence.curve`, `evidence.record`: the page's `measurements`)."""
    alignment = repairlib.align(a, b, train, stats_scope="conv")
    aligned = repairlib.permute(b, alignment)
    (la, y), (lb, _) = out["A (half 0)"], out["B (half 1)"]
    found = {"a": per_example_logits(la, y), "b": per_example_logits(lb, y),
             "full": per_example_logits(out["full training set"][0], y),
             "aligned": evidence.curve(a, aligned, test, cfg["alphas"], "none", train, figure="Fig. 7"),
             "repair": evidence.curve(a, aligned, test, cfg["alphas"], "repair", train,
                                      stats=alignment.endpoint_stats, figure="Fig. 7"),
             "ensemble": evidence.stack([per_example_logits((1 - t) * la + t * lb, y) for t in cfg["alphas"]]),
             **{f"{n}_shifted": per_example_logits(baselines.balanced_logits(o, f)[0], y)
                for n, o, f in (("a", la, favoured[0]), ("b", lb, favoured[1]))}}
    for method, alpha, key in (("endpoint_a", 0.0, "a"), ("endpoint_b", 1.0, "b"), ("full_data", None, "full"),
                               ("endpoint_a_shift_corrected", 0.0, "a_shifted"),
                               ("endpoint_b_shift_corrected", 1.0, "b_shifted")):
        evidence.record(a, aligned, alpha, method, found[key], figure="Fig. 13")
    for k, t in enumerate(cfg["alphas"]):
        evidence.record(a, aligned, t, "logit_ensemble", {m: found["ensemble"][m][k] for m in ("correct", "loss")},
                        figure="Fig. 13")
    return found


def means(per_image):
    """``{"accuracy": [alphas], "loss": [alphas]}`` of a curve: what ``repairlib.barrier`` reports."""
    return {"accuracy": per_image["correct"].double().mean(-1).tolist(), "loss": per_image["loss"].mean(-1).tolist()}


measured = [examples(model_a, model_b, logits)]
plain, repaired = means(measured[0]["aligned"]), means(measured[0]["repair"])
plain["endpoints"] = {k: {"accuracy": measured[0][k]["correct"].double().mean().item(),
                          "loss": measured[0][k]["loss"].mean().item()} for k in ("a", "b")}
(la, _), (lb, _) = logits["A (half 0)"], logits["B (half 1)"]
ensemble = [baselines.logit_metrics((1 - a) * la + a * lb, targets) for a in cfg["alphas"]]
shift_corrected = {}
for name, out, f in (("A", la, favoured[0]), ("B", lb, favoured[1])):
    shifted, shift = baselines.balanced_logits(out, f)
    shift_corrected[name] = {**baselines.logit_metrics(shifted, targets), "shift": shift,
                             "share": baselines.prediction_share(shifted, f),
                             "share_before": baselines.prediction_share(out, f)}
    print(f"corrected {name}: logits of classes {f[0]}-{f[-1]} lowered by {shift:.2f}; share of predictions in them "
          f"{shift_corrected[name]['share_before']:.1%} -> {shift_corrected[name]['share']:.1%}")
reference = baselines.logit_metrics(logits["full training set"][0], targets)
for seeds in pairs[1:]:  # the other seed pairs: the same experiment, for the verdicts
    a, b, whole = networks(seeds)
    measured.append(examples(a, b, test_logits(a, b, whole)))


# %% mystnb={"figure": {"caption": "Test loss (cross-entropy on the full, balanced test set; linear scale) against alpha between network A (alpha = 0, trained on the half biased towards the first classes) and network B (alpha = 1): aligned interpolation with REPAIR (blue) and without (blue dotted), the logit ensemble (orange), a network trained on the full training set (red dashed) and the two endpoints with the distribution-shift correction (green). Paper Figs. 7 and 13 left (CIFAR-100); at the cpu profile Fashion-MNIST.", "name": "fig-5-4-loss"}}
def flat(value):
    return [value] * len(cfg["alphas"])


def split_figure(key, ylabel, scale=1.0):
    series = {
        "aligned + REPAIR": [scale * v for v in repaired[key]],
        "aligned, no REPAIR": [scale * v for v in plain[key]],
        "logit ensemble": [scale * e[key] for e in ensemble],
        "trained on the full set": flat(scale * reference[key]),
        "A, shift-corrected": flat(scale * shift_corrected["A"][key]),
        "B, shift-corrected": flat(scale * shift_corrected["B"][key]),
    }
    styles = {"aligned + REPAIR": {"color": "C0"}, "aligned, no REPAIR": {"color": "C0", "linestyle": ":"},
              "logit ensemble": {"color": "C1"}, "trained on the full set": {"color": "C3", "linestyle": "--"},
              "A, shift-corrected": {"color": "C2", "linestyle": "--"},
              "B, shift-corrected": {"color": "C2", "linestyle": "-."}}
    return plots.curve(cfg["alphas"], series, ylabel, f"ResNet20 on biased halves of {cfg['dataset']}", styles=styles)


split_figure("loss", "test loss (full test set)")

# %% mystnb={"figure": {"caption": "The same networks in test accuracy (%, linear scale) against alpha. Paper Fig. 13 right.", "name": "fig-5-4-accuracy"}}
split_figure("accuracy", "test accuracy (%, full test set)", scale=100)

# %% [markdown]
# ## How to read the figures, and the paper's numbers beside ours
#
# In the paper, the blue curve dips below both of its endpoints around $\alpha = 0.3$ to 0.5 (the two
# networks were merged *constructively*), stays above the ensemble and the full-data network, and the
# green lines (one endpoint, corrected for the shift in class frequencies) lie below its best point.

# %%
best_alpha, best_loss = baselines.best(repaired["loss"], cfg["alphas"])
plain_alpha, plain_loss = baselines.best(plain["loss"], cfg["alphas"])
ens_alpha, ens_loss = baselines.best([e["loss"] for e in ensemble], cfg["alphas"])
ends = plain["endpoints"]
print(f"best REPAIRed interpolation: loss {best_loss:.3f} at alpha = {best_alpha:g} "
      f"(endpoints {ends['a']['loss']:.3f} / {ends['b']['loss']:.3f}; whether it beats both beyond the noise: "
      "the box below)")
print(f"best aligned interpolation without REPAIR: loss {plain_loss:.3f} at alpha = {plain_alpha:g}")
print(f"best logit ensemble: loss {ens_loss:.3f} at alpha = {ens_alpha:g}; full-data network: {reference['loss']:.3f}")
print(f"shift-corrected endpoints: {shift_corrected['A']['loss']:.3f} / {shift_corrected['B']['loss']:.3f}")
setting = (f"ResNet20 x{cfg['model'].get('width', 1)}, {cfg['dataset']}, {cfg['epochs']} epochs on "
           f"{cfg['train_subset'] or 'all'} images of each half")
rows = {"cifar100_split_loss": {"before": f"{plain_loss:.2f} at alpha = {plain_alpha:g} (aligned, no REPAIR)",
                                "after": f"{best_loss:.2f} at alpha = {best_alpha:g}",
                                "endpoints": f"{ends['a']['loss']:.2f} / {ends['b']['loss']:.2f}", "note": setting}}
Markdown(book.paper_vs_ours(rows))

# %% [markdown]
# ## Does it match the paper?
#
# Each claim of section 5.4 and Fig. 13 as a statistic of the per-image results (the interpolations
# are taken at $0 < \alpha < 1$ only, so that an endpoint never counts as a merge): its value for
# every seed pair, a paired bootstrap over the test images (`repairlib.book.evidence`) and a verdict
# that is "not distinguishable" when the effect lies inside that noise.

# %%
inside = evidence.interior(cfg["alphas"])
mid = min(inside or range(len(cfg["alphas"])), key=lambda i: abs(cfg["alphas"][i] - 0.5))


def best_of(m, name, what="loss"):
    """The lowest loss (highest accuracy) over the interior alphas of a curve: ``[B]``."""
    values = m[name][what][:, inside]
    return values.min(-1).values if what == "loss" else values.max(-1).values


def best_end(m, what="loss"):
    """The better endpoint's loss (accuracy): ``[B]``."""
    return (torch.minimum if what == "loss" else torch.maximum)(m["a"][what], m["b"][what])


statistics = {
    "sec54_endpoints": lambda m: best_end(m) - torch.maximum(m["full"]["loss"], m["ensemble"]["loss"][:, mid]),
    "fig7": lambda m: best_end(m) - best_of(m, "repair"),
    "cifar100_split_loss": lambda m: best_of(m, "aligned") - best_of(m, "repair"),
    "fig13_left": lambda m: best_of(m, "repair") - torch.minimum(m["a_shifted"]["loss"], m["b_shifted"]["loss"]),
    "fig13_ensemble": lambda m: best_of(m, "repair") - best_of(m, "ensemble"),
    "fig13_right": lambda m: best_of(m, "repair", "correct") - best_end(m, "correct"),
}
scale = {"profile": profile, "dataset": cfg["dataset"], "seeds": pairs, "arch": cfg["model"]["arch"],
         "model": f"ResNet20 x{cfg['model'].get('width', 1)}", "width": cfg["model"].get("width", 1)}
records = [evidence.measure(key, stat, measured, **scale) for key, stat in statistics.items()]
Markdown(evidence.match_box(records, section="5.4"))

# %% [markdown]
# ## Why ours differs: unequal endpoints
#
# Fig. 7 asks for more than a good merge: the best interpolation must beat the *better* endpoint. In the
# paper the two halves give endpoints of about the same loss; here they can differ by a tenth of a
# loss unit (the first line of each pair below), and an interpolation that sits between them on the
# path then loses to the better one although it is better than both mixed in its proportions. The
# test: does some REPAIRed interpolation lie below the straight line between the endpoints' losses
# (a negative loss barrier, that is a merge gain over the endpoints)?

# %%
def merge_gain(m):
    """max over interior alphas of (1 - alpha) L_A + alpha L_B - L_REPAIR(alpha): ``[B]``."""
    t = torch.tensor(cfg["alphas"], dtype=torch.float64)[inside]
    line = (1 - t) * m["a"]["loss"][:, None] + t * m["b"]["loss"][:, None]
    return (line - m["repair"]["loss"][:, inside]).max(-1).values


for seeds, (gap, gain) in zip(pairs, zip(*(evidence.values(f, measured) for f in (
        lambda m: m["a"]["loss"] - m["b"]["loss"], merge_gain)), strict=True), strict=True):
    print(f"seeds {seeds}: endpoint loss A - B {gap:+.3f}; best REPAIRed gain over the endpoints' line {gain:+.3f}")
causes = [evidence.measure("fig7_unequal_endpoints", merge_gain, measured, **scale)]
book.save_results("5.4", profile, cfg, rows, start, claims=records, causes=causes)
Markdown(book.cause_box(causes))

# %% [markdown]
# ## Checks that hold at any scale
#
# The two halves of the training set are disjoint, together hold every training image, and each holds
# `major` (80%) of every class it favours and the rest of every other class.

# %%
# NBVAL_CHECK_OUTPUT
labels = data.load_tensors(cfg["dataset"], "train")[1]
parts = [data.biased_split(labels, part, classes, major=cfg["major"]) for part in (0, 1)]
disjoint = not torch.isin(parts[0], parts[1]).any().item()
covers = len(parts[0]) + len(parts[1]) == len(labels)
print(f"halves disjoint: {disjoint}; together all {len(labels)} training images: {covers}")
assert disjoint and covers
for part, idx in enumerate(parts):
    share = torch.bincount(labels[idx], minlength=classes) / torch.bincount(labels, minlength=classes)
    wanted = torch.tensor([cfg["major"] if c in favoured[part] else 1 - cfg["major"] for c in range(classes)])
    as_wanted = bool(torch.allclose(share.double(), wanted.double(), atol=0.01))
    print(f"half {part} holds {cfg['major']:.0%} of classes {favoured[part][0]}-{favoured[part][-1]} and "
          f"{1 - cfg['major']:.0%} of the others: {as_wanted}")
    assert as_wanted

# %%
book.show_provenance(profile, cfg, start)
