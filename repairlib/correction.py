"""REPAIR: renormalise the channels of an interpolated network (paper section 4, appendix B.2).

Given aligned endpoints ``model_a``, ``model_b`` and ``model`` = (1 - alpha) theta_a + alpha theta_b,
every correction point (:mod:`repairlib.points`) gets a per-channel affine ``y = scale * x + shift``
so that its statistics on the data meet the goals (Eqs. 3, 4)::

    E[y]   = (1 - alpha) E[X_a]   + alpha E[X_b]
    std(y) = (1 - alpha) std(X_a) + alpha std(X_b)

The closed form (4.1) computes the affines from the endpoint statistics alone (Eq. 5); the exact
variant (4.2) measures the interpolated network in one renormalising pass. The affines are then
folded into the weights (:mod:`repairlib.fusion`).
"""

import torch
from torch import fx, nn

from repairlib.batchnorm import reset_bn
from repairlib.endpoints import EndpointStats, endpoint_stats
from repairlib.fusion import (
    absorbable_bn,
    bn_affine,
    channel_affine,
    fuse_affines,
    insert_affines,
    insert_after,
)
from repairlib.plumbing import (
    as_input,
    batches,
    check_alpha,
    check_choice,
    check_finite_stats,
    check_networks,
    eval_mode,
    reusable,
)
from repairlib.points import SCOPES, nodes_named
from repairlib.spec import trace
from repairlib.stats import Moments, scratch_pass

CORRECTIONS = ("repair", "closed_form", "reset_bn", "none")  # the one vocabulary: merge, barrier, the CLI
REL_EPS = 1e-3  # relative epsilon of goal_scale: dead channels are scaled at most 1000x, never NaN
VARIANTS = ("exact", "closed_form")


def goal_scale(goal_std: torch.Tensor, var: torch.Tensor, floor: torch.Tensor = None) -> torch.Tensor:
    """``goal_std / sqrt(var)``, ``[C]``; ``floor = (REL_EPS * goal_std)^2`` is added to the variance so
    that a dead (constant) channel gets a finite scale (at most 1 / REL_EPS), never NaN; goal std 0
    gives 0. Pass ``floor`` (:func:`scale_floor`) to reuse it across many calls with one goal."""
    return goal_std / (var + (scale_floor(goal_std) if floor is None else floor)).sqrt()


def scale_floor(goal_std: torch.Tensor) -> torch.Tensor:
    """The variance floor of :func:`goal_scale`: ``(REL_EPS * goal_std)^2`` (plus 1e-30 against 0 / 0)."""
    return (REL_EPS * goal_std) ** 2 + 1e-30


def closed_form_affines(stats: EndpointStats, alpha: float) -> dict:
    """Section 4.1: ``point -> (scale [C], shift [C])`` without a pass through the interpolated net.

    Var(X_alpha) = (1-a)^2 Var(X_a) + a^2 Var(X_b) + 2a(1-a) Cov(X_a, X_b)   (Eq. 5)
    scale = std goal / std(X_alpha) (see :func:`goal_scale`); shift such that E = the mean goal, assuming
    E[X_alpha] = (1-a) E[X_a] + a E[X_b] (exact in the first layer, approximate deeper).
    """
    affines, cov = {}, stats.covariances()
    for p, (mean, std) in stats.targets(alpha).items():
        var = ((1 - alpha) ** 2 * stats.var_a[p] + alpha ** 2 * stats.var_b[p]
               + 2 * alpha * (1 - alpha) * cov[p]).clamp_min(0)
        scale = goal_scale(std, var)
        affines[p] = (scale, mean - scale * mean)
    return affines


