"""REPAIR: renormalise the channels of an interpolated network (paper section 4, appendix B.2).

Given aligned endpoints ``model_a``, ``model_b`` and ``model`` = (1 - alpha) theta_a + alpha theta_b,
every *correction point* (a channel-carrying value in the graph) gets a per-channel affine
``y = scale * x + shift`` so that its statistics on the data meet the goals (Eqs. 3, 4)::

    E[y]   = (1 - alpha) E[X_a]   + alpha E[X_b]
    std(y) = (1 - alpha) std(X_a) + alpha std(X_b)

Correction points are found in the torch.fx graph, with no per-architecture code:

- scope ``"conv"``: the output (preactivation) of every Conv1d/2d/3d and Linear call except the
  classifier (a layer whose output reaches the network output without passing another conv/linear);
- scope ``"all"`` adds the residual-block outputs: every addition of two tensors of equal shape (before
  the classifier); when its only user is an element-wise activation, the point is that activation's
  output.

Channels are dim 1 (``[B, C]`` or ``[B, C, *spatial]``); every spatial position is a sample.

The affines are then fused (:func:`fuse_affines`): a conv/linear point is folded into that layer's
weight and bias, or, for a bias-free layer followed only by an affine BatchNorm, into that BatchNorm's
weight and bias (state_dict keys unchanged; exact for any scale, unlike a running-statistics fold).
Residual-stream points cannot be folded in general (an identity shortcut carries the stream); there,
and only there (or at a layer module called more than once), a :class:`ChannelAffine` node is inserted
into an fx GraphModule.
"""

import copy
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from repairlib.interpolate import check_alpha, check_finite, check_same_architecture
from repairlib.spec import trace
from repairlib.stats import Moments, capture, eval_mode, scratch_pass

REL_EPS = 1e-3  # relative epsilon of goal_scale: dead channels are scaled at most 1000x, never NaN
VARIANTS = ("exact", "closed_form")
SCOPES = ("conv", "all")

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
                       nn.Tanh, nn.Sigmoid)
_ACTIVATION_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.gelu,
                         F.silu, F.mish, F.hardswish, torch.tanh, torch.sigmoid}
_ACTIVATION_METHODS = {"relu", "relu_", "tanh", "sigmoid"}


# ---------------------------------------------------------------- data and checks
def _dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def as_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Move a batch to ``model``'s device, and float inputs to its dtype (float64 models work)."""
    p = next(model.parameters(), None)
    if p is None:
        return x
    return x.to(p.device, _dtype(model) if x.is_floating_point() else x.dtype)


# Images per forward pass on a CPU, for passes whose result does not depend on the batching
# (evaluation, pooled moments): a conv net's activations for 100 images stay in cache, and ResNet20 x1
# runs 1.2x (2 threads) to 1.6x (1 thread) faster than with batches of 500.
CPU_CHUNK = 100


def batches(data, chunk: bool = False):
    """Yield ``(inputs, targets or None)`` of every batch; ``ValueError`` if there is none.

    ``chunk=True`` splits batches of images ``[B, C, H, W]`` held on the CPU into pieces of
    ``CPU_CHUNK`` images. Only for passes that do not depend on the batching: never for BatchNorm
    resets or REPAIR's per-batch renormalisation.
    """
    if data is None:
        raise ValueError("no data given: pass an iterable of (inputs, targets) batches")
    empty = True
    for batch in data:
        empty = False
        if isinstance(batch, (tuple, list)):
            x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            x, y = batch, None
        if chunk and isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dim() == 4 and len(x) > CPU_CHUNK:
            for i in range(0, len(x), CPU_CHUNK):
                yield x[i:i + CPU_CHUNK], (y[i:i + CPU_CHUNK] if y is not None else None)
        else:
            yield x, y
    if empty:
        raise ValueError("the data yielded no batches")


def first_inputs(data) -> torch.Tensor:
    for x, _ in batches(data):
        return x


