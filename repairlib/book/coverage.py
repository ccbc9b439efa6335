"""The paper, item by item: every figure panel and every number of its text, as plain data.

:data:`CLAIMS` is the one table the book's match boxes, its results page's coverage index and its
intro's figure index are made from. One dict per item of the paper:

- ``key``: the name a notebook records its measurement under (:func:`repairlib.book.evidence.measure`);
- ``source``: where the paper says it ("Fig. 3 middle", "Sec. 5.2", "Abstract", "Table 1"); ``figure``
  and ``panel`` (``None`` for none) are read from it;
- ``section``: the book section whose page measures it (``None``: not a section's, e.g. Table 1);
- ``data``: the paper's data set(s);
- ``claim``: what the paper says, with its numbers, in one short sentence;
- ``paper``: the paper's number for the claim (a float in ``unit``) or ``None`` where it gives none;
- ``what``: the quantity our measurement is, in words (with its formula);
- ``unit``: ``"fraction"`` (accuracy, a share; shown in %), ``"loss"``, ``"ratio"``, ``"slope"`` or
  ``"layers"``;
- ``test``: what the measured quantity must satisfy for the claim to hold:
  ``{"kind": "greater", "than": t}``, ``{"kind": "less", "than": t}``,
  ``{"kind": "within", "of": v, "tol": d}`` (|ours - v| <= d), or ``{"kind": "context" | "setting" |
  "shown"}`` for a number that is no claim of this paper (prior work), a setting, or a picture.

A claim at this project's scale is mostly qualitative: the sign of an effect (a difference ``> 0``),
a trend over a sweep (the sign of a slope) or a bound; the paper's number is printed beside ours.
"""

from __future__ import annotations

import re

from repairlib.book.profiles import NOTEBOOKS

PANELS = ("left", "middle", "right")
HERE = ("Fashion-MNIST",)  # the data sets on this machine: the cpu profile runs on these

_SOURCE = re.compile(r"Fig\. (\d+)(?: (left|middle|right))?")


def _test(spec) -> dict:
    """A claim's test from its short form: ``(">", t)``, ``("<", t)``, ``("=", v, d)`` or a word."""
    if isinstance(spec, str):
        return {"kind": spec}
    if spec[0] == "=":
        return {"kind": "within", "of": float(spec[1]), "tol": float(spec[2])}
    return {"kind": {">": "greater", "<": "less"}[spec[0]], "than": float(spec[1])}


def _item(key, source, section, data, claim, paper, unit, test, what) -> dict:
    """One row of :data:`CLAIMS` (see the module docstring for the fields)."""
    match = _SOURCE.match(source)
    return {"key": key, "source": source, "figure": int(match.group(1)) if match else None,
            "panel": match.group(2) if match else None, "section": section, "data": data, "claim": claim,
            "paper": paper, "what": what, "unit": unit, "test": _test(test)}


_GAIN = "REPAIR midpoint accuracy minus the aligned midpoint's"
_CUT = "REPAIR's cut of the aligned midpoint barrier, 1 - B_REPAIR / B_aligned (accuracy)"

