"""Applying REPAIR's per-channel affines ``y = scale * x + shift``: folded into the network's own layers
(so the result is a plain network of the original architecture), or inserted as nodes.

A conv/linear point is folded into that layer's weight and bias, or, for a bias-free layer followed
only by an affine BatchNorm, into that BatchNorm's weight and bias (state_dict keys unchanged; exact
for any scale, unlike a running-statistics fold). Residual-stream points cannot be folded in general
(an identity shortcut carries the stream), nor can a bias-free layer's point with no BatchNorm after it
(its shift would need a new bias, a state_dict key the architecture lacks: Swin's PatchMerging
``reduction``); there, and only there (or at a layer module called more than once), a
:class:`ChannelAffine` node is inserted into an fx GraphModule.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn

from repairlib.plumbing import copy_model, model_dtype
from repairlib.points import LAYERS, calls_of, module_of, nodes_named
from repairlib.spec import channel_axes, trace


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """``scale * x + shift`` per channel of ``x``: dim 1 of ``[B, C, *]``, or ``axis`` (``-1``: the
    features of a transformer's ``[B, T, D]`` tokens); ``scale``, ``shift``: ``[C]``.

    On dim 1 computed by torch's inference BatchNorm kernel (mean 0, variance 1, eps 0), one read and
    one write of ``x``: about twice as fast on a CPU as a broadcast ``addcmul``, which the last axis
    uses."""
    if x.dim() < 2:
        raise ValueError(f"a channel affine needs [B, C, *] values, got shape {tuple(x.shape)}")
    scale, shift = scale.to(x), shift.to(x)
    axis = axis % x.dim()
    if axis != 1:
        view = [-1 if i == axis else 1 for i in range(x.dim())]
        return torch.addcmul(shift.view(view), x, scale.view(view))
    return F.batch_norm(x, torch.zeros_like(scale), torch.ones_like(scale), scale, shift, False, 0.0, 0.0)


def bn_affine(bn: nn.modules.batchnorm._BatchNorm):
    """An eval-mode affine BatchNorm as ``(scale [C], shift [C])``: ``bn(x) = scale * x + shift``."""
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = bn.weight * inv_std
    return scale, bn.bias - scale * bn.running_mean


def absorbable_bn(gm, node, targets=()):
    """The affine BatchNorm node (with running statistics, applied in eval mode) that is ``node``'s only
    user, called only there and not one of ``targets`` itself, else None."""
    users = list(node.users)
    bn = module_of(gm, users[0]) if len(users) == 1 and users[0].name not in targets else None
    if (not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.affine or bn.running_var is None
            or calls_of(gm, users[0].target) != 1):
        return None
    return users[0]


class ChannelAffine(nn.Module):
    """``y = scale * x + shift`` per channel (dim 1, or ``axis``): ``[B, C, *] -> [B, C, *]``.

    The one correction REPAIR cannot fold into an existing layer (a residual-stream point)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, axis: int = 1):
        super().__init__()
        self.axis = axis
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x):
        return channel_affine(x, self.scale, self.shift, self.axis)


def insert_after(gm, node, module, prefix):
    """Route every use of ``node`` through ``module`` (added to ``gm`` as ``{prefix}_{node}``)."""
    name = f"{prefix}_{node.name}"
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)


def _view(scale, weight):
    """``[C]`` -> broadcastable over a weight whose dim 0 is the output channel."""
    return scale.to(weight).view(-1, *[1] * (weight.dim() - 1))


def _fold_into_layer(gm, node, scale, shift) -> bool:
    """W' = scale W, b' = scale b + shift. False (nothing changed) for a layer without a bias: the shift
    would need a new parameter, which the architecture's state_dict does not have."""
    layer = module_of(gm, node)
    if not isinstance(layer, LAYERS) or layer.bias is None or calls_of(gm, node.target) != 1:
        return False
    if len(scale) != layer.weight.shape[0]:
        raise ValueError(f"point {node.name!r}: {len(scale)} channels on dim 1 but the layer has "
                         f"{layer.weight.shape[0]} outputs (only [B, C, *] layouts are supported)")
    layer.weight.mul_(_view(scale, layer.weight))
    layer.bias.mul_(scale.to(layer.bias)).add_(shift.to(layer.bias))
    return True


