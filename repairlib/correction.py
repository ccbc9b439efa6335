"""REPAIR: renormalise the channels of an interpolated network (paper section 4, appendix B.2).

Given aligned endpoints ``model_a``, ``model_b`` and ``model`` = (1 - alpha) theta_a + alpha theta_b,
every correction point (:mod:`repairlib.points`) gets a per-channel affine ``y = scale * x + shift``
so that its statistics on the data meet the goals (Eqs. 3, 4)::

    E[y]   = (1 - alpha) E[X_a]   + alpha E[X_b]
    std(y) = (1 - alpha) std(X_a) + alpha std(X_b)

The closed form (4.1) computes the affines from the endpoint statistics alone (Eq. 5); the exact
variant (4.2) measures the interpolated network in one renormalising pass. The affines are then
folded into the weights (:mod:`repairlib.fusion`).

For N aligned networks averaged with weights w_i (:func:`repair_many`) the goals are the weighted
means ``E[y] = sum_i w_i E[X_i]``, ``std(y) = sum_i w_i std(X_i)`` (:meth:`NetworkStats.targets`).
``variant="rescale"`` corrects only the standard deviation (:func:`rescale_affines`): every channel
keeps the mean it has in the interpolated network.
"""

import warnings

import torch
from torch import fx, nn

from repairlib.batchnorm import reset_bn
from repairlib.endpoints import EndpointStats, NetworkStats, endpoint_stats, network_stats, network_stats_of
from repairlib.fusion import (
    absorbable_bn,
    bn_affine,
    channel_affine,
    fuse_affines,
    insert_affines,
    insert_after,
)
from repairlib.interpolation import check_weights
from repairlib.plumbing import (
    as_input,
    batches,
    check_alpha,
    check_choice,
    check_finite_stats,
    check_networks,
    eval_mode,
    first_inputs,
    reusable,
)
from repairlib.points import SCOPES, nodes_named
from repairlib.spec import channel_axes, layer_channel_axis, trace
from repairlib.stats import Moments, scratch_pass

CORRECTIONS = ("repair", "rescale", "closed_form", "reset_bn", "none")  # the one vocabulary: merge, barrier, the CLI
REL_EPS = 1e-3  # relative epsilon of goal_scale: dead channels are scaled at most 1000x, never NaN
VARIANTS = ("exact", "closed_form", "rescale")
VARIANT_OF = {"repair": "exact", "rescale": "rescale", "closed_form": "closed_form"}  # correction -> variant


def goal_scale(goal_std: torch.Tensor, var: torch.Tensor, floor: torch.Tensor = None) -> torch.Tensor:
    """``goal_std / sqrt(var)``, ``[C]``, for every channel whose variance exceeds ``floor =
    (REL_EPS * goal_std)^2``; so no gain exceeds 1 / REL_EPS = 1000. A channel at or below the floor
    (dead or constant on the data: its std below 1/1000 of its goal) has no defined scale and keeps
    gain 1 (:func:`warn_unscaled` counts them). Pass ``floor`` (:func:`scale_floor`) to reuse it."""
    floor = scale_floor(goal_std) if floor is None else floor
    return torch.where(var > floor, goal_std / var.clamp_min(floor).sqrt(), torch.ones_like(var))


def warn_unscaled(variances: dict, targets: dict) -> int:
    """Warn once, with their count, about the channels :func:`goal_scale` leaves at gain 1 (variance at
    or below the floor of their goal std): ``variances``, ``targets``: ``point -> [C]`` / ``(mean, std)``.
    Returns the count."""
    dead = {p: int((variances[p] <= scale_floor(std.to(variances[p]))).sum()) for p, (_, std) in targets.items()}
    total = sum(dead.values())
    if total:
        worst = max(dead, key=dead.get)
        warnings.warn(f"REPAIR left {total} channel(s) at {sum(n > 0 for n in dead.values())} point(s) unscaled "
                      f"(gain 1; most at {worst!r}: {dead[worst]}): their variance on the statistics data is "
                      f"below (1e-3 x goal std)^2, i.e. they are dead or constant there; more or other "
                      "statistics data may help", stacklevel=3)
    return total


def scale_floor(goal_std: torch.Tensor) -> torch.Tensor:
    """The variance floor of :func:`goal_scale`: ``(REL_EPS * goal_std)^2`` (plus 1e-30 against 0 / 0)."""
    return (REL_EPS * goal_std) ** 2 + 1e-30


