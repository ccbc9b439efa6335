"""Evaluation, interpolation barriers (paper Eq. 1) and variance collapse (section 3.1)."""

import torch
import torch.nn.functional as F
from torch import nn

from repairlib.interpolate import interpolate
from repairlib.repair import (
    as_input,
    batches,
    check_networks,
    correction_points,
    endpoint_stats,
    measure,
    repair,
    reset_bn,
)
from repairlib.stats import eval_mode

CORRECTIONS = (None, "none", "reset_bn", "repair")


@torch.no_grad()
def evaluate(model: nn.Module, data) -> dict:
    """``{"accuracy": fraction correct in [0, 1], "loss": mean cross-entropy}`` over ``data``.

    ``data`` yields ``(inputs, targets int64 [B])``; logits ``[B, classes]``. Batches are moved to the
    model's device; the model runs in eval mode, its modes are restored afterwards.
    """
    correct, loss, n = 0, 0.0, 0
    with eval_mode(model):
        for x, y in batches(data, chunk=True):  # CPU image batches in pieces of CPU_CHUNK: same result
            if y is None:
                raise ValueError("evaluate needs (inputs, targets) batches")
            logits = model(as_input(x, model))
            y = y.to(logits.device)
            loss += F.cross_entropy(logits.double(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    return {"accuracy": correct / n, "loss": loss / n}


def _corrected(model_a, model_b, alpha, correction, stats_data, stats, variant, scope):
    """theta_alpha, then the requested statistics correction."""
    model = interpolate(model_a, model_b, alpha)
    if correction == "reset_bn":
        return reset_bn(model, stats_data)
    if correction == "repair":
        return repair(model, model_a, model_b, stats_data, alpha, variant, scope, stats=stats)
    return model


def barrier(model_a: nn.Module, model_b: nn.Module, data, alphas=None, correction=None, stats_data=None,
            variant: str = "exact", scope: str = "conv", stats=None, endpoints=None) -> dict:
    """The interpolation curve and its barrier (Eq. 1), in loss and in accuracy, on ``data``.

    barrier_loss     = max_alpha L(theta_alpha) - ((1 - alpha) L(theta_a) + alpha L(theta_b))
    barrier_accuracy = max_alpha ((1 - alpha) acc(theta_a) + alpha acc(theta_b)) - acc(theta_alpha)

    ``model_b`` should be aligned to ``model_a``. ``alphas`` default to 11 points in [0, 1].
    ``correction``: None (plain interpolation), ``"reset_bn"`` or ``"repair"`` (``variant``, ``scope``),
    using ``stats_data`` (training data, default ``data``); REPAIR's endpoint statistics are measured
    once for the whole curve, or passed as ``stats`` (e.g. ``align(..., stats_scope=scope).endpoint_stats``).
    The endpoints of Eq. 1 are the given networks, uncorrected; ``endpoints`` = a previous result's
    ``"endpoints"`` on the same ``data`` skips evaluating them again.
    Returns ``dict(alphas, accuracy, loss, endpoints={"a": .., "b": ..}, barrier_loss, barrier_accuracy)``.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    check_networks(model_a=model_a, model_b=model_b)
    alphas = [i / 10 for i in range(11)] if alphas is None else [float(a) for a in alphas]
    if not alphas:
        raise ValueError("alphas is empty")
    stats_data = data if stats_data is None else stats_data
    if correction == "repair" and stats is None:
        stats = endpoint_stats(model_a, model_b, stats_data, scope)
    ends = endpoints if endpoints is not None else {"a": evaluate(model_a, data), "b": evaluate(model_b, data)}
    curve = [evaluate(_corrected(model_a, model_b, a, correction, stats_data, stats, variant, scope), data)
             for a in alphas]

    def lerp(key, a):
        return (1 - a) * ends["a"][key] + a * ends["b"][key]

    return {
        "alphas": alphas,
        "accuracy": [c["accuracy"] for c in curve],
        "loss": [c["loss"] for c in curve],
        "endpoints": ends,
        "barrier_loss": max(c["loss"] - lerp("loss", a) for a, c in zip(alphas, curve)),
        "barrier_accuracy": max(lerp("accuracy", a) - c["accuracy"] for a, c in zip(alphas, curve)),
    }


def variance_ratio(model: nn.Module, model_a: nn.Module, model_b: nn.Module, data) -> dict:
    """Variance collapse (section 3.1): ``point -> v_alpha / ((v_a + v_b) / 2)`` in network order.

    v is the sum over a layer's units (channels) of each unit's variance over the data, at every
    scope-"conv" correction point (conv/linear preactivations, classifier excluded); ``model`` is the
    interpolated network, ``model_b`` aligned to ``model_a``. One pass of each network over ``data``.
    """
    check_networks(model=model, model_a=model_a, model_b=model_b)
    points = correction_points(model_a, "conv")
    ends, mid = measure([model_a, model_b, model], data, points)
    ratio = {}
    for p in points:
        v_a, v_b, v = ends[p].var_x.sum(), ends[p].var_y.sum(), mid[p].var_x.sum()
        ratio[p] = float(v / ((v_a + v_b) / 2).clamp_min(1e-30))
    return ratio