def _check_choice(what, value, choices):
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_networks(**models):
    """``name=network``: same architecture (``ValueError`` naming the first mismatch), finite weights."""
    nets = list(models.values())
    for m in nets[1:]:
        check_same_architecture(nets[0], m)
    for name, m in models.items():
        check_finite(m, name)


def _check_finite_stats(values: dict, what: str):
    for name, t in values.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"{what} at {name!r} are NaN or Inf (check the data and the networks)")


# ---------------------------------------------------------------- correction points
def _module(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_layer(gm, node) -> bool:
    return isinstance(_module(gm, node), _LAYERS)


def _is_activation(gm, node) -> bool:
    return (isinstance(_module(gm, node), _ACTIVATION_MODULES)
            or node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS
            or node.op == "call_method" and node.target in _ACTIVATION_METHODS)


def _head(gm) -> set:
    """Nodes whose value reaches the output without passing a conv/linear: the classifier and after."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    seen, stack = set(), list(output.all_input_nodes)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            if not _is_layer(gm, node):
                stack.extend(node.all_input_nodes)
    return seen


def _is_residual_add(node) -> bool:
    """An addition of two tensors of equal shape (needs ``ShapeProp`` metadata)."""
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS
              or node.op == "call_method" and node.target in _ADD_METHODS)
    if not is_add or len(node.args) < 2 or not all(isinstance(a, fx.Node) for a in node.args[:2]):
        return False
    shapes = [getattr(a.meta.get("tensor_meta"), "shape", None) for a in node.args[:2]]
    return shapes[0] is not None and shapes[0] == shapes[1]


def _block_output(gm, add):
    """The activation that is the add's only user (the block output), else the add itself."""
    users = list(add.users)
    return users[0] if len(users) == 1 and _is_activation(gm, users[0]) else add


def correction_points(model: nn.Module, scope: str = "conv", example: torch.Tensor = None) -> list:
    """Node names (of ``repairlib.spec.trace(model)``) of the values REPAIR corrects, in network order.

    ``example`` (a batch of inputs) is needed for scope ``"all"``, to tell residual additions (two
    tensors of equal shape) from broadcasting ones such as ``x + bias``.
    """
    _check_choice("scope", scope, SCOPES)
    gm = trace(model)
    head = _head(gm)
    points = {n for n in gm.graph.nodes if _is_layer(gm, n)} - head
    if scope == "all":
        if example is None:
            raise ValueError("scope 'all' needs an example input batch to find residual additions")
        with eval_mode(gm), torch.no_grad():
            ShapeProp(gm).propagate(as_input(example[:2], gm))
        points |= {_block_output(gm, n) for n in gm.graph.nodes if _is_residual_add(n)} - head
    return [n.name for n in gm.graph.nodes if n in points]


def _nodes(gm, names) -> list:
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"the network has no correction point {missing[0]!r} (statistics of another network?)")
    return [by_name[name] for name in names]


# ---------------------------------------------------------------- endpoint statistics
@dataclass
class EndpointStats:
    """Per-channel statistics of every correction point in both aligned endpoints.

    Each field maps a point name to a float64 ``[C]`` tensor: means, population variances, and the
    covariance ``Cov(X_a, X_b)`` of corresponding channels (paper Eq. 5), pooled over all samples
    (examples times spatial positions). ``cov_ab`` is None when it was not measured
    (``align(..., stats_cov=False)``): the exact variant does not need it.
    """

    scope: str
    mean_a: dict
    var_a: dict
    mean_b: dict
    var_b: dict
    cov_ab: dict

    @property
    def points(self) -> list:
        return list(self.mean_a)

    def covariances(self) -> dict:
        """``cov_ab``, or a clear error when these statistics were gathered without it."""
        if self.cov_ab is None:
            raise ValueError("these endpoint statistics have no Cov(X_a, X_b) (the closed form and Eq. 5 "
                             "need it): gather them with align(..., stats_cov=True) or endpoint_stats()")
        return self.cov_ab

    def targets(self, alpha: float) -> dict:
        """``point -> (mean [C], std [C])`` goals at ``alpha`` (Eqs. 3, 4; std clamped at 0 when extrapolating)."""
        goals = {}
        for p in self.points:
            mean = (1 - alpha) * self.mean_a[p] + alpha * self.mean_b[p]
            std = (1 - alpha) * self.var_a[p].sqrt() + alpha * self.var_b[p].sqrt()
            goals[p] = (mean, std.clamp_min(0))
        return goals