def closed_form_affines(stats: EndpointStats, alpha: float) -> dict:
    """Section 4.1: ``point -> (scale [C], shift [C])`` without a pass through the interpolated net.

    Var(X_alpha) = (1-a)^2 Var(X_a) + a^2 Var(X_b) + 2a(1-a) Cov(X_a, X_b)   (Eq. 5)
    scale = std goal / std(X_alpha) (see :func:`goal_scale`); shift such that E = the mean goal, assuming
    E[X_alpha] = (1-a) E[X_a] + a E[X_b] (exact in the first layer, approximate deeper).
    :func:`weighted_closed_form_affines` of the two networks, weights ``(1 - a, a)``.
    """
    return weighted_closed_form_affines(network_stats_of(stats), (1 - alpha, alpha))


def weighted_closed_form_affines(stats: NetworkStats, weights) -> dict:
    """Section 4.1 for N networks averaged with ``weights``: ``point -> (scale [C], shift [C])``, no pass.

    Var(sum_i w_i X_i) = sum_i w_i^2 Var(X_i) + 2 sum_{i<j} w_i w_j Cov(X_i, X_j)   (Eq. 5, N networks)
    scale = std goal / std(sum_i w_i X_i) (:func:`goal_scale`); shift = mean goal - scale * mean goal,
    assuming E[sum_i w_i X_i] = the mean goal (exact in the first layer, approximate deeper).
    """
    affines, cov, w, predicted = {}, stats.covariances(), [float(x) for x in weights], {}
    targets = stats.targets(w)
    for p, (mean, std) in targets.items():
        var = w[0] ** 2 * stats.variances[0][p]
        for i in range(1, len(w)):
            var = var + w[i] ** 2 * stats.variances[i][p]
        for (i, j), pair_cov in cov.items():
            var = var + 2 * w[i] * w[j] * pair_cov[p]
        predicted[p] = var.clamp_min(0)
        scale = goal_scale(std, predicted[p])
        affines[p] = (scale, mean - scale * mean)
    warn_unscaled(predicted, targets)
    return affines


class _Renormalise(nn.Module):
    """BatchNorm in train mode with fixed affine goals (appendix B.2's ResetLayer), that also pools
    the raw statistics of its input. ``[B, C, *] -> [B, C, *]``, each channel's batch statistics set
    to ``(mean, std)`` (float64 ``[C]`` goals; ``mean=None`` keeps each batch's own mean, the rescale
    variant: ``y = scale (x - E_batch x) + E_batch x``); with ``then=(scale, shift)`` (a following eval
    BatchNorm absorbed into this node) that affine is applied too, in the same pass over ``x``."""

    def __init__(self, mean, std: torch.Tensor, then=None, axis: int = 1):
        super().__init__()
        self.mean, self.std = None if mean is None else mean.double(), std.double()
        self.floor = scale_floor(self.std)  # computed once for every batch
        self.then = None if then is None else tuple(t.detach().double() for t in then)
        self.axis = axis
        self.moments = Moments(axis=axis)

    def _to(self, device):
        self.std, self.floor = self.std.to(device), self.floor.to(device)
        self.mean = None if self.mean is None else self.mean.to(device)
        self.then = None if self.then is None else tuple(t.to(device) for t in self.then)

    def forward(self, x):
        batch_mean, batch_var = self.moments.update_batch(x)  # pooled, and this batch's [C] stats
        if self.std.device != batch_var.device:
            self._to(batch_var.device)
        scale = goal_scale(self.std, batch_var, self.floor)
        shift = (batch_mean if self.mean is None else self.mean) - scale * batch_mean
        if self.then is not None:
            scale, shift = self.then[0] * scale, torch.addcmul(self.then[1], self.then[0], shift)
        return channel_affine(x, scale, shift, self.axis)


def _graph_of(model: nn.Module) -> fx.GraphModule:
    """A GraphModule with a graph of its own that shares ``model``'s submodules and parameters (no copy
    of the weights); editing its graph or adding submodules to it leaves ``model`` as it is."""
    gm = trace(model)
    if gm is not model:
        return gm  # a fresh trace
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    return fx.GraphModule(gm, graph)


def exact_affines(model: nn.Module, data, targets: dict) -> dict:
    """Section 4.2: ``point -> (scale [C], shift [C])`` from ONE pass of the interpolated net.

    During the pass (in eval mode) every point's output is renormalised per batch to its goals, so
    deeper points see corrected inputs, while the raw pooled statistics of every point are accumulated;
    then scale = std goal / std(X) (:func:`goal_scale`), shift = mean goal - scale E[X]. A BatchNorm
    right after a point is applied by the renormalising node itself (one pass over the values, not two).
    ``model`` is not modified (the pass runs on a graph of its own sharing the weights).
    """
    means, variances = renormalising_pass(model, data, targets)
    affines = {}
    for p, (mean, std) in targets.items():
        scale = goal_scale(std.to(variances[p]), variances[p])
        affines[p] = (scale, mean.to(scale) - scale * means[p])
    warn_unscaled(variances, targets)
    return affines