CLAIMS = tuple(_item(*row) for row in (
    # --- abstract, introduction, discussion ---
    ("abstract_cut_range", "Abstract", "5.3", "several", ("REPAIR cuts the aligned barrier by 60-100% "
     "across architectures, data sets, normalisations"), 0.60, "fraction", (">", 0.60),
     "the smallest of REPAIR's cuts over the sweep's settings, 1 - B_REPAIR / B_aligned"),
    ("intro_singh_jaggi", "Sec. 1", "4", "CIFAR-10", ("Prior work (Singh and Jaggi): aligned ResNet18s, "
     "lowest accuracy on the path 77%, a 16% barrier"), 0.16, "fraction", "context",
     "not measured: a number of prior work"),
    # --- section 3: variance collapse ---
    ("fig1_left", "Fig. 1 left", "3", "CIFAR-10", ("The activation variance of an aligned interpolation "
     "collapses layer by layer; REPAIR restores it"), None, "ratio", ("<", 1.0),
     "v_alpha / ((v_1 + v_2) / 2) at the deepest layer, aligned midpoint, before REPAIR"),
    ("fig2_left", "Fig. 2 left", "3", "MNIST", ("Aligned 35-layer MLP midpoint: variance nearly zero "
     "by the last layer"), None, "ratio", ("<", 0.1),
     "v_alpha / ((v_1 + v_2) / 2) at the last hidden layer of the MLP midpoint"),
    ("fig2_middle", "Fig. 2 middle", "3", "CIFAR-10", ("VGG midpoint: variance falls more than 10x by "
     "the last layers"), 0.1, "ratio", ("<", 0.1),
     "v_alpha / ((v_1 + v_2) / 2) at the last conv layer of the VGG midpoint"),
    ("fig2_right", "Fig. 2 right", "5.2", "ImageNet", ("ResNet50 midpoint: variance falls more than 10x "
     "by the last layers"), 0.1, "ratio", ("<", 0.1),
     "v_alpha / ((v_1 + v_2) / 2) at the last block of the ResNet50 midpoint"),
    ("sec31_unaligned", "Sec. 3.1", "3", "MNIST", "The collapse is worse between unaligned networks",
     None, "ratio", (">", 0.0), "last-layer variance ratio, aligned minus unaligned midpoint"),
    ("variance_ratio", "Sec. 3.2", "3", "MNIST", ("Var(X_0.5) / Var(X_1) = 0.5 + 0.5 corr: 0.7 at "
     "corr 0.4"), 0.7, "ratio", ("=", 0.0, 0.05),
     "first layer: measured ratio minus 0.5 + 0.5 corr (mean corr of aligned units)"),
    # --- section 4: REPAIR ---
    ("fig3_left", "Fig. 3 left", "4", "CIFAR-10", ("Layer 9 of a ResNet18 midpoint: channel stds "
     "collapse, REPAIR brings them back to the endpoints'"), 1.0, "ratio", ("=", 1.0, 0.1),
     "median over channels of std after REPAIR / mean endpoint std"),
    ("resnet18_cifar10", "Fig. 3 middle", "4", "CIFAR-10", ("ResNet18 midpoint 66.0% → 94.1% with "
     "REPAIR (endpoints 95.5%)"), 0.281, "fraction", (">", 0.0), _GAIN),
    ("sec42_barrier", "Sec. 4.2", "4", "CIFAR-10", ("After REPAIR the ResNet18 barrier is 1.5% "
     "(16% in prior work)"), 0.015, "fraction", ("<", 0.03),
     "accuracy barrier after REPAIR: mean endpoint accuracy minus midpoint"),
    ("resnet18_cifar10_barrier", "Abstract", "4", "CIFAR-10", ("REPAIR cuts the ResNet18 barrier "
     "by 90%"), 0.90, "fraction", (">", 0.60), _CUT),
    ("mlp_depth_sweep", "Fig. 3 right", "4", "MNIST", ("MLP midpoints above 90%: up to 27 layers with "
     "REPAIR, 6 without"), 21.0, "layers", (">", 0.0),
     "deepest depth with a midpoint >= 90% of the endpoints', with minus without REPAIR"),
    ("sec42_exact", "Sec. 4.2", "4", "MNIST", ("Exact REPAIR beats the closed form (10-layer MLP: "
     "95.46% vs 94.83%)"), 0.0063, "fraction", (">", 0.0),
     "midpoint accuracy, exact REPAIR minus closed form"),
    ("sec42_stats", "Sec. 4.2", None, "all", ("About 5,000 training images suffice for REPAIR's "
     "statistics"), 5000.0, "ratio", "setting", "the paper profile uses 5,000"),
    ("fig11_right", "Fig. 11 right", "4", "CIFAR-10", ("In test loss too, REPAIR lowers the ResNet18 "
     "curve"), None, "loss", (">", 0.0), "midpoint test loss, aligned minus REPAIR"),
    # --- section 5.1: normalisation ---
    ("fig4_left", "Fig. 4 left", "5.1", "CIFAR-10", ("REPAIR lowers the loss barrier of BatchNorm, "
     "LayerNorm and Fixup ResNet20s at widths 1-16"), None, "loss", (">", 0.0),
     "smallest over norms and widths of the loss barrier, aligned minus REPAIR"),
    ("fig4_left_trend", "Fig. 4 left", "5.1", "CIFAR-10", ("With REPAIR the barrier falls as width "
     "grows"), None, "slope", ("<", 0.0), "slope of the REPAIRed loss barrier over log2 width"),
    ("resnet20x16_loss_barrier", "Sec. 5.1", "5.1", "CIFAR-10", ("Loss barrier below 0.05 for "
     "BatchNorm and LayerNorm at width 16"), 0.05, "loss", ("<", 0.05),
     "the larger REPAIRed loss barrier of BN and LN at the widest width"),
    ("fig4_middle", "Fig. 4 middle", "5.1", "CIFAR-10", ("LayerNorm networks alone have a low barrier "
     "before REPAIR"), None, "fraction", (">", 0.0),
     "aligned accuracy barrier, BatchNorm minus LayerNorm"),
    ("resnet20_bn_vs_ln", "Fig. 4 right", "5.1", "CIFAR-10", ("Midpoints BN 34.7% / LN 88.4% before, "
     "92.0% / 92.0% after REPAIR"), 0.0, "fraction", ("=", 0.0, 0.02),
     "REPAIRed midpoint accuracy, BatchNorm minus LayerNorm"),
    ("sec51_ln_cost", "Sec. 5.1", "5.1", "CIFAR-10", ("LayerNorm costs accuracy: endpoints 92.4% vs "
     "93.6% (BatchNorm)"), 0.012, "fraction", (">", 0.0),
     "endpoint accuracy, BatchNorm minus LayerNorm"),
    ("resnet20x8_bn", "Sec. 5.1", "5.1", "CIFAR-10", ("ResNet20 x8 BN midpoint 32.3% → 94.4% "
     "(endpoints 93.6%)"), 0.621, "fraction", (">", 0.0), _GAIN + " (BatchNorm)"),
    ("resnet20x8_ln", "Sec. 5.1", "5.1", "CIFAR-10", ("ResNet20 x8 LN midpoint 90.3% → 93.2% "
     "(endpoints 92.4%)"), 0.029, "fraction", (">", 0.0), _GAIN + " (LayerNorm)"),
    ("sec51_fixup", "Sec. 6", "5.1", "CIFAR-10", ("REPAIR works without normalisation layers "
     "(Fixup)"), None, "fraction", (">", 0.0), _GAIN + " (Fixup)"),
    ("resnet20x4_bn_reset", "Sec. 5.2", "5.1", "CIFAR-10", ("BN reset of a ResNet20 x4 midpoint: "
     "11.69% → 90.31% (authors' notebook)"), 0.786, "fraction", (">", 0.0),
     "midpoint accuracy, BN reset minus aligned"),
    ("fig10_left", "Fig. 10 left", "5.1", "CIFAR-10", ("Fig. 4 left in accuracy: REPAIR lowers every "
     "barrier"), None, "fraction", (">", 0.0),
     "smallest over norms and widths of the accuracy barrier, aligned minus REPAIR"),
    ("fig10_right", "Fig. 10 right", "5.1", "CIFAR-10", ("Fig. 4 right in loss: REPAIR lowers the "
     "midpoint loss of BN and LN"), None, "loss", (">", 0.0),
     "smaller over BN, LN of the midpoint loss, aligned minus REPAIR"),
    ("fig8_left", "Fig. 8 left", "5.1", "CIFAR-10", ("LayerNorm ResNets: REPAIR's barrier is below "
     "the aligned one (and Ainsworth et al.'s) up to 8x"), None, "fraction", ("<", 0.0),
     "LayerNorm accuracy barrier, REPAIR minus aligned"),
    # --- section 5.2: ImageNet ---
    ("resnet50_imagenet", "Fig. 5 left", "5.2", "ImageNet", ("ResNet50 midpoint: below 1% → 53.2% "
     "(REPAIR on convs) → 56.5% (and on blocks)"), 0.033, "fraction", (">", 0.0),
     "midpoint accuracy, REPAIR on convs and blocks minus convs only"),
    ("fig1_middle", "Fig. 1 middle", "5.2", "ImageNet", ("ResNet50: REPAIR cuts the barrier by 74% "
     "(76% → 20%)"), 0.74, "fraction", (">", 0.60), _CUT + ", full REPAIR"),
    ("sec52_chance", "Sec. 5.2", "5.2", "ImageNet", ("Without REPAIR, aligned midpoints are below 1% "
     "accuracy"), 0.01, "fraction", ("<", 0.01), "aligned midpoint accuracy minus chance (1 / classes)"),
    ("resnet50_imagenet_barrier", "Sec. 5.2", "5.2", "ImageNet", ("REPAIR on blocks cuts the "
     "conv-only barrier by 14% (23.4% → 20.1%)"), 0.14, "fraction", (">", 0.0),
     "1 - B_full / B_conv (accuracy barriers at the midpoint)"),
    ("sec52_reset", "Sec. 5.2", "5.2", "ImageNet", ("REPAIR on conv outputs is mathematically "
     "equivalent to a BatchNorm reset"), 0.0, "fraction", ("=", 0.0, 0.005),
     "midpoint accuracy, REPAIR on convs minus BN reset"),
    ("resnet18_resnet50x2_imagenet", "Fig. 5 right", "5.2", "ImageNet", ("Larger, wider ResNets: "
     "smaller barrier (ResNet18 41.1%, 50 56.5%, 50x2 64.2%)"), None, "slope", ("<", 0.0),
     "slope of the REPAIRed accuracy barrier over log2 parameter count"),
    ("resnet50x2_imagenet_barrier", "Sec. 5.2", "5.2", "ImageNet", ("ResNet50x2 barrier 12.9% vs "
     "20.1% for ResNet50"), -0.072, "fraction", ("<", 0.0),
     "REPAIRed accuracy barrier, double width minus standard width"),
    ("fig8_right", "Fig. 8 right", "5.2", "ImageNet", ("REPAIR beats Ainsworth et al.'s BatchNorm "
     "reset on ImageNet"), None, "fraction", (">", 0.0),
     "midpoint accuracy, full REPAIR minus BN reset"),
    ("fig9", "Fig. 9", "5.2", "ImageNet", ("Aligned first-layer filters: some pairs nearly identical, "
     "some without a match"), None, "ratio", "shown", "shown as images"),
    ("fig11_left", "Fig. 11 left", "5.2", "ImageNet", ("In test loss too, REPAIR lowers the ResNet50 "
     "curve"), None, "loss", (">", 0.0), "midpoint test loss, aligned minus REPAIR"),
    # --- section 5.3: width and depth ---
    ("fig1_right", "Fig. 1 right", "5.3", "several", ("REPAIR lowers the barrier for every "
     "architecture, data set, norm and width"), None, "fraction", (">", 0.0),
     "smallest over the settings of the accuracy barrier, aligned minus REPAIR"),
    ("fig6_left", "Fig. 6 left", "5.3", "MNIST, Fashion-MNIST, SVHN, CIFAR-10", ("10-layer MLPs, "
     "widths 32-2048: REPAIR lowers the barrier"), None, "fraction", (">", 0.0),
     "smallest over widths of the accuracy barrier, aligned minus REPAIR"),
    ("fig6_left_trend", "Fig. 6 left", "5.3", "MNIST, Fashion-MNIST, SVHN, CIFAR-10", ("MLP barriers "
     "fall as width grows"), None, "slope", ("<", 0.0),
     "slope of the REPAIRed accuracy barrier over log2 width"),
    ("fig6_middle", "Fig. 6 middle", "5.3", "MNIST, Fashion-MNIST, SVHN, CIFAR-10", ("ResNet20s, "
     "widths 1-16: REPAIR lowers the barrier"), None, "fraction", (">", 0.0),
     "smallest over widths of the accuracy barrier, aligned minus REPAIR"),
    ("fig6_middle_trend", "Fig. 6 middle", "5.3", "MNIST, Fashion-MNIST, SVHN, CIFAR-10",
     "ResNet20 barriers fall as width grows", None, "slope", ("<", 0.0),
     "slope of the REPAIRed accuracy barrier over log2 width"),
    ("fig6_right", "Fig. 6 right", "5.3", "CIFAR-10", ("VGG11-19: without REPAIR the barrier grows "
     "with depth"), None, "slope", (">", 0.0), "slope of the aligned accuracy barrier over depth"),
    ("fig6_right_flat", "Fig. 6 right", "5.3", "CIFAR-10", ("VGG11-19: with REPAIR the barrier is "
     "roughly flat in depth"), 0.0, "slope", ("=", 0.0, 0.0025),
     "slope of the REPAIRed accuracy barrier over depth (per layer)"),
    ("sec53_mnist", "Sec. 5.3", "5.3", "MNIST", ("On MNIST even narrow networks reach nearly zero "
     "barrier"), None, "fraction", ("<", 0.02), "REPAIRed accuracy barrier of the narrowest MLP"),
    ("sec52_wide_resnet20", "Sec. 5.2", "5.3", "CIFAR-10", ("The widest ResNet20 (final width 1024) "
     "has a barrier of nearly zero"), None, "fraction", ("<", 0.02),
     "REPAIRed accuracy barrier of the widest ResNet20"),
    ("vgg11_cifar10", "Sec. 5.3", "5.3", "CIFAR-10", ("VGG11 midpoint 67.3% → 84.9% (closed form "
     "84.3%; authors' notebook)"), 0.176, "fraction", (">", 0.0), _GAIN + " (VGG11)"),
    ("fig12_left", "Fig. 12 left", "5.3", "MNIST, Fashion-MNIST, SVHN, CIFAR-10", ("Fig. 6 left in "
     "loss: REPAIR lowers the MLP barriers"), None, "loss", (">", 0.0),
     "smallest over widths of the loss barrier, aligned minus REPAIR"),
    ("fig12_middle", "Fig. 12 middle", "5.3", "MNIST, Fashion-MNIST, SVHN, CIFAR-10", ("Fig. 6 middle "
     "in loss: REPAIR lowers the ResNet20 barriers"), None, "loss", (">", 0.0),
     "smallest over widths of the loss barrier, aligned minus REPAIR"),
    ("fig12_right", "Fig. 12 right", "5.3", "CIFAR-10", ("Fig. 6 right in loss: the aligned VGG "
     "barrier grows with depth"), None, "slope", (">", 0.0),
     "slope of the aligned loss barrier over depth"),
    # --- section 5.4: split data ---
    ("sec54_split", "Sec. 5.4", "5.4", "CIFAR-100", ("Two disjoint halves of 25,000 images, 80% of "
     "one half of the classes and 20% of the other"), None, "ratio", "setting",
     "the same split (major = 0.8)"),
    ("sec54_endpoints", "Sec. 5.4", "5.4", "CIFAR-100", ("Each endpoint is worse than the ensemble "
     "and than a network trained on all the data"), None, "loss", (">", 0.0),
     "min(L_A, L_B) - max(L_full, L_ensemble at alpha 0.5) (test loss)"),
    ("fig7", "Fig. 7", "5.4", "CIFAR-100", ("REPAIRed interpolations beat either endpoint in test "
     "loss: the networks merge constructively"), None, "loss", (">", 0.0),
     "min(L_A, L_B) - min over alpha of L_REPAIR(alpha)"),
    ("cifar100_split_loss", "Sec. 5.4", "5.4", "CIFAR-100", ("Best REPAIRed loss 1.30 at alpha 0.3, "
     "vs 1.73 (Ainsworth et al., no REPAIR)"), 0.43, "loss", (">", 0.0),
     "min over alpha of L_aligned - min over alpha of L_REPAIR"),
    ("fig13_left", "Fig. 13 left", "5.4", "CIFAR-100", ("A shift-corrected endpoint beats the best "
     "REPAIRed interpolation"), None, "loss", (">", 0.0),
     "min over alpha of L_REPAIR - min(L_A corrected, L_B corrected)"),
    ("fig13_ensemble", "Fig. 13 left", "5.4", "CIFAR-100", ("The logit ensemble beats the best "
     "REPAIRed interpolation"), None, "loss", (">", 0.0),
     "min over alpha of L_REPAIR - min over alpha of L_ensemble"),
    ("fig13_right", "Fig. 13 right", "5.4", "CIFAR-100", ("Some REPAIRed interpolation beats both "
     "endpoints in accuracy too"), None, "fraction", (">", 0.0),
     "max over alpha of acc_REPAIR - max(acc_A, acc_B)"),
    # --- appendix C: no alignment ---
    ("fig14", "Fig. 14", "C", "CIFAR-10, ImageNet", ("Without alignment REPAIR helps near the "
     "endpoints; a good midpoint needs both"), None, "fraction", (">", 0.0),
     "REPAIRed midpoint accuracy, aligned minus unaligned"),
    ("fig14_ends", "Fig. 14", "C", "CIFAR-10, ImageNet", ("REPAIR alone (unaligned) beats plain "
     "unaligned interpolation near the endpoints"), None, "fraction", (">", 0.0),
     "accuracy at alpha 0.25, unaligned + REPAIR minus unaligned"),
    # --- beyond the paper: its central claims tried on a ViT and a ConvNeXt (the transformer page) ---
    ("beyond_alignment", "Beyond the paper", "transformers", "Fashion-MNIST", ("The paper's premise, tried "
     "on ViTs and ConvNeXts: aligned interpolation beats naive interpolation at the midpoint"), None,
     "fraction", (">", 0.0), "aligned midpoint accuracy minus the naive midpoint's"),
    ("beyond_repair", "Beyond the paper", "transformers", "Fashion-MNIST", ("The paper's main claim, tried "
     "on ViTs and ConvNeXts: REPAIR raises the aligned midpoint's accuracy"), None, "fraction", (">", 0.0),
     _GAIN),
    ("beyond_heads", "Beyond the paper", "transformers", "Fashion-MNIST", ("Attention heads must move as "
     "whole heads: matched as independent units, the aligned ViT B is no longer B"), None, "fraction",
     ("<", 0.0), "test accuracy of B permuted with heads matched as units minus B's own"),
    ("table1", "Table 1", None, "all", ("Training hyperparameters (batch, epochs, learning rate, "
     "decay, augmentation)"), None, "ratio", "setting", "the paper profile keeps them"),
))
CLAIM_KEYS = tuple(c["key"] for c in CLAIMS)
_BY_KEY = {c["key"]: c for c in CLAIMS}