@torch.no_grad()
def measure(models: list, data, points: list) -> list:
    """One pass over ``data``, every model run on every batch: ``[{point: Moments}]`` per pair.

    ``models`` are taken in pairs ``(x, y)``; a lone last model is measured on its own. Each
    :class:`repairlib.stats.Moments` holds the pooled float64 moments, with the channel-wise cross
    moment of a pair (``cov_xy``).
    """
    probes = [capture(m, points, channels=True) for m in models]
    pairs = [range(i, min(i + 2, len(models))) for i in range(0, len(models), 2)]
    moments = [{p: Moments(cross="diag") for p in points} for _ in pairs]
    with eval_mode(*models), scratch_pass():
        for x, _ in batches(data, chunk=True):
            outs = [probe(as_input(x, m)) for probe, m in zip(probes, models)]  # [model][point]
            for pair, pair_moments in zip(pairs, moments):
                for j, p in enumerate(points):
                    values = [outs[i][j] for i in pair]
                    device = values[0].device
                    pair_moments[p].update(*(v.to(device) for v in values))
    return moments


def endpoint_stats(model_a: nn.Module, model_b: nn.Module, data, scope: str = "conv") -> EndpointStats:
    """Statistics of every correction point of both endpoints, from ONE pass over ``data``.

    ``model_b`` must already be aligned to ``model_a``. The result is reused for every alpha
    (``repair(..., stats=...)``): no further endpoint passes are needed.
    """
    _check_choice("scope", scope, SCOPES)
    check_networks(model_a=model_a, model_b=model_b)
    points = correction_points(model_a, scope, first_inputs(data) if scope == "all" else None)
    (m,) = measure([model_a, model_b], data, points)
    stats = EndpointStats(scope, *({p: getattr(m[p], f) for p in points}
                                   for f in ("mean_x", "var_x", "mean_y", "var_y", "cov_xy")))
    for field in ("mean_a", "var_a", "mean_b", "var_b", "cov_ab"):
        _check_finite_stats(getattr(stats, field), f"endpoint statistics ({field})")
    return stats


