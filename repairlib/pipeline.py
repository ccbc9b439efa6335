"""The common case in one call: align, interpolate and correct two trained networks."""

from torch import nn

from repairlib.alignment import align as align_units
from repairlib.alignment import permute
from repairlib.correction import CORRECTIONS, corrected
from repairlib.interpolation import interpolate
from repairlib.plumbing import check_alpha, check_choice, check_networks, reusable
from repairlib.points import SCOPES

ALIGNMENTS = ("activation", "weight", "none")


def merge(model_a: nn.Module, model_b: nn.Module, data, alpha: float = 0.5, *, align: str = "activation",
          correct: str = "repair", scope: str = "conv") -> nn.Module:
    """theta_alpha = (1 - alpha) theta_a + alpha theta_b' with B aligned to A (B' = P(B)), corrected.

    ``data``: training batches ``(inputs, targets)`` for the statistics (about 5,000 images suffice),
    read in a fixed order. ``align``: ``"activation"`` (correlation matching, Eq. 2), ``"weight"``
    (weight matching, data-free) or ``"none"``. ``correct``: ``"repair"`` (exact REPAIR, section 4.2),
    ``"closed_form"`` (4.1), ``"reset_bn"`` (BatchNorm statistics reset) or ``"none"``. ``scope``: where
    REPAIR corrects (:mod:`repairlib.points`). Returns a new network (of the input's class when every
    correction folds into its layers); neither input is modified.

    The fastest path: activation matching gathers REPAIR's endpoint statistics in its own pass (one
    forward pass of A and B), and exact REPAIR adds one renormalising pass of the merged network, so
    the whole call costs about three forward passes over ``data``.
    """
    check_choice("align", align, ALIGNMENTS)
    check_choice("correct", correct, CORRECTIONS)
    check_choice("scope", scope, SCOPES)
    alpha = check_alpha(alpha)
    check_networks(model_a=model_a, model_b=model_b)
    data = reusable(data)
    stats = None
    if align != "none":
        repairing = correct in ("repair", "closed_form")
        perms = align_units(model_a, model_b, data, method=align, stats_scope=scope if repairing else None,
                            stats_cov=correct == "closed_form")  # the exact variant needs no covariance
        model_b, stats = permute(model_b, perms), perms.endpoint_stats
    return corrected(interpolate(model_a, model_b, alpha), model_a, model_b, data, alpha, correct, scope, stats)
