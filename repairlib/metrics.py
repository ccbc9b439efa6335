"""Interpolation barriers (paper Eq. 1) and variance collapse (section 3.1), measured on data."""

import torch
from torch import nn

from repairlib.batchnorm import tracked_batchnorms
from repairlib.correction import CORRECTIONS, corrected
from repairlib.endpoints import EndpointStats, endpoint_stats, measure
from repairlib.evaluation import evaluate
from repairlib.fusion import ChannelAffine
from repairlib.interpolation import interpolate
from repairlib.plumbing import (
    as_input,
    batches,
    check_choice,
    check_finite,
    check_networks,
    eval_mode,
    reusable,
)
from repairlib.spec import trace
from repairlib.stats import Moments


def barrier(model_a: nn.Module, model_b: nn.Module, data, alphas=None, correct: str = "none", stats_data=None,
            scope: str = "conv", stats=None, endpoints=None) -> dict:
    """The interpolation curve and its barrier (Eq. 1), in loss and in accuracy, on ``data``.

    barrier_loss     = max_alpha L(theta_alpha) - ((1 - alpha) L(theta_a) + alpha L(theta_b))
    barrier_accuracy = max_alpha ((1 - alpha) acc(theta_a) + alpha acc(theta_b)) - acc(theta_alpha)

    ``model_b`` should be aligned to ``model_a``. ``alphas`` default to 11 points in [0, 1].
    ``correct``: ``"none"`` (plain interpolation), ``"repair"``, ``"closed_form"`` or ``"reset_bn"``
    (:func:`corrected`, with ``scope``), using ``stats_data`` (training data, default ``data``); REPAIR's
    endpoint statistics are measured once for the whole curve, or passed as ``stats`` (e.g.
    ``align(..., stats_scope=scope).endpoint_stats``).
    The endpoints of Eq. 1 are the given networks, uncorrected; ``endpoints`` = a previous result's
    ``"endpoints"`` on the same ``data`` skips evaluating them again.
    Returns ``dict(alphas, accuracy, loss, endpoints={"a": .., "b": ..}, barrier_loss, barrier_accuracy)``.
    """
    check_choice("correct", correct, CORRECTIONS)
    check_networks(model_a=model_a, model_b=model_b)
    alphas = [i / 10 for i in range(11)] if alphas is None else [float(a) for a in alphas]
    if not alphas:
        raise ValueError("alphas is empty")
    data = reusable(data)
    stats_data = data if stats_data is None else reusable(stats_data)
    if correct in ("repair", "closed_form") and stats is None:
        stats = endpoint_stats(model_a, model_b, stats_data, scope)
    ends = endpoints if endpoints is not None else {"a": evaluate(model_a, data), "b": evaluate(model_b, data)}
    curve = [evaluate(corrected(interpolate(model_a, model_b, a), model_a, model_b, stats_data, a, correct, scope,
                                stats), data) for a in alphas]

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


def value_nodes(model: nn.Module, points) -> dict:
    """``point -> node name`` of ``trace(model)`` that holds the point's final value.

    That is the output of the :class:`~repairlib.fusion.ChannelAffine` an unfused REPAIR inserted
    after the point, if there is one, else the point itself. ``ValueError`` names a missing point.
    """
    gm = trace(model)
    by_name = {n.name: n for n in gm.graph.nodes}
    nodes = {}
    for p in points:
        if p not in by_name:
            raise ValueError(f"the network has no node {p!r} (a correction point of another network?)")
        affine = [u for u in by_name[p].users
                  if u.op == "call_module" and isinstance(gm.get_submodule(u.target), ChannelAffine)]
        nodes[p] = affine[0].name if affine else p
    return nodes


def point_statistics(model: nn.Module, data, points) -> dict:
    """``point -> (mean [C], var [C])``, float64, of each point's final value (:func:`value_nodes`), one pass."""
    points = list(points)
    nodes = value_nodes(model, points)
    (moments,) = measure([model], data, [nodes[p] for p in points])
    return {p: (moments[nodes[p]].mean_x, moments[nodes[p]].var_x) for p in points}


def variance_ratio(model: nn.Module, model_a: nn.Module, model_b: nn.Module, data,
                   stats: EndpointStats = None) -> dict:
    """Variance collapse (section 3.1): ``point -> v_alpha / ((v_a + v_b) / 2)`` in network order.

    v is the sum over a layer's channels of each channel's variance over ``data``, at every scope-"conv"
    correction point (conv/linear preactivations, classifier excluded). v_alpha is measured at the
    point's final value in ``model`` (:func:`value_nodes`: an unfused REPAIRed network shows its
    corrected channels); v_a, v_b at the points of ``model_a`` and of ``model_b`` (aligned to it), or
    taken from ``stats`` (:func:`repairlib.endpoint_stats` of the same endpoints and data, scope
    "conv"), which saves their pass.
    """
    check_networks(model_a=model_a, model_b=model_b)
    check_finite(model, "model")
    data = reusable(data)
    if stats is None:
        stats = endpoint_stats(model_a, model_b, data, "conv")
    mid = point_statistics(model, data, stats.points)
    return {p: float(mid[p][1].sum() / ((stats.var_a[p].sum() + stats.var_b[p].sum()) / 2).clamp_min(1e-30))
            for p in stats.points}


def batchnorm_drift(model: nn.Module, data) -> dict:
    """``BatchNorm name -> Var(x) / running_var`` of each BatchNorm's input ``x`` in eval mode: the median
    over its channels of the variance of ``x`` over ``data`` (per channel, pooled over batch and space)
    divided by the running variance the BatchNorm normalises with. 1 where the running statistics
    describe what the layer sees at test time; far from 1 where they do not (running statistics are
    averages of training batches, taken while the layers before it ran on their own batch statistics).
    REPAIR's goals are the endpoints' measured statistics, a BatchNorm reset re-measures the running
    ones, so drifted BatchNorms separate the two corrections. ``model``'s modes are restored."""
    norms = tracked_batchnorms(model)
    if not norms:
        raise ValueError("model has no BatchNorm with running statistics")
    moments = {n: Moments() for n in norms}
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: moments[n].update(args[0].detach().double()))
             for n, m in norms.items()]
    try:
        with torch.no_grad(), eval_mode(model):
            for x, _ in batches(reusable(data)):
                model(as_input(x, model))
    finally:
        for h in hooks:
            h.remove()
    return {n: float((moments[n].var_x / norms[n].running_var.double().to(moments[n].var_x.device)).median())
            for n in norms}