# ---------------------------------------------------------------- the two variants
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


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``scale * x + shift`` per channel (dim 1) of ``x: [B, C, *]``; ``scale``, ``shift``: ``[C]``.

    Computed by torch's inference BatchNorm kernel (mean 0, variance 1, eps 0), one read and one write
    of ``x``: about twice as fast on a CPU as a broadcast ``addcmul``."""
    if x.dim() < 2:
        raise ValueError(f"a channel affine needs [B, C, *] values, got shape {tuple(x.shape)}")
    scale, shift = scale.to(x), shift.to(x)
    return F.batch_norm(x, torch.zeros_like(scale), torch.ones_like(scale), scale, shift, False, 0.0, 0.0)


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm):
    """An eval-mode affine BatchNorm as ``(scale [C], shift [C])``: ``bn(x) = scale * x + shift``."""
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = bn.weight * inv_std
    return scale, bn.bias - scale * bn.running_mean


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


def _absorbable_bn(gm, node, targets=()):
    """The affine BatchNorm node (with running statistics, applied in eval mode) that is ``node``'s only
    user, called only there and not one of ``targets`` itself, else None."""
    users = list(node.users)
    bn = _module(gm, users[0]) if len(users) == 1 and users[0].name not in targets else None
    if (not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.affine or bn.running_var is None
            or _calls(gm, users[0].target) != 1):
        return None
    return users[0]


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
    for node in _nodes(gm, targets):
        bn_node = _absorbable_bn(gm, node, targets)
        then = _bn_affine(gm.get_submodule(bn_node.target)) if bn_node is not None else None
        renorms[node.name] = _Renormalise(*targets[node.name], then=then)
        _insert_after(gm, node, renorms[node.name], "repair_measure")
        if bn_node is not None:  # the renormalising node now applies the BatchNorm
            bn_node.replace_all_uses_with(bn_node.args[0])
            gm.graph.erase_node(bn_node)
    gm.recompile()
    with eval_mode(gm), scratch_pass():
        for x, _ in batches(data):
            gm(as_input(x, gm))
    means = {p: r.moments.mean_x for p, r in renorms.items()}
    variances = {p: r.moments.var_x for p, r in renorms.items()}
    _check_finite_stats(means, "interpolated network's means")
    _check_finite_stats(variances, "interpolated network's variances")
    affines = {}
    for p, (mean, std) in targets.items():
        scale = goal_scale(std.to(variances[p]), variances[p])
        affines[p] = (scale, mean.to(scale) - scale * means[p])
    return affines


# ---------------------------------------------------------------- applying the affines
class ChannelAffine(nn.Module):
    """``y = scale * x + shift`` per channel (dim 1): ``[B, C, *] -> [B, C, *]``.

    The one correction REPAIR cannot fold into an existing layer (a residual-stream point)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x):
        return channel_affine(x, self.scale, self.shift)


def _insert_after(gm, node, module, prefix):
    """Route every use of ``node`` through ``module`` (added to ``gm`` as ``{prefix}_{node}``)."""
    name = f"{prefix}_{node.name}"
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)


def _calls(gm, target) -> int:
    return sum(n.op == "call_module" and n.target == target for n in gm.graph.nodes)


def _view(scale, weight):
    """``[C]`` -> broadcastable over a weight whose dim 0 is the output channel."""
    return scale.to(weight).view(-1, *[1] * (weight.dim() - 1))


def _fold_into_layer(gm, node, scale, shift) -> bool:
    """W' = scale W, b' = scale b + shift (a bias is created if the layer has none)."""
    layer = _module(gm, node)
    if not isinstance(layer, _LAYERS) or _calls(gm, node.target) != 1:
        return False
    if len(scale) != layer.weight.shape[0]:
        raise ValueError(f"point {node.name!r}: {len(scale)} channels on dim 1 but the layer has "
                         f"{layer.weight.shape[0]} outputs (only [B, C, *] layouts are supported)")
    layer.weight.mul_(_view(scale, layer.weight))
    if layer.bias is None:
        layer.bias = nn.Parameter(shift.to(layer.weight))
    else:
        layer.bias.mul_(scale.to(layer.bias)).add_(shift.to(layer.bias))
    return True


def _fold_into_bn(gm, node, scale, shift) -> bool:
    """A bias-free conv/linear whose only user is an affine BatchNorm (eval mode): fold there.

    BN(s x + t) = w (s x + t - m) / sqrt(v + eps) + b, so w' = w s and
    b' = b + w (t + (s - 1) m) / sqrt(v + eps); running statistics and state_dict keys unchanged.
    """
    layer, bn_node = _module(gm, node), _absorbable_bn(gm, node)
    if (not isinstance(layer, _LAYERS) or layer.bias is not None or bn_node is None
            or _calls(gm, node.target) != 1):
        return False
    bn = _module(gm, bn_node)
    if bn.num_features != len(scale):
        return False
    s, t = scale.to(bn.weight), shift.to(bn.weight)
    inv_std = torch.rsqrt(bn.running_var.to(bn.weight) + bn.eps)
    bn.bias.add_(bn.weight * (t + (s - 1) * bn.running_mean.to(bn.weight)) * inv_std)
    bn.weight.mul_(s)
    return True