def rescale_affines(model: nn.Module, data, targets: dict) -> dict:
    """REPAIR's exact variant for the standard deviation only: ``point -> (scale [C], shift [C])``, one pass.

    ``targets``: ``point -> (mean, std)`` goals, of which only ``std`` is used. During the pass every
    channel is rescaled about its own batch mean to the goal std, ``y = s_batch (x - E_batch x) +
    E_batch x`` with ``s_batch = std goal / std_batch(x)``, so deeper points see corrected inputs; then::

        scale = std goal / std(X),   shift = (1 - scale) E[X]        i.e.  y = scale (X - E[X]) + E[X]

    with E[X], std(X) pooled over the pass: std(y) = the std goal and E[y] = E[X], the mean the channel
    has in the interpolated network with the earlier channels rescaled (in the first layer: exactly the
    interpolated network's mean).
    """
    means, variances = renormalising_pass(model, data, {p: (None, std) for p, (_, std) in targets.items()})
    affines = {}
    for p, (_, std) in targets.items():
        scale = goal_scale(std.to(variances[p]), variances[p])
        affines[p] = (scale, (1 - scale) * means[p])
    warn_unscaled(variances, targets)
    return affines


@torch.no_grad()
def renormalising_pass(model: nn.Module, data, targets: dict) -> tuple:
    """The one pass of the exact variants: ``(point -> E[X] [C], point -> Var(X) [C])``, float64.

    ``targets``: ``point -> (mean or None, std)``; every point's output is renormalised per batch to
    them (:class:`_Renormalise`; ``None`` keeps the batch mean), in eval mode, while the raw pooled
    statistics of its input X are accumulated. ``model`` is not modified.
    """
    data = reusable(data)
    axes = point_axes(model, list(targets), data)
    gm = _graph_of(model)
    renorms = {}
    for node in nodes_named(gm, targets):
        bn_node = absorbable_bn(gm, node, targets)
        then = bn_affine(gm.get_submodule(bn_node.target)) if bn_node is not None else None
        renorms[node.name] = _Renormalise(*targets[node.name], then=then, axis=axes[node.name])
        insert_after(gm, node, renorms[node.name], "repair_measure")
        if bn_node is not None:  # the renormalising node now applies the BatchNorm
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
    gm.recompile()
    with eval_mode(gm), scratch_pass():
        for x, _ in batches(data):
            gm(as_input(x, gm))
    means = {p: r.moments.mean_x for p, r in renorms.items()}
    variances = {p: r.moments.var_x for p, r in renorms.items()}
    check_finite_stats(means, "interpolated network's means")
    check_finite_stats(variances, "interpolated network's variances")
    return means, variances


def repair(model: nn.Module, model_a: nn.Module, model_b: nn.Module, data, alpha: float, variant: str = "exact",
           scope: str = "conv", stats: EndpointStats = None, extrapolate: bool = False,
           fuse: bool = True) -> nn.Module:
    """REPAIR the interpolated ``model`` = (1 - alpha) theta_a + alpha theta_b (paper section 4).

    ``model_b`` must be aligned to ``model_a``; ``data`` yields ``(inputs, targets)`` training batches
    (about 5,000 examples suffice). ``variant``: ``"exact"`` (4.2, one pass of ``model``) or
    ``"closed_form"`` (4.1, no pass). ``scope``: ``"conv"`` or ``"all"`` (:mod:`repairlib.points`).
    ``stats``: :func:`endpoint_stats` measured once and reused across alphas (``data`` may then be
    ``None`` for the closed form). ``fuse=False`` returns the unfused network (:func:`insert_affines`).
    Returns a new network; no input is modified.

    Cost: without ``stats``, one pass of ``model_a`` and ``model_b`` over ``data`` for the endpoint
    statistics (pass ``stats=align(..., stats_scope=scope).endpoint_stats`` to reuse alignment's pass,
    or one :func:`endpoint_stats` for many alphas); the exact variant adds one pass of ``model``.
    ``data`` is read in a fixed order, so the result does not depend on earlier passes over it.
    """
    alpha = check_alpha(alpha, extrapolate)
    check_choice("variant", variant, VARIANTS)
    check_choice("scope", scope, SCOPES)
    check_networks(model=model, model_a=model_a, model_b=model_b)
    data = None if data is None else reusable(data)
    if stats is None:
        stats = endpoint_stats(model_a, model_b, data, scope)
    elif stats.scope != scope:
        raise ValueError(f"stats were measured for scope {stats.scope!r}, not {scope!r}")
    return renormalised(model, data, network_stats_of(stats), (1 - alpha, alpha), variant, fuse)