class _Renormalise(nn.Module):
    """BatchNorm in train mode with fixed affine goals (appendix B.2's ResetLayer), that also pools
    the raw statistics of its input. ``[B, C, *] -> [B, C, *]``, each channel's batch statistics set
    to ``(mean, std)`` (float64 ``[C]`` goals); with ``then=(scale, shift)`` (a following eval BatchNorm
    absorbed into this node) that affine is applied too, in the same pass over ``x``."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, then=None):
        super().__init__()
        self.mean, self.std = mean.double(), std.double()
        self.floor = scale_floor(self.std)  # computed once for every batch
        self.then = None if then is None else tuple(t.detach().double() for t in then)
        self.moments = Moments()

    def _to(self, device):
        self.mean, self.std, self.floor = (t.to(device) for t in (self.mean, self.std, self.floor))
        self.then = None if self.then is None else tuple(t.to(device) for t in self.then)

    def forward(self, x):
        batch_mean, batch_var = self.moments.update_batch(x)  # pooled, and this batch's [C] stats
        if self.std.device != batch_var.device:
            self._to(batch_var.device)
        scale = goal_scale(self.std, batch_var, self.floor)
        shift = self.mean - scale * batch_mean
        if self.then is not None:
            scale, shift = self.then[0] * scale, torch.addcmul(self.then[1], self.then[0], shift)
        return channel_affine(x, scale, shift)


def _graph_of(model: nn.Module) -> fx.GraphModule:
    """A GraphModule with a graph of its own that shares ``model``'s submodules and parameters (no copy
    of the weights); editing its graph or adding submodules to it leaves ``model`` as it is."""
    gm = trace(model)
    if gm is not model:
        return gm  # a fresh trace
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    return fx.GraphModule(gm, graph)


@torch.no_grad()
def exact_affines(model: nn.Module, data, targets: dict) -> dict:
    """Section 4.2: ``point -> (scale [C], shift [C])`` from ONE pass of the interpolated net.

    During the pass (in eval mode) every point's output is renormalised per batch to its goals, so
    deeper points see corrected inputs, while the raw pooled statistics of every point are accumulated;
    then scale = std goal / std(X) (:func:`goal_scale`), shift = mean goal - scale E[X]. A BatchNorm
    right after a point is applied by the renormalising node itself (one pass over the values, not two).
    ``model`` is not modified (the pass runs on a graph of its own sharing the weights).
    """
    gm = _graph_of(model)
    renorms = {}
    for node in nodes_named(gm, targets):
        bn_node = absorbable_bn(gm, node, targets)
        then = bn_affine(gm.get_submodule(bn_node.target)) if bn_node is not None else None
        renorms[node.name] = _Renormalise(*targets[node.name], then=then)
        insert_after(gm, node, renorms[node.name], "repair_measure")
        if bn_node is not None:  # the renormalising node now applies the BatchNorm
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
    gm.recompile()
    with eval_mode(gm), scratch_pass():
        for x, _ in batches(reusable(data)):
            gm(as_input(x, gm))
    means = {p: r.moments.mean_x for p, r in renorms.items()}
    variances = {p: r.moments.var_x for p, r in renorms.items()}
    check_finite_stats(means, "interpolated network's means")
    check_finite_stats(variances, "interpolated network's variances")
    affines = {}
    for p, (mean, std) in targets.items():
        scale = goal_scale(std.to(variances[p]), variances[p])
        affines[p] = (scale, mean.to(scale) - scale * means[p])
    return affines


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
    if variant == "exact":
        affines = exact_affines(model, data, stats.targets(alpha))
    else:
        affines = closed_form_affines(stats, alpha)
    return fuse_affines(model, affines) if fuse else insert_affines(model, affines)


def corrected(model: nn.Module, model_a: nn.Module, model_b: nn.Module, data, alpha: float, correct: str,
              scope: str = "conv", stats: EndpointStats = None) -> nn.Module:
    """The interpolated ``model`` (= theta_alpha of ``model_a`` and the aligned ``model_b``) after the
    correction ``correct``: ``"repair"`` (exact REPAIR), ``"closed_form"`` (its closed form),
    ``"reset_bn"`` (BatchNorm statistics reset, in place) or ``"none"`` (``model`` as it is).
    ``stats``: REPAIR's endpoint statistics, if already measured."""
    check_choice("correct", correct, CORRECTIONS)
    if correct == "reset_bn":
        return reset_bn(model, data)
    if correct in ("repair", "closed_form"):
        variant = "exact" if correct == "repair" else "closed_form"
        return repair(model, model_a, model_b, data, alpha, variant, scope, stats=stats)
    return model