def _affine_module(scale, shift, like: nn.Module) -> ChannelAffine:
    p = next(like.parameters(), torch.empty(0))
    return ChannelAffine(scale.to(p.device, _dtype(like)), shift.to(p.device, _dtype(like)))


@torch.no_grad()
def insert_affines(model: nn.Module, affines: dict) -> fx.GraphModule:
    """The unfused corrected network: a copy of ``model`` with a :class:`ChannelAffine` after every point."""
    gm = trace(copy.deepcopy(model))
    for node in _nodes(gm, affines):
        _insert_after(gm, node, _affine_module(*affines[node.name], model), "repair")
    gm.recompile()
    return gm


@torch.no_grad()
def fuse_affines(model: nn.Module, affines: dict) -> nn.Module:
    """A copy of ``model`` with every affine folded into its layer (or the BatchNorm after it).

    Returns a plain copy of the original architecture when every point folds (scope ``"conv"``), else
    an fx GraphModule with :class:`ChannelAffine` nodes at the residual-stream points only.
    """
    net = copy.deepcopy(model)
    gm = trace(net)  # shares net's layers: folding into gm's modules edits net
    inserted = False
    for node in _nodes(gm, affines):
        scale, shift = affines[node.name]
        if not (_fold_into_bn(gm, node, scale, shift) or _fold_into_layer(gm, node, scale, shift)):
            _insert_after(gm, node, _affine_module(scale, shift, model), "repair")
            inserted = True
    if inserted:
        gm.recompile()
        return gm
    return net


# ---------------------------------------------------------------- public entry points
def repair(model: nn.Module, model_a: nn.Module, model_b: nn.Module, data, alpha: float, variant: str = "exact",
           scope: str = "conv", stats: EndpointStats = None, extrapolate: bool = False,
           fuse: bool = True) -> nn.Module:
    """REPAIR the interpolated ``model`` = (1 - alpha) theta_a + alpha theta_b (paper section 4).

    ``model_b`` must be aligned to ``model_a``; ``data`` yields ``(inputs, targets)`` training batches
    (about 5,000 examples suffice). ``variant``: ``"exact"`` (4.2, one pass of ``model``) or
    ``"closed_form"`` (4.1, no pass). ``scope``: ``"conv"`` or ``"all"`` (module docstring).
    ``stats``: :func:`endpoint_stats` measured once and reused across alphas (``data`` may then be
    ``None`` for the closed form). ``fuse=False`` returns the unfused network (:func:`insert_affines`).
    Returns a new network; no input is modified.
    """
    alpha = check_alpha(alpha, extrapolate)
    _check_choice("variant", variant, VARIANTS)
    _check_choice("scope", scope, SCOPES)
    check_networks(model=model, model_a=model_a, model_b=model_b)
    if stats is None:
        stats = endpoint_stats(model_a, model_b, data, scope)
    elif stats.scope != scope:
        raise ValueError(f"stats were measured for scope {stats.scope!r}, not {scope!r}")
    if variant == "exact":
        affines = exact_affines(model, data, stats.targets(alpha))
    else:
        affines = closed_form_affines(stats, alpha)
    return fuse_affines(model, affines) if fuse else insert_affines(model, affines)


@torch.no_grad()
def reset_bn(model: nn.Module, data) -> nn.Module:
    """Recompute every BatchNorm's running statistics on ``data``, in place; returns ``model``.

    Covers BatchNorm1d/2d/3d: statistics are reset and re-estimated as a cumulative average
    (momentum None) in one pass with only the BatchNorm layers in train mode; modes and momenta are
    restored. The statistics are only reset once the first batch has arrived.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return model
    momenta = [bn.momentum for bn in bns]
    with eval_mode(model):
        try:
            for i, (x, _) in enumerate(batches(data)):
                if i == 0:
                    for bn in bns:
                        bn.reset_running_stats()
                        bn.momentum = None
                        bn.train()
                model(as_input(x, model))
        finally:
            for bn, momentum in zip(bns, momenta):
                bn.momentum = momentum
    return model