def _is_bias_free_layer(gm, node) -> bool:
    """A conv/linear without a bias, called once: a point whose correction has no bias to fold into."""
    layer = module_of(gm, node)
    return isinstance(layer, LAYERS) and layer.bias is None and calls_of(gm, node.target) == 1


def _warn_bias_free(points: list) -> None:
    """One warning naming (the first five of) ``points``, bias-free layers left unfolded."""
    names = ", ".join(map(repr, points[:5])) + (f" (and {len(points) - 5} more)" if len(points) > 5 else "")
    warnings.warn(f"REPAIR cannot fold the correction at {len(points)} point(s) {names}: a bias-free layer with "
                  "no BatchNorm after it, whose shift would need a new bias parameter; a ChannelAffine node is "
                  "inserted there instead (listed in unfolded_points), so the result does not load into the "
                  "input's class", stacklevel=3)


def _fold_into_bn(gm, node, scale, shift) -> bool:
    """A bias-free conv/linear whose only user is an affine BatchNorm (eval mode): fold there.

    BN(s x + t) = w (s x + t - m) / sqrt(v + eps) + b, so w' = w s and
    b' = b + w (t + (s - 1) m) / sqrt(v + eps); running statistics and state_dict keys unchanged.
    """
    layer, bn_node = module_of(gm, node), absorbable_bn(gm, node)
    if (not isinstance(layer, LAYERS) or layer.bias is not None or bn_node is None
            or calls_of(gm, node.target) != 1):
        return False
    bn = module_of(gm, bn_node)
    if bn.num_features != len(scale):
        return False
    s, t = scale.to(bn.weight), shift.to(bn.weight)
    inv_std = torch.rsqrt(bn.running_var.to(bn.weight) + bn.eps)
    bn.bias.add_(bn.weight * (t + (s - 1) * bn.running_mean.to(bn.weight)) * inv_std)
    bn.weight.mul_(s)
    return True


_PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.MaxPool1d, nn.AvgPool1d)


def _channels(gm, node):
    """The number of channels (dim 1) of ``node``'s value, read from the graph's modules: a conv/linear's
    outputs, a BatchNorm's features, a concatenation's sum, through activations and pooling; else None."""
    layer = module_of(gm, node)
    if isinstance(layer, LAYERS):
        return layer.weight.shape[0]
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return layer.num_features
    if isinstance(layer, _PASS_THROUGH):
        return _channels(gm, node.args[0])
    if _is_channel_cat(node):
        sizes = [_channels(gm, a) for a in node.args[0]]
        return None if None in sizes else sum(sizes)
    return None