def _cause(key, explains, hypothesis, unit, test, what) -> dict:
    """One row of :data:`CAUSES`: a measured test of why claim ``explains`` comes out differently here."""
    explained = _BY_KEY[explains]
    return {**_item(key, f"Why ours differs: {explained['source']}", explained["section"], explained["data"],
                    hypothesis, None, unit, test, what), "explains": explains}


# Where a claim differs at this project's scale, its page tests a cause: a hypothesis with a measured
# statistic and a test, judged like a claim (reproduced = the hypothesis holds). The records are kept
# apart from the claims' (``causes`` in a results file), so the claim counts stay the paper's.
CAUSES = tuple(_cause(*row) for row in (
    ("fig2_left_depth", "fig2_left", ("Depth: the paper's MLP has 35 hidden layers, ours fewer (10 at the "
     "cpu profile). Over MLPs of increasing depth (page 4's sweep) the aligned midpoint's last-layer "
     "variance ratio falls with depth"),
     "slope", ("<", 0.0), "slope of log10 of the last-layer variance ratio of the aligned midpoint over depth"),
    ("sec42_barrier_width", "sec42_barrier", ("Width: the paper's 1.5% is for a ResNet18 (64-512 channels), "
     "ours for a far narrower network (a ResNet20 x1, 16-64, at the cpu profile). Over widths of that "
     "network the barrier after REPAIR falls as the width grows"),
     "slope", ("<", 0.0), "slope of the REPAIRed accuracy barrier over log2 width"),
    ("resnet20_bn_vs_ln_endpoints", "resnet20_bn_vs_ln", ("The endpoints: ours LayerNorm networks are weaker "
     "than the BatchNorm ones (the paper's reach the same accuracy). Measured from its own endpoints, the "
     "REPAIRed LayerNorm midpoint is within 2 points of the BatchNorm one"), "fraction", ("=", 0.0, 0.02),
     "accuracy barrier after REPAIR (Eq. 1), LayerNorm minus BatchNorm"),
    ("fig6_right_flat_width", "fig6_right_flat", ("Width: our VGGs are narrower than the paper's (a "
     "quarter at the cpu profile). If narrowness makes the REPAIRed barrier grow with depth, VGGs of half "
     "that width again show a steeper growth"), "slope", (">", 0.0),
     "slope of the REPAIRed accuracy barrier over depth (shallowest and deepest VGG), half width minus "
     "the sweep's width"),
    ("sec52_reset_running_stats", "sec52_reset", ("Running statistics: the two corrections coincide only "
     "where each endpoint's BatchNorms normalise with the variance their inputs have at test time. With the "
     "endpoints' running statistics re-measured on training images (a BatchNorm reset of A and of B) "
     "before interpolating, REPAIR of the conv outputs and the reset agree within a point (what remains is the "
     "gap between interpolated standard deviations and the root of interpolated variances)"),
     "fraction", ("=", 0.0, 0.01), "midpoint accuracy, conv-only REPAIR minus BN reset, endpoints reset first"),
    ("fig7_unequal_endpoints", "fig7", ("Unequal endpoints: here the two halves' networks differ in test "
     "loss, and the merge is compared with the better one. Against the line between the endpoints' losses, "
     "some REPAIRed interpolation is lower: the merge gains over its endpoints"),
     "loss", (">", 0.0), "max over interior alpha of (1 - alpha) L_A + alpha L_B - L_REPAIR(alpha)"),
))
CAUSE_KEYS = tuple(c["key"] for c in CAUSES)
_CAUSES = {c["key"]: c for c in CAUSES}