def repair_many(model: nn.Module, models: list, data, weights=None, variant: str = "exact", scope: str = "conv",
                stats: NetworkStats = None, fuse: bool = True) -> nn.Module:
    """REPAIR the average ``model`` = sum_i w_i theta_i of the aligned ``models`` (N >= 1 networks).

    The goals generalise Eqs. 3, 4: ``E[y] = sum_i w_i E[X_i]``, ``std(y) = sum_i w_i std(X_i)``
    (:meth:`NetworkStats.targets`). ``weights``: non-negative, normalised to sum 1 (default uniform);
    ``variant``, ``scope``, ``fuse`` as in :func:`repair` (with two networks and weights ``(1 - alpha,
    alpha)`` this is :func:`repair`). ``stats``: :func:`network_stats` of ``models``, else measured here
    in one pass of all of them. Returns a new network; no input is modified.
    """
    check_choice("variant", variant, VARIANTS)
    check_choice("scope", scope, SCOPES)
    weights = check_weights(weights, len(models))
    check_networks(model=model, **{f"models[{i}]": m for i, m in enumerate(models)})
    data = None if data is None else reusable(data)
    if stats is None:
        stats = network_stats(models, data, scope, cov=variant == "closed_form")
    elif stats.scope != scope:
        raise ValueError(f"stats were measured for scope {stats.scope!r}, not {scope!r}")
    return renormalised(model, data, stats, weights, variant, fuse)


def renormalised(model: nn.Module, data, stats: NetworkStats, weights, variant: str, fuse: bool = True) -> nn.Module:
    """``model`` with every point's channels corrected to the goals of ``stats`` at ``weights``: the
    affines of ``variant`` (:func:`exact_affines`, :func:`rescale_affines` or
    :func:`weighted_closed_form_affines`), fused into the weights (``fuse``) or inserted after the points."""
    if variant == "exact":
        affines = exact_affines(model, data, stats.targets(weights))
    elif variant == "rescale":
        affines = rescale_affines(model, data, stats.targets(weights))
    else:
        affines = weighted_closed_form_affines(stats, weights)
    axes = point_axes(model, list(affines), data)
    return fuse_affines(model, affines, axes) if fuse else insert_affines(model, affines, axes)


def point_axes(model: nn.Module, points: list, data=None) -> dict:
    """``point -> channel axis`` (1 for ``[N, C, *]``, -1 or the last for ``[N, T, D]`` tokens) of
    REPAIR's points: a layer's own (:func:`repairlib.spec.layer_channel_axis`, no data read), else
    :func:`repairlib.spec.channel_axes` on ``data``'s first batch (the graph alone when ``data`` is
    None)."""
    gm = trace(model)
    nodes = {n.name: n for n in gm.graph.nodes}
    axes = {p: layer_channel_axis(gm, nodes[p]) if p in nodes else 1 for p in points}
    if any(a is None for a in axes.values()):  # residual-stream points: the analysis needs a batch
        found = channel_axes(model, None if data is None else first_inputs(reusable(data)))
        axes = {p: found.get(p, 1) if a is None else a for p, a in axes.items()}
    return axes


def corrected(model: nn.Module, model_a: nn.Module, model_b: nn.Module, data, alpha: float, correct: str,
              scope: str = "conv", stats: EndpointStats = None) -> nn.Module:
    """The interpolated ``model`` (= theta_alpha of ``model_a`` and the aligned ``model_b``) after the
    correction ``correct``: ``"repair"`` (exact REPAIR), ``"rescale"`` (exact REPAIR of the standard
    deviation only, :func:`rescale_affines`), ``"closed_form"`` (REPAIR's closed form), ``"reset_bn"``
    (BatchNorm statistics reset, in place) or ``"none"`` (``model`` as it is). ``stats``: REPAIR's
    endpoint statistics, if already measured. (:func:`corrected_many` with weights ``(1 - alpha, alpha)``.)"""
    check_choice("correct", correct, CORRECTIONS)
    if correct in VARIANT_OF:
        alpha = check_alpha(alpha)
    stats = None if stats is None else network_stats_of(stats)
    return corrected_many(model, [model_a, model_b], data, (1 - alpha, alpha), correct, scope, stats)


def corrected_many(model: nn.Module, models: list, data, weights, correct: str, scope: str = "conv",
                   stats: NetworkStats = None) -> nn.Module:
    """The average ``model`` = sum_i w_i theta_i of the aligned ``models`` after the correction
    ``correct`` (one of :data:`CORRECTIONS`, as in :func:`corrected`); ``stats``: their
    :class:`NetworkStats`, if already measured."""
    check_choice("correct", correct, CORRECTIONS)
    if correct == "reset_bn":
        return reset_bn(model, data)
    if correct in VARIANT_OF:
        return repair_many(model, models, data, weights, VARIANT_OF[correct], scope, stats=stats)
    return model