def _is_channel_cat(node) -> bool:
    """``torch.cat(tensors, 1)`` (channels of ``[B, C, *]`` values)."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return (node.op == "call_function" and node.target is torch.cat and isinstance(node.args[0], (list, tuple))
            and dim == 1)


def _commutes_with_affine(gm, node) -> bool:
    """A module that maps ``s x + t`` to ``s f(x) + t`` per channel: average pooling without padding
    (DenseNet's transitions), an identity or dropout (eval)."""
    module = module_of(gm, node)
    return (isinstance(module, (nn.Identity, nn.Dropout))
            or isinstance(module, (nn.AvgPool1d, nn.AvgPool2d)) and not any(torch.tensor(module.padding).flatten()))


def _fold_through_cats(gm, node, scale, shift) -> bool:
    """A bias-free conv whose every user (after average pooling, :func:`_commutes_with_affine`) is a
    channel concatenation feeding only an affine BatchNorm (a DenseNet layer's new features, read by every
    later layer's ``norm1``; a transition's output): ``scale`` into the conv's
    weight, ``shift`` into each BatchNorm's bias on the conv's slice of channels,
    ``BN(x + t) = BN(x) + w t / sqrt(v + eps)``. Exact; state_dict keys unchanged. False (nothing
    changed) where the pattern does not hold or a slice's offset cannot be read from the graph."""
    layer = module_of(gm, node)
    if not isinstance(layer, LAYERS) or layer.bias is not None or calls_of(gm, node.target) != 1 or not node.users:
        return False
    value = node
    while len(value.users) == 1 and _commutes_with_affine(gm, next(iter(value.users))):
        value = next(iter(value.users))
    slices = []
    for cat in value.users:
        bn_node = absorbable_bn(gm, cat) if _is_channel_cat(cat) and list(cat.args[0]).count(value) == 1 else None
        if bn_node is None:
            return False
        args = list(cat.args[0])
        sizes = [_channels(gm, a) for a in args[:args.index(value)]]
        bn = module_of(gm, bn_node)
        if None in sizes or sum(sizes) + len(shift) > bn.num_features:
            return False
        slices.append((bn, sum(sizes)))
    layer.weight.mul_(_view(scale, layer.weight))
    for bn, offset in slices:
        part = slice(offset, offset + len(shift))
        inv_std = torch.rsqrt(bn.running_var[part].to(bn.weight) + bn.eps)
        bn.bias[part] += bn.weight[part] * shift.to(bn.weight) * inv_std
    return True


def _affine_module(scale, shift, like: nn.Module, axis: int = 1) -> ChannelAffine:
    p = next(like.parameters(), torch.empty(0))
    return ChannelAffine(scale.to(p.device, model_dtype(like)), shift.to(p.device, model_dtype(like)), axis)


@torch.no_grad()
def insert_affines(model: nn.Module, affines: dict, axes: dict | None = None) -> fx.GraphModule:
    """The unfused corrected network: a copy of ``model`` with a :class:`ChannelAffine` after every point.
    ``axes``: ``point -> channel axis`` (:func:`repairlib.spec.channel_axes`; default from the graph)."""
    gm = trace(copy_model(model))
    axes = channel_axes(model) if axes is None else axes
    for node in nodes_named(gm, affines):
        insert_after(gm, node, _affine_module(*affines[node.name], model, axes.get(node.name, 1)), "repair")
    gm.recompile()
    return gm


@torch.no_grad()
def fuse_affines(model: nn.Module, affines: dict, axes: dict | None = None) -> nn.Module:
    """A copy of ``model`` with every affine folded into its layer (or the BatchNorm after it).

    Folding, in this order: a bias-free layer's affine into the BatchNorm after it; a bias-free conv
    read only through channel concatenations into the BatchNorms after them (DenseNet); else into the
    layer's own weight and bias. No fold adds a state_dict key: a bias-free layer with nothing after it
    to fold into (Swin's PatchMerging ``reduction``, which writes a residual stream) is left unfolded,
    with a warning.

    Returns a plain copy of the original architecture when every point folds (scope ``"conv"``, on every
    torchvision classifier but Swin: it loads with ``strict=True`` into a fresh instance; a Linear on
    ``[N, T, D]`` tokens folds per output feature). Two cases cannot be folded: a residual-stream point
    (scope ``"all"``), where an identity shortcut carries the stream past every layer, so no layer's
    weights can scale it; and a bias-free layer with nothing after it to fold into. Then the result is a
    ``torch.fx.GraphModule`` with :class:`ChannelAffine` nodes at those points only (state_dict keys
    ``repair_<node>.scale`` / ``.shift``, on their channel ``axes``: ``point -> axis``,
    :func:`repairlib.spec.channel_axes`; default from the graph), which does not load into the input's
    class; its ``unfolded_points`` attribute lists those points.
    """
    net = copy_model(model)
    gm = trace(net)  # shares net's layers: folding into gm's modules edits net
    inserted = []
    axes = channel_axes(model) if axes is None else axes
    for node in nodes_named(gm, affines):
        scale, shift = affines[node.name]
        if not (_fold_into_bn(gm, node, scale, shift) or _fold_through_cats(gm, node, scale, shift)
                or _fold_into_layer(gm, node, scale, shift)):
            insert_after(gm, node, _affine_module(scale, shift, model, axes.get(node.name, 1)), "repair")
            inserted.append(node.name)
    bias_free = [name for name in inserted if _is_bias_free_layer(gm, nodes_named(gm, [name])[0])]
    if bias_free:
        _warn_bias_free(bias_free)
    if inserted:
        gm.recompile()
        gm.unfolded_points = inserted
        return gm
    return net