def claim(key: str) -> dict:
    """The :data:`CLAIMS` (or :data:`CAUSES`) row of ``key``; ``KeyError`` naming the valid keys otherwise."""
    if key in _CAUSES:
        return _CAUSES[key]
    if key not in _BY_KEY:
        raise KeyError(f"unknown claim {key!r}; valid keys: {', '.join(CLAIM_KEYS + CAUSE_KEYS)}")
    return _BY_KEY[key]


def section_claims(section: str) -> list:
    """The rows of :data:`CLAIMS` a section's page measures, in the table's order."""
    return [c for c in CLAIMS if c["section"] == section]


def page_of(section) -> str:
    """The book page of a section (its notebook stem), or ``"reproduce"`` for ``None``."""
    return NOTEBOOKS[section] if section is not None else "reproduce"


def figure_panels() -> list:
    """Every ``(figure, panel)`` of :data:`CLAIMS` (``panel`` None: the whole figure), by number and
    panel: the rows of the intro's figure index."""
    found = {(c["figure"], c["panel"]) for c in CLAIMS if c["figure"] is not None}
    order = {None: -1, **{p: i for i, p in enumerate(PANELS)}}
    return sorted(found, key=lambda fp: (fp[0], order[fp[1]]))


def runnable_here(item: dict) -> bool:
    """Whether the paper's data set of ``item`` is on this machine (:data:`HERE`)."""
    return any(name in item["data"] for name in HERE)


def elsewhere_note(item: dict) -> str:
    """One sentence for an item whose data set is not here: the cpu profile runs a Fashion-MNIST
    stand-in, the paper profile the paper's data set ("" for an item that is runnable here)."""
    if runnable_here(item) or item["data"] in ("all", "several"):
        return ""
    return (f"{item['data']} is not on this machine: the cpu profile runs the experiment on Fashion-MNIST, "
            f"`python -m repairlib book --profile paper` on {item['data']}.")


def markdown_table(header, rows) -> str:
    """A Markdown table of ``header`` (n titles) and ``rows`` (each n cells), one line each::

        | h1 | h2 |
        |---|---|
        | a | b |

    Cells are written as given: the callers escape those that may hold ``|`` or a line break.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
