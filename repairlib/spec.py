"""Find a network's permutation symmetries automatically from its torch.fx graph (paper section 2.2).

Every axis of every tensor flowing through the network has a *space*: the channels of an
``[N, C, H, W]`` map (axis 1), the features of an ``[N, T, D]`` token tensor (axis 2, the axis a
Linear or LayerNorm acts on), or a space that cannot be permuted (batch, spatial and token axes).
A layer such as a convolution or a linear layer starts a new space on the axis it writes;
element-wise layers, pooling and normalisation keep it; an addition joins the spaces of its
operands axis by axis (so a whole residual stream is one space); views, transposes and permutes
carry the spaces along with their axes. Every (parameter or buffer, axis) is bound to the space it
indexes, so a module or parameter used at several call sites (weight tying) gives one space.
Spaces that reach the network's input or output, or go through an op whose channels cannot be
freely reordered (concatenation, grouped convolutions, a channel shuffle), are fixed;
:meth:`PermutationSpec.summary` says which and why. Every other space is one *group*: a permutation
of its units, applied to every ``(state_dict key, axis)`` that indexes it, leaves the network's
function unchanged.

Attention heads. A view that splits an axis into ``[heads, head_dim]`` gives its space two *factors*,
and a merge of such axes back into one gives a space with those factors; ``chunk``/``unbind`` of a
fused qkv axis cuts its space into *parts* (each with its own factors). Once the graph is seen,
spaces with the same factors are one space (the merged attention output is the value part), and
whatever is not the structure of heads is fixed (a channel shuffle splits and merges in the other
order). Each remaining ``[heads, head_dim]`` space is a head group (:class:`Group`): query and key
share one, value and output another, and the two move their heads together (``scaled_dot_product_
attention``, ``q @ k^T`` and ``torch.einsum("bhid,bhjd->bhij", q, k)`` contract the head dims and keep the
heads as batch axes). A parameter axis that indexes the heads alone (a relative position bias table added
to ``q k^T``) is a head group of one dimension per head, moving with the heads.
``nn.MultiheadAttention`` is described the same way from its known layout (one fused ``in_proj`` or,
with ``kdim``/``vdim``, separate q/k/v projections); torch's ``nn.Transformer``, its encoder/decoder
stacks and layers are traced into, down to their attention, linear and norm layers (:func:`trace`).
So is torchvision's Swin ``shifted_window_attention`` (a traced leaf); an axis that indexes the heads
alone (its relative position bias, V2's ``logit_scale``) is a head group of one dimension per head.

No per-architecture code. What the analysis finds is *verified* on the example input: a random
permutation of each group, applied to a copy of the network with perturbed weights, must keep
its output (:func:`verify_spec`). An op the analysis does not know, and a group that fails the
check, raise ``ValueError`` naming the graph nodes; a hand-written :class:`PermutationSpec` can
then be passed instead.
"""

import functools
import itertools
import math
import operator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.transformer import _detect_is_causal_mask

from repairlib.plumbing import as_input, copy_model

HAND_WRITTEN = "Pass a hand-written spec=PermutationSpec(...) instead."


class Entry(NamedTuple):
    """One place a group's units index: ``key``'s ``axis``, entries ``start .. start + size * inner``
    viewed as ``[size, inner]`` (``start > 0`` for a slice of a fused axis, e.g. the key rows of a fused
    ``qkv`` projection). Written as ``(key, axis, inner)`` when the group spans the whole axis."""

    key: str
    axis: int
    inner: int = 1
    start: int = 0


@dataclass
class Group:
    """One permutation: ``size`` units, and every place that indexes them.

    ``entries`` holds :class:`Entry` ``(state_dict key, axis, inner, start)`` (a plain ``(key, axis,
    inner)`` tuple is accepted for ``start = 0``): the key's ``axis`` has ``size * inner`` entries from
    ``start`` on, viewed as ``[size, inner]`` (``inner > 1`` where a conv map was flattened into a
    linear layer, ``inner = H * W``). ``probes`` names the graph nodes whose outputs carry these
    units, one entry each, on their channel axis (:func:`channel_axes`: dim 1 of ``[N, C, *]`` maps,
    the last axis of a transformer's ``[N, T, D]`` tokens, e.g. its MLP hidden units, its residual
    stream and the merged heads ``[N, T, heads * head_dim]`` of the value/output group), or on dim 1
    of ``[N, C * inner]``, and feed a conv or linear layer; activation matching correlates them there,
    every position of a token tensor a sample. ``probe_axes`` maps a probe to its channel axis where
    that is not dim 1 (absent: dim 1). A group with no such node (a query/key group, whose units only
    meet in ``q k^T``) has no probe: weight matching aligns it. ``residual`` is true for
    a space shared by several layers through additions (a residual stream). ``nodes`` names the
    graph nodes whose weights or outputs carry the group (for messages).

    *Attention heads.* ``heads > 1``: the units are ``heads`` blocks of ``size // heads`` (unit
    ``h * d + i`` is dimension ``i`` of head ``h``), and only *head-structured* permutations keep the
    function: ``perm[h * d + i] = sigma[h] * d + tau_h[i]``, whole heads moved by ``sigma`` and the
    dimensions inside each head by their own ``tau_h``. Groups with the same ``head_set`` (the query/key
    group and the value/output group of one attention layer) share ``sigma``; ``head_set=None`` keeps
    every head in place. ``within=False`` keeps the dimensions inside each head in place (a parameter
    shared by all heads indexes them, e.g. a per-head-dim LayerNorm).
    """

    size: int
    entries: list = field(default_factory=list)
    probes: list = field(default_factory=list)
    residual: bool = False
    nodes: list = field(default_factory=list)
    heads: int = 1
    head_set: str | None = None
    within: bool = True
    probe_axes: dict = field(default_factory=dict)

    def __post_init__(self):
        self.entries = [Entry(*e) for e in self.entries]
        if self.heads < 1 or self.size % self.heads:
            raise ValueError(f"a group of {self.size} units cannot be split into {self.heads} heads")

    @property
    def head_dim(self) -> int:
        return self.size // self.heads


@dataclass
class PermutationSpec:
    """The permutation groups of a network: ``groups`` maps a group name to a :class:`Group`.

    ``node_groups`` maps a graph node name to the group of the units on the axis where statistics take
    its channels (:func:`repairlib.stats.value_axes`: a layer's own axis, dim 1 of a conv's ``[N, C, *]``,
    the last of a Linear's ``[N, T, D]``; else :func:`channel_axes`; absent for fixed spaces), which lets
    statistics measured per channel at any node be permuted along with the network. ``mixed_nodes``
    holds the nodes whose value has a permuted space on another axis than the batch and that channel
    axis (an MLP-Mixer's token MLP, ``[N, D, hidden]`` and ``[N, D, T]`` along the residual stream
    ``D``): per-channel means and variances there pool over that axis and do not depend on its order,
    but a cross moment of two networks pairs their elements position by position, so it is only
    meaningful once the networks are aligned. ``notes`` says, per graph node, why channels there were
    kept fixed (a channel shuffle, a concatenation, ...) or cannot be measured.
    """

    groups: dict
    node_groups: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    mixed_nodes: set = field(default_factory=set)

    def axes_of(self):
        """Map each state_dict key to its permuted axes: ``key -> [(axis, group name, inner, start)]``."""
        out = {}
        for name, g in self.groups.items():
            for key, axis, inner, start in g.entries:
                out.setdefault(key, []).append((axis, name, inner, start))
        return out

    def head_sets(self) -> dict:
        """``head set -> [group names]``: the groups whose heads move together (one ``sigma``)."""
        out = {}
        for name, g in self.groups.items():
            if g.heads > 1 and g.head_set is not None:
                out.setdefault(g.head_set, []).append(name)
        return out

    def units(self) -> list:
        """The groups as independent units of a solver: a head set's groups together, every other group
        alone (``[[group names]]``, in the groups' order)."""
        sets, out, seen = self.head_sets(), [], set()
        for name, g in self.groups.items():
            members = sets.get(g.head_set, [name]) if g.heads > 1 and g.head_set is not None else [name]
            if members[0] not in seen:
                seen.add(members[0])
                out.append(members)
        return out

    def summary(self) -> str:
        """One line per group (size, entries, probes and the axis each measures: dim 1 of ``[N, C, *]``,
        axis 2 of ``[N, T, D]`` tokens) and one per note: a readable account."""
        lines = [f"{len(self.groups)} permutation groups"]
        for name, g in self.groups.items():
            axes = [g.probe_axes.get(p, 1) for p in g.probes]
            where = ", ".join(f"{axes.count(a)} on {'dim 1' if a == 1 else f'axis {a}'}" for a in sorted(set(axes)))
            probes = f"{len(g.probes)} probes ({where})" if g.probes else "no probe (aligned by weight matching)"
            heads = ""
            if g.heads > 1:
                moved = f"heads move with {g.head_set!r}" if g.head_set is not None else "heads in place"
                heads = f", {g.heads} heads x {g.head_dim} ({moved}{'' if g.within else ', dims in place'})"
            lines.append(f"  {name}: {g.size} units{heads}, {len(g.entries)} entries, {probes}"
                         + (", residual" if g.residual else ""))
        lines += [f"  fixed or unmeasured: {note}" for note in self.notes]
        return "\n".join(lines)


def trace(model: nn.Module) -> fx.GraphModule:
    """``model``'s torch.fx graph (:class:`_Tracer`: into torch's transformer layers and stacks, every
    other torch.nn module a leaf), a GraphModule on ``model`` itself (its qualnames are ``model``'s
    submodules), with an error that says what to do when tracing fails."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as e:  # fx raises many types; report them uniformly
        raise ValueError(f"torch.fx cannot trace {type(model).__name__}: {e}. {HAND_WRITTEN}") from e


class _Tracer(fx.Tracer):
    """``torch.fx.Tracer`` that traces ``nn.Transformer``, ``nn.TransformerEncoder``/``Decoder`` and their
    layers along their slow path (:data:`_SLOW_PATHS`; the fast path computes the same function), so
    their ``self_attn``, ``linear1``, ``norm1``, ... are leaves of the graph. Every other torch.nn module
    is a leaf, as for ``torch.fx.symbolic_trace``. Buffers read in traced code are graph values
    (``get_attr`` under their own names, as MaxViT's ``relative_position_index.view(-1)``), not constants
    folded at trace time, so the graph's state_dict keys are the model's."""

    proxy_buffer_attributes = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _slow_path(m) is None and super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        slow = _slow_path(m)
        return super().call_module(m, forward if slow is None else functools.partial(slow, m), args, kwargs)

    def trace(self, root, concrete_args=None):
        """A transformer module as the root is traced along its slow path too (its class is swapped for
        the time of the trace by a subclass whose ``forward`` is that path)."""
        slow = _slow_path(root) if isinstance(root, nn.Module) else None
        if slow is None:
            return super().trace(root, concrete_args)
        cls = type(root)
        root.__class__ = type(cls.__name__, (cls,), {"forward": slow, "__module__": cls.__module__})
        try:
            return super().trace(root, concrete_args)
        finally:
            root.__class__ = cls


def _slow_path(m: nn.Module):
    """The slow-path function for ``m`` if it is a torch transformer module with torch's own ``forward``."""
    return _SLOW_PATHS.get(getattr(type(m), "forward", None))


def _causal_hint(mask, is_causal):
    """The stacks' ``is_causal`` for their layers: as given; else (None) whether a concrete ``mask`` is the
    causal mask. A traced ``mask`` (a graph value) is applied as given (``False``): the same function."""
    if is_causal is not None or mask is None or isinstance(mask, fx.Proxy):
        return is_causal is True
    return _detect_is_causal_mask(mask, None)


def _encoder_layer(layer, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
    """``nn.TransformerEncoderLayer`` on ``src`` ``[N, T, E]`` (``[T, N, E]`` unless ``batch_first``):
    ``_sa_block`` and ``_ff_block``, each with a residual, pre-norm (``norm_first``) or post-norm. The
    masks go to ``self_attn`` as given (``nn.MultiheadAttention`` canonicalises them itself)."""
    x = src
    if layer.norm_first:
        x = x + layer._sa_block(layer.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        return x + layer._ff_block(layer.norm2(x))
    x = layer.norm1(x + layer._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
    return layer.norm2(x + layer._ff_block(x))


def _decoder_layer(layer, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                   memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
    """``nn.TransformerDecoderLayer`` on ``tgt`` ``[N, T, E]`` and ``memory`` ``[N, S, E]`` (``[T, N, E]``,
    ``[S, N, E]`` unless ``batch_first``): ``_sa_block``, ``_mha_block`` (cross-attention to ``memory``)
    and ``_ff_block``, each with a residual, pre-norm (``norm_first``) or post-norm."""
    x = tgt
    if layer.norm_first:
        x = x + layer._sa_block(layer.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
        x = x + layer._mha_block(layer.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
        return x + layer._ff_block(layer.norm3(x))
    x = layer.norm1(x + layer._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
    x = layer.norm2(x + layer._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
    return layer.norm3(x + layer._ff_block(x))


def _encoder(stack, src, mask=None, src_key_padding_mask=None, is_causal=None):
    """``nn.TransformerEncoder`` on ``src`` ``[N, T, E]`` (or ``[T, N, E]``): its layers in turn, then
    ``norm`` if it has one (no nested tensors: the padded positions are masked instead)."""
    is_causal = _causal_hint(mask, is_causal)
    x = src
    for layer in stack.layers:
        x = layer(x, src_mask=mask, is_causal=is_causal, src_key_padding_mask=src_key_padding_mask)
    return x if stack.norm is None else stack.norm(x)


def _decoder(stack, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
             memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
    """``nn.TransformerDecoder`` on ``tgt`` ``[N, T, E]`` and ``memory`` ``[N, S, E]`` (or sequence
    first): its layers in turn, then ``norm`` if it has one."""
    tgt_is_causal = _causal_hint(tgt_mask, tgt_is_causal)
    x = tgt
    for layer in stack.layers:
        x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                  memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                  memory_is_causal=memory_is_causal)
    return x if stack.norm is None else stack.norm(x)


def _transformer(model, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                 tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                 memory_is_causal=False):
    """``nn.Transformer`` on ``src`` ``[N, S, E]`` and ``tgt`` ``[N, T, E]`` (or sequence first): the
    encoder's output is the decoder's ``memory`` (the batch and width checks of ``forward`` left out)."""
    memory = model.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
    return model.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                         tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                         tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)


# torch's own forward -> its slow path, traced by :class:`_Tracer`
_SLOW_PATHS = {nn.TransformerEncoderLayer.forward: _encoder_layer, nn.TransformerDecoderLayer.forward: _decoder_layer,
               nn.TransformerEncoder.forward: _encoder, nn.TransformerDecoder.forward: _decoder,
               nn.Transformer.forward: _transformer}


# ---------------------------------------------------------------- op tables
_F = nn.functional
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.SELU, nn.CELU,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus, nn.Identity, nn.Softmax, nn.LogSoftmax,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Softsign, nn.Tanhshrink,
)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                 nn.InstanceNorm3d, nn.SyncBatchNorm)
_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_RESHAPE_MODULES = (nn.Flatten, nn.Unflatten)


def _stochastic_depth_functions():
    """torchvision's ``stochastic_depth`` (a traced leaf): identity in eval mode, and in training a
    per-example (``"row"``) or global (``"batch"``) mask, which no channel permutation changes."""
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # torchvision is a dependency, but the analysis does not need it
        return set()
    return {stochastic_depth}


# Element-wise in every axis they keep (also softmax and normalize: equivariant in the axis they act on).
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, _F.relu, torch.relu_, _F.relu_, _F.relu6, _F.leaky_relu, _F.gelu, _F.silu, torch.sigmoid,
    _F.sigmoid, torch.tanh, _F.tanh, _F.elu, _F.selu, _F.celu, _F.hardswish, _F.hardsigmoid, _F.hardtanh,
    _F.mish, _F.softplus, _F.logsigmoid, _F.softsign, _F.dropout, _F.dropout1d, _F.dropout2d, _F.dropout3d,
    _F.alpha_dropout, torch.clone, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.neg,
    torch.square, torch.erf, torch.clamp, torch.clip, torch.softmax, _F.softmax, torch.log_softmax,
    _F.log_softmax, _F.normalize, operator.neg, operator.pos, torch.sign, torch.sin, torch.cos,
} | _stochastic_depth_functions()
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "float", "double", "half",
    "bfloat16", "to", "type", "type_as", "detach", "exp", "log", "sqrt", "rsqrt", "abs", "neg", "square", "erf",
    "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "softmax", "log_softmax", "sign", "sin", "cos",
    "gelu", "silu", "cpu", "cuda",
}
_JOIN_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, operator.pow, torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.rsub,
    torch.pow, torch.maximum, torch.minimum, torch.where, torch.addcmul, torch.addcdiv, torch.lerp,
}
_JOIN_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "addcmul", "addcmul_",
                 "addcdiv", "maximum", "minimum", "masked_fill", "masked_fill_", "lerp", "where"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.unflatten}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "view_as", "reshape_as", "squeeze", "unsqueeze", "unflatten"}
_REORDER_FUNCTIONS = {torch.permute, torch.transpose, torch.movedim, torch.swapaxes, torch.swapdims}
_REORDER_METHODS = {"permute", "transpose", "movedim", "swapaxes", "swapdims"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp"}
_POOL_FUNCTIONS = {
    _F.max_pool1d, _F.max_pool2d, _F.max_pool3d, _F.avg_pool1d, _F.avg_pool2d, _F.avg_pool3d,
    _F.adaptive_avg_pool1d, _F.adaptive_avg_pool2d, _F.adaptive_avg_pool3d, _F.adaptive_max_pool1d,
    _F.adaptive_max_pool2d, _F.adaptive_max_pool3d, _F.interpolate,
}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_SPLIT_FUNCTIONS = {torch.chunk: "chunk", torch.split: "split", torch.unbind: "unbind",
                    torch.tensor_split: "tensor_split"}
_SPLIT_METHODS = {"chunk", "split", "unbind", "tensor_split"}
_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm}
_MATMUL_METHODS = {"matmul", "bmm"}
_CONV_FUNCTIONS = {_F.conv1d, _F.conv2d, _F.conv3d}
_SHAPE_QUERIES = {"size", "dim", "numel", "ndimension"}
# torchvision's Swin Transformer traces its attention and patch merging as leaf functions (torch.fx.wrap).
_TORCHVISION_LEAVES = {"shifted_window_attention": "window_attention", "_patch_merging_pad": "patch_merging_pad",
                       "_get_relative_position_bias": "position_bias"}


class _Spaces:
    """Union-find over spaces: each has a size (units), and some are fixed (never permuted)."""

    def __init__(self):
        self.parent, self.size, self.fixed = [], [], set()

    def new(self, size, fixed=False):
        self.parent.append(len(self.parent))
        self.size.append(size)
        if fixed:
            self.fixed.add(len(self.parent) - 1)
        return len(self.parent) - 1

    def find(self, s):
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a, b):
        """Join two spaces; ``False`` if both are free but of different sizes (then both are fixed)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        consistent = self.size[ra] == self.size[rb] or self.is_fixed(ra) or self.is_fixed(rb)
        self.parent[rb] = ra
        if rb in self.fixed or not consistent:
            self.fixed.add(ra)
        return consistent

    def fix(self, s):
        self.fixed.add(self.find(s))

    def is_fixed(self, s):
        return self.find(s) in self.fixed


def _shape_of(meta):
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") and hasattr(meta, "dtype") else None


def _dims(arg, rank):
    """An int or a sequence of ints (negative allowed) -> a tuple of axes in ``range(rank)``."""
    seq = (arg,) if isinstance(arg, int) else tuple(arg)
    return tuple(d % rank if rank else 0 for d in seq)


class _Analysis:
    """Walks the traced graph once and records, per node, the space of every axis of its output.

    A *pair* ``(space, inner)`` describes one axis: its ``size * inner`` entries are ``size`` units of
    ``space``, each repeated over ``inner`` consecutive entries (a flattened ``[C, H, W]`` map has
    ``(channels, H * W)``). A node's *value* is a tuple of pairs, one per axis (a list of values for
    ops returning several tensors).
    """

    def __init__(self, gm: fx.GraphModule, state: dict):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.state = state  # state_dict(keep_vars=True) of the traced model
        self.alias = _aliases(state)  # key -> first key of the same tensor (tied weights)
        self.spaces = _Spaces()
        self.out = {}  # node -> value
        self.bound = {}  # (key, axis) -> pair: which units index that axis
        self.sites = {}  # (key, axis) -> graph node names that use it
        self.producers = {}  # space -> [layer names that start it]
        self.consumer_inputs = []  # nodes feeding a conv/linear (activation probes)
        self.notes = {}  # space -> [why it was fixed]
        self.node = None
        # Attention heads: a space whose units are the row-major product of factor spaces (a split into
        # [heads, head_dim], or their merge back), and spaces cut into consecutive parts (q, k, v of a
        # fused projection); :meth:`close` makes them consistent once the whole graph is seen.
        self.composites = []  # [(space, (factor spaces, outer first), graph node)]
        self.segments = []  # [(space, offset in units, part space, graph node)]
        self.parts = {}  # (composite index, part) -> (part space, {factor root: its copy in the part})
        self.labels = {}  # part space -> a name for its group ("qkv[0:64]")

    # -- spaces, pairs and values
    def fresh(self, length):
        return self.spaces.new(length, fixed=True), 1

    def free(self, size):
        return self.spaces.new(size), 1

    def fixed_value(self, shape):
        return tuple(self.fresh(d) for d in shape)

    def size(self, pair):
        return self.spaces.size[self.spaces.find(pair[0])]

    def is_free(self, pair):
        return not self.spaces.is_fixed(pair[0]) and self.size(pair) > 1

    def fix(self, pair, why):
        """Keep ``pair``'s units fixed, recording why (shown by :meth:`PermutationSpec.summary`)."""
        if why is not None and self.is_free(pair):
            self.notes.setdefault(self.spaces.find(pair[0]), []).append(f"node {self.node.name!r}: {why}")
        self.spaces.fix(pair[0])

    def unify(self, a, b, what="joins"):
        """The two axes carry the same units: one space (fixed where they cannot agree)."""
        if a[1] != b[1]:
            why = f"{what} axes of {self.size(a)} x {a[1]} and {self.size(b)} x {b[1]} entries"
            self.fix(a, why)
            self.fix(b, why)
            return
        sizes = (self.size(a), self.size(b))
        free = self.is_free(a) or self.is_free(b)
        if not self.spaces.union(a[0], b[0]) and free:
            self.notes.setdefault(self.spaces.find(a[0]), []).append(
                f"node {self.node.name!r}: {what} {sizes[0]} units with {sizes[1]} units")

    def value(self, arg):
        return self.out.get(arg) if isinstance(arg, fx.Node) else None

    def tensor_args(self, node):
        return [a for a in node.all_input_nodes if isinstance(self.out.get(a), tuple)]

    def shape(self, node):
        return _shape_of(node.meta.get("tensor_meta")) if isinstance(node, fx.Node) else None

    def arg(self, node, index, name, default=None):
        if len(node.args) > index:
            return node.args[index]
        return node.kwargs.get(name, default)

    # -- parameters and buffers
    def canonical(self, key):
        return self.alias.get(key, key)

    def param_axis(self, key, axis):
        """The pair that indexes ``key``'s ``axis`` (a new free space when nothing bound it yet)."""
        key = self.canonical(key)
        if key not in self.state or not self.state[key].is_floating_point():
            raise ValueError(f"permutation_spec: graph node {self.node.name!r} uses {key!r}, which is not a "
                             f"float state_dict tensor. {HAND_WRITTEN}")
        length = self.state[key].shape[axis]
        self.sites.setdefault((key, axis), []).append(self.node.name)
        if (key, axis) not in self.bound:
            self.bound[(key, axis)] = self.free(length)
        return self.bound[(key, axis)]

    def bind(self, key, axis, pair):
        """``key``'s ``axis`` is indexed by ``pair``'s units (for the state_dict entries of the group)."""
        canon = self.canonical(key)
        tensor = self.state.get(canon)
        if tensor is None or not tensor.is_floating_point():
            self.fix(pair, f"indexes {key!r}, which is not a state_dict tensor")
            return
        if tensor.shape[axis] != self.size(pair) * pair[1]:
            self.fix(pair, f"{key!r} axis {axis} has {tensor.shape[axis]} entries, the input "
                           f"{self.size(pair)} x {pair[1]}")
            return
        self.sites.setdefault((canon, axis), []).append(self.node.name)
        if (canon, axis) in self.bound:
            self.unify(self.bound[(canon, axis)], pair, f"uses {key!r} again and joins")
        else:
            self.bound[(canon, axis)] = pair

    def bind_module(self, name, attr, axis, pair):
        if getattr(self.modules[name], attr, None) is not None and f"{name}.{attr}" in self.state:
            self.bind(f"{name}.{attr}", axis, pair)

    # -- attention heads: the consistent structure, once the whole graph is seen
    def close(self):
        """Make factored and segmented spaces consistent, repeating until nothing changes: a space split
        into factors in several places has the same factors everywhere; spaces with the same factors
        are one space (the merged heads are the space that was split); parts of one space at the same
        offset are one space; and a structure that is not that of attention heads is fixed."""
        while True:
            before = self.signature()
            self.join_factorizations()
            self.join_congruent()
            self.join_segments()
            self.check_roles()
            if self.signature() == before:
                return

    def signature(self):
        sp = self.spaces
        return [sp.find(i) for i in range(len(sp.parent))], {sp.find(f) for f in sp.fixed}

    def fix_space(self, space, why, node):
        root = self.spaces.find(space)
        if why is not None and not self.spaces.is_fixed(root) and self.spaces.size[root] > 1:
            self.notes.setdefault(root, []).append(f"node {node!r}: {why}")
        self.spaces.fix(root)

    def join_factorizations(self):
        first = {}
        for space, factors, node in self.composites:
            root = self.spaces.find(space)
            if root not in first:
                first[root] = factors
                continue
            other = first[root]
            sizes = [[self.spaces.size[self.spaces.find(f)] for f in fs] for fs in (other, factors)]
            if sizes[0] != sizes[1]:
                for f in (space, *other, *factors):
                    self.fix_space(f, f"split into axes of {sizes[0]} and of {sizes[1]}: kept fixed", node)
            else:
                for a, b in zip(other, factors):
                    self.spaces.union(a, b)

    def join_congruent(self):
        seen = {}
        for space, factors, _ in self.composites:
            key = tuple(self.spaces.find(f) for f in factors)
            if key in seen:
                self.spaces.union(seen[key], space)
            else:
                seen[key] = space

    def segment_layout(self):
        """``root -> {offset: [part spaces]}`` of every segmented space."""
        layout = {}
        for space, offset, part, _ in self.segments:
            layout.setdefault(self.spaces.find(space), {}).setdefault(offset, []).append(part)
        return layout

    def join_segments(self):
        sp = self.spaces
        nodes = {sp.find(space): node for space, _, _, node in self.segments}
        for root, parts in self.segment_layout().items():
            spans = sorted((offset, sp.size[sp.find(ps[0])]) for offset, ps in parts.items())
            sizes_agree = all(len({sp.size[sp.find(p)] for p in ps}) == 1 for ps in parts.values())
            disjoint = all(a + n <= b for (a, n), (b, _) in itertools.pairwise(spans))
            if not (sizes_agree and disjoint and spans[-1][0] + spans[-1][1] <= sp.size[root]) or sp.is_fixed(root):
                why = None if sp.is_fixed(root) else "cut into parts in two different ways: kept fixed"
                for p in [root] + [p for ps in parts.values() for p in ps]:
                    self.fix_space(p, why, nodes[root])
                continue
            for ps in parts.values():
                for p in ps[1:]:
                    sp.union(ps[0], p)

    def check_roles(self):
        """Only ``[heads, head_dim]`` structure is kept: two factors, a factor never both outer and inner
        and never itself split or cut, an inner factor always under the same heads, no parameter indexing
        the head dims alone (a weight shared by all heads), a fixed composite fixing its factors. Anything
        else is fixed (a channel shuffle splits and merges its channels in the other order). A parameter
        indexing the heads alone is rebound to a head group of its own (:meth:`bind_per_head`)."""
        sp = self.spaces
        segmented = set(self.segment_layout())
        live = [(s, fs, n) for s, fs, n in self.composites if sp.find(s) not in segmented]
        structured = {sp.find(s) for s, _, _ in live} | segmented
        roles, outers = {}, {}
        for space, factors, _ in live:
            for pos, f in enumerate(factors):
                roles.setdefault(sp.find(f), set()).add(pos if len(factors) == 2 else -1)
            if len(factors) == 2:
                outers.setdefault(sp.find(factors[1]), set()).add(sp.find(factors[0]))
        bad = {r for r, pos in roles.items() if len(pos) > 1 or -1 in pos or r in structured}
        bad |= {r for r, outer in outers.items() if len(outer) > 1}
        bound = {sp.find(pair[0]) for pair in self.bound.values()}
        alone = self.without_heads(outers)
        for space, factors, node in live:
            roots = [sp.find(f) for f in factors]
            if len(factors) != 2 or bad & set(roots):
                for f in (space, *factors):
                    self.fix_space(f, f"split into axes of {[sp.size[r] for r in roots]} that are not attention "
                                      "heads (e.g. a channel shuffle): those units are kept fixed", node)
                continue
            if sp.is_fixed(space):
                for f in factors:
                    self.fix_space(f, None, node)
            if roots[0] in bound and not sp.is_fixed(roots[0]):
                self.bind_per_head(roots[0])
                bound.discard(roots[0])
            if roots[1] in bound:
                self.fix_space(roots[1], "a parameter indexes the dimensions inside every head alone: kept "
                                         "in place", node)
            if roots[1] in alone:
                self.fix_space(roots[1], f"the dimensions inside every head reach node {alone[roots[1]]!r} "
                                         "without their heads: kept in place", node)

    def bind_per_head(self, head):
        """Every (key, axis) bound to the heads space ``head`` alone (a relative position bias table's heads
        axis joined with the heads of ``q k^T``) is rebound to a per-head space (:meth:`per_head`), so that
        it is a head group of one dimension per head moving with the heads."""
        per_head = None
        for key_axis, (space, inner) in self.bound.items():
            if self.spaces.find(space) == head:
                per_head = per_head or self.per_head(head)[0]
                self.bound[key_axis] = (per_head, inner)

    def without_heads(self, outers):
        """``inner factor root -> a node`` whose value carries that factor but not its heads (after a sum
        over the heads, say): there the dimensions of all heads meet, so they cannot move per head."""
        sp, found = self.spaces, {}
        for node, value in self.out.items():
            for v in value if isinstance(value, list) else [value]:
                roots = {sp.find(s) for s, _ in v or ()}
                for r in roots & set(outers):
                    if not outers[r] & roots:
                        found.setdefault(r, node.name)
        return found

    # -- messages
    def fail(self, node, why="unsupported op"):
        raise ValueError(f"permutation_spec cannot handle graph node {node.name!r} ({_describe(self.gm, node)}): "
                         f"{why}. {HAND_WRITTEN}")

    # -- dispatch
    def run(self):
        for node in self.gm.graph.nodes:
            self.node = node
            meta = node.meta.get("tensor_meta")
            if node.op == "placeholder":
                if _shape_of(meta) is not None:
                    self.out[node] = self.fixed_value(_shape_of(meta))
            elif node.op == "get_attr":
                self.get_attr(node, _shape_of(meta))
            elif node.op == "output":
                self.fix_all(node, None)  # the network's outputs keep their order
            elif _shape_of(meta) is None and not isinstance(meta, (tuple, list)):
                self.non_tensor(node)
            elif node.op == "call_module":
                self.module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self.function(node)
            else:
                self.fail(node)

    def fix_all(self, node, why):
        for a in node.all_input_nodes:
            values = self.out.get(a)
            for value in values if isinstance(values, list) else [values]:
                for pair in value or ():
                    self.fix(pair, why)

    def non_tensor(self, node):
        """A node whose result is no tensor: shape queries are harmless; anything else that reads a
        tensor (``.item()``, ``.tolist()``) may depend on the order of its units, so they are fixed."""
        if node.op == "call_method" and node.target in _SHAPE_QUERIES:
            return
        if node.op == "call_function" and node.target in (getattr, operator.getitem):
            return
        self.fix_all(node, "read by an op that returns no tensor")

    def get_attr(self, node, shape):
        if shape is None:
            return
        key = node.target
        tensor = self.state.get(self.canonical(key))
        if isinstance(tensor, nn.Parameter) and tensor.is_floating_point():
            self.out[node] = tuple(self.param_axis(key, a) for a in range(len(shape)))
        elif tensor is not None and tensor.is_floating_point():
            self.out[node] = tuple(self.param_axis(key, a) for a in range(len(shape)))
            if self.is_layer_input(node):
                # a buffer fed to a layer as its input is a constant table (Swin V2's coordinates), the same
                # in both networks: moving its entries in one network and then averaging would mix them
                for pair in self.out[node]:
                    self.fix(pair, f"the buffer {key!r} is a layer's input (a constant table): kept fixed")
        else:  # a constant that no permutation can reorder
            self.out[node] = self.fixed_value(shape)

    def is_layer_input(self, node) -> bool:
        """Whether a conv or linear layer (module or function) reads ``node`` as its input."""
        for user in node.users:
            if not user.args or user.args[0] is not node:
                continue
            if user.op == "call_module" and isinstance(self.gm.get_submodule(user.target), (nn.Linear, *_CONV_MODULES)):
                return True
            if user.op == "call_function" and user.target in (_F.linear, *_CONV_FUNCTIONS):
                return True
        return False

    def module(self, node, mod):
        name = node.target
        args = self.tensor_args(node)
        if not args:
            self.fail(node, "no tensor input")
        src = args[0]
        v = self.out[src]
        if isinstance(mod, nn.Linear):
            self.consumer_inputs.append(src)
            self.bind_module(name, "weight", 1, v[-1])
            out_c = self.param_axis(f"{name}.weight", 0)
            self.bind_module(name, "bias", 0, out_c)
            self.producers.setdefault(self.spaces.find(out_c[0]), []).append(name)
            self.out[node] = v[:-1] + (out_c,)
        elif isinstance(mod, _CONV_MODULES + _CONV_TRANSPOSE_MODULES):
            self.conv_module(node, name, mod, src)
        elif isinstance(mod, _NORM_MODULES):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                self.bind_module(name, attr, 0, v[1])
            self.out[node] = v
        elif isinstance(mod, nn.GroupNorm):
            self.group_norm(mod.num_groups, v, [f"{name}.{a}" for a in ("weight", "bias") if f"{name}.{a}" in self.state])
            self.out[node] = v
        elif isinstance(mod, nn.LayerNorm):
            k = len(mod.normalized_shape)
            for attr in ("weight", "bias"):
                for j in range(k):
                    self.bind_module(name, attr, j, v[len(v) - k + j])
            self.out[node] = v
        elif isinstance(mod, nn.PReLU):
            if mod.num_parameters > 1:
                self.bind_module(name, "weight", 0, v[1])
            self.out[node] = v
        elif isinstance(mod, nn.MultiheadAttention):
            self.attention_module(node, name, mod)
        elif isinstance(mod, _RESHAPE_MODULES):
            self.out[node] = self.reshape(v, self.shape(src), self.shape(node))
        elif isinstance(mod, _POOL_MODULES):
            self.pool(node, v)
        elif isinstance(mod, _ELEMENTWISE_MODULES):
            self.elementwise(node, src)
        else:
            self.fail(node, f"unknown module type {type(mod).__name__}")

    def conv_module(self, node, name, mod, src):
        """Conv (or transposed conv) on dim 1: groups=1 starts a new space; depthwise keeps the input's
        (``out = m * in`` channels: each input unit owns ``m`` consecutive outputs); other groupings fix."""
        v = self.out[src]
        self.consumer_inputs.append(src)
        transposed = isinstance(mod, _CONV_TRANSPOSE_MODULES)
        out_channels = self.shape(node)[1]
        if mod.groups == 1:
            self.bind_module(name, "weight", 0 if transposed else 1, v[1])
            out_c = self.param_axis(f"{name}.weight", 1 if transposed else 0)
            self.producers.setdefault(self.spaces.find(out_c[0]), []).append(name)
        elif not transposed and mod.groups == mod.in_channels and out_channels % mod.groups == 0:
            out_c = (v[1][0], v[1][1] * (out_channels // mod.groups))
            self.bind_module(name, "weight", 0, out_c)
        else:
            self.fix(v[1], f"grouped convolution ({mod.groups} groups): channels may only move within a "
                           "group, so they are kept fixed")
            out_c = self.fresh(out_channels)
        self.bind_module(name, "bias", 0, out_c)
        self.out[node] = (v[0], out_c) + self.fixed_value(self.shape(node)[2:])

    def group_norm(self, num_groups, v, keys):
        if num_groups not in (1, self.size(v[1]) * v[1][1]):
            self.fix(v[1], f"GroupNorm with {num_groups} groups pools statistics within fixed channel groups")
            return
        for key in keys:
            self.bind(key, 0, v[1])

    def attention_module(self, node, name, mod):
        """``nn.MultiheadAttention`` on query ``[.., L, E]``, key ``[.., S, kdim]`` and value ``[.., S, vdim]``
        (batch first or not): the last axis of each input joins its projection's input axis and the
        output ``[.., L, E]`` is ``out_proj``'s space. The projections' rows are the query, key and value
        parts, each ``[heads, head_dim]``: the query and key parts share one permutation within each
        head, the value part and ``out_proj``'s input another, and all three one permutation of the
        heads (``bias_k`` / ``bias_v`` ``[1, 1, E]`` index the key and value parts)."""
        inputs = [self.arg(node, i, n) for i, n in enumerate(("query", "key", "value"))]
        if not all(isinstance(self.value(t), tuple) for t in inputs):
            self.fail(node, "query, key and value must be tensors")
        q = inputs[0]
        head, vo, parts = self.head_parts(mod.num_heads, mod.embed_dim)
        if mod._qkv_same_embed_dim:
            self.fused_projection(name, inputs, parts)
        else:
            self.separate_projections(node, name, inputs, parts)
        for attr, part in (("bias_k", parts[1]), ("bias_v", parts[2])):
            self.bind_module(name, attr, 2, (part, 1))
        for index, mask in ((3, "key_padding_mask"), (5, "attn_mask")):  # [N, S], [L, S] or [N * heads, L, S]
            for pair in self.value(self.arg(node, index, mask)) or ():
                self.fix(pair, "attention mask")
        merged = self.param_axis(f"{name}.out_proj.weight", 1)
        self.compose(merged[0], (head, vo))
        out_c = self.param_axis(f"{name}.out_proj.weight", 0)
        self.bind_module(f"{name}.out_proj", "bias", 0, out_c)
        self.producers.setdefault(self.spaces.find(out_c[0]), []).append(f"{name}.out_proj")
        attn = self.value(q)[:-1] + (out_c,)
        metas = node.meta.get("tensor_meta")
        second = _shape_of(metas[1]) if isinstance(metas, (tuple, list)) and len(metas) > 1 else None
        self.out[node] = [attn, self.fixed_value(second) if second is not None else None]

    def head_parts(self, heads, embed):
        """``(head, vo, parts)``: the spaces of one attention's ``heads`` heads, its value/output dims
        within a head, and its query, key and value parts of ``embed`` units, each ``[heads, embed //
        heads]``, query and key sharing one permutation within each head."""
        head, qk, vo = self.spaces.new(heads), self.spaces.new(embed // heads), self.spaces.new(embed // heads)
        parts = [self.spaces.new(embed) for _ in range(3)]
        for part, within in zip(parts, (qk, qk, vo)):
            self.compose(part, (head, within))
        return head, vo, parts

    def fused_projection(self, name, inputs, parts):
        """``in_proj_weight [3E, E]`` (and ``in_proj_bias [3E]``): its input axis is the last axis of query,
        key and value; its rows are the query, key and value ``parts`` (spaces of E units) in turn."""
        for t in inputs:
            self.bind(f"{name}.in_proj_weight", 1, self.value(t)[-1])
        rows = self.param_axis(f"{name}.in_proj_weight", 0)
        self.bind_module(name, "in_proj_bias", 0, rows)
        self.producers.setdefault(self.spaces.find(rows[0]), []).append(f"{name}.in_proj")
        self.cut_rows(rows, parts)

    def separate_projections(self, node, name, inputs, parts):
        """``q_proj_weight [E, E]``, ``k_proj_weight [E, kdim]``, ``v_proj_weight [E, vdim]`` (kdim or vdim
        not E): each one's input axis is the last axis of its own input (query, key, value) and its rows
        are its part; ``in_proj_bias [3E]`` is cut into the three parts."""
        for t, part, which in zip(inputs, parts, "qkv"):
            key = f"{name}.{which}_proj_weight"
            if key not in self.state:
                self.fail(node, f"separate q/k/v projections (kdim/vdim not embed_dim), but {key!r} is not a "
                                "state_dict tensor")
            self.bind(key, 1, self.value(t)[-1])
            self.bind(key, 0, (part, 1))
            self.labels[part] = f"{name}.{which}_proj"
        if f"{name}.in_proj_bias" in self.state:
            self.cut_rows(self.param_axis(f"{name}.in_proj_bias", 0), parts)

    def cut_rows(self, rows, parts):
        """``rows`` (a pair of 3E units) is the query, key and value ``parts`` at offsets 0, E and 2E."""
        embed = self.spaces.size[self.spaces.find(parts[0])]
        for i, part in enumerate(parts):
            self.segment(rows[0], i * embed, part)
            self.label(part, rows[0], i * embed, embed)

    def pool(self, node, v):
        """Pooling, resizing and padding: batch and channel axes kept, the others are new, fixed."""
        shape = self.shape(node)
        self.out[node] = v[:2] + self.fixed_value(shape[2:])
        for pair in v[2:]:
            self.fix(pair, "pooled, resized or padded")

    def elementwise(self, node, src):
        if self.shape(node) != self.shape(src):
            self.fail(node, f"an element-wise op changed the shape {self.shape(src)} -> {self.shape(node)}")
        self.out[node] = self.out[src]

    def function(self, node):
        t, fn, method = node.target, node.op == "call_function", node.op == "call_method"
        args = self.tensor_args(node)
        tuple_source = node.args and isinstance(self.value(node.args[0]), list)
        if fn and t is operator.getitem and tuple_source:
            self.out[node] = self.out[node.args[0]][node.args[1]]
        elif not args and fn and t is operator.getitem:
            self.fail(node, "indexes a value the analysis does not track")
        elif not args:
            self.out[node] = self.fixed_value(self.shape(node))  # a new tensor (torch.zeros, arange, ...)
        elif (fn and t in _ELEMENTWISE_FUNCTIONS) or (method and t in _ELEMENTWISE_METHODS):
            self.elementwise(node, node.args[0] if isinstance(node.args[0], fx.Node) else args[0])
        elif (fn and t in _JOIN_FUNCTIONS) or (method and t in _JOIN_METHODS):
            self.join(node, args)
        elif (fn and t in _RESHAPE_FUNCTIONS) or (method and t in _RESHAPE_METHODS):
            self.out[node] = self.reshape(self.out[node.args[0]], self.shape(node.args[0]), self.shape(node))
        elif (fn and t in _REORDER_FUNCTIONS) or (method and t in _REORDER_METHODS):
            self.reorder(node)
        elif (fn and t in _REDUCE_FUNCTIONS) or (method and t in _REDUCE_METHODS):
            self.reduce(node)
        elif fn and t in _POOL_FUNCTIONS:
            self.pool(node, self.out[node.args[0]])
        elif fn and t is _F.pad:
            self.pad(node)
        elif fn and t is operator.getitem:
            self.getitem(node)
        elif (fn and t in (torch.Tensor.expand, torch.broadcast_to)) or (method and t in ("expand", "expand_as")):
            self.expand(node)
        elif fn and t in _CAT_FUNCTIONS or fn and t is torch.stack:
            self.cat(node, stack=t is torch.stack)
        elif (fn and t in _SPLIT_FUNCTIONS) or (method and t in _SPLIT_METHODS):
            self.split(node, _SPLIT_FUNCTIONS.get(t, t))
        elif (fn and t in _MATMUL_FUNCTIONS) or (method and t in _MATMUL_METHODS):
            self.matmul(node, self.out[node.args[0]], self.out[node.args[1]])
        elif fn and t is torch.einsum:
            self.einsum(node)
        elif fn and t is _F.linear:
            self.linear_function(node)
        elif fn and t in _CONV_FUNCTIONS:
            self.conv_function(node)
        elif fn and t in (_F.batch_norm, _F.instance_norm):
            v = self.out[node.args[0]]
            for i, name in enumerate(("running_mean", "running_var", "weight", "bias"), start=1):
                self.unify_operand(node, i, name, v[1])
            self.out[node] = v
        elif fn and t is _F.layer_norm:
            self.layer_norm_function(node)
        elif fn and t is _F.group_norm:
            self.group_norm_function(node)
        elif fn and t is _F.scaled_dot_product_attention:
            self.attention_function(node)
        elif fn and t is torch.roll:
            self.roll(node)
        elif (fn and t in (torch.triu, torch.tril)) or (method and t in ("triu", "tril")):
            self.triangle(node)
        elif fn and getattr(t, "__module__", "").startswith("torchvision") and t.__name__ in _TORCHVISION_LEAVES:
            getattr(self, _TORCHVISION_LEAVES[t.__name__])(node)
        else:
            self.fail(node)

    def unify_operand(self, node, index, name, pair):
        """Operand ``name`` of ``node`` (a per-channel tensor, or None) indexes ``pair``'s units."""
        operand = self.value(self.arg(node, index, name))
        if operand is not None:
            if len(operand) != 1:
                self.fail(node, f"{name} is not a per-channel vector")
            self.unify(operand[0], pair)

    def join(self, node, args):
        """Element-wise op with broadcasting: aligned from the right, axes of the output's length (>1)
        share one space; broadcast axes (length 1) are constant along the output's axis."""
        out_shape = self.shape(node)
        rank = len(out_shape)
        result = [None] * rank
        for a in args:
            v, shape = self.out[a], self.shape(a)
            if len(shape) > rank:
                self.fail(node, f"operand {a.name!r} has more axes than the result")
            for i, (pair, length) in enumerate(zip(v, shape)):
                j = rank - len(shape) + i
                if length != out_shape[j] or length == 1:
                    continue
                if result[j] is None:
                    result[j] = pair
                else:
                    self.unify(result[j], pair)
        self.out[node] = tuple(p if p is not None else self.fresh(d) for p, d in zip(result, out_shape))

    def reshape(self, v, in_shape, out_shape):
        """A view that keeps the elements' order: axes merge (the outer one's units survive, with the
        merged axes as ``inner``) or split (the first part keeps the units where it is ``units x k``)."""
        result = [self.fresh(1) if d == 1 else None for d in out_shape]
        for pair, d in zip(v, in_shape):
            if d == 1:
                self.spaces.fix(pair[0])  # one unit: nothing to permute
        for ins, outs in _reshape_chunks(in_shape, out_shape):
            if len(ins) == 1 and len(outs) == 1:
                result[outs[0]] = v[ins[0]]
            elif len(outs) == 1 and all(v[i][1] == 1 for i in ins) and any(self.is_free(v[i]) for i in ins[1:]):
                result[outs[0]] = self.merged([v[i] for i in ins])  # heads back into one axis
            elif len(outs) == 1:
                for i in ins[1:]:
                    self.fix(v[i], f"merged into an inner position of axis {outs[0]}")
                first = v[ins[0]]
                result[outs[0]] = (first[0], first[1] * math.prod(in_shape[i] for i in ins[1:]))
            elif len(ins) == 1 and self.is_free(v[ins[0]]) and out_shape[outs[0]] % self.size(v[ins[0]]) == 0:
                s = v[ins[0]][0]
                result[outs[0]] = (s, out_shape[outs[0]] // self.size(v[ins[0]]))
                for j in outs[1:]:
                    result[j] = self.fresh(out_shape[j])
            elif len(ins) == 1 and v[ins[0]][1] == 1 and self.is_free(v[ins[0]]):
                factors = self.factored(v[ins[0]], [out_shape[j] for j in outs])  # e.g. [heads, head_dim]
                for j, f in zip(outs, factors):
                    result[j] = f
            else:
                for i in ins:
                    self.fix(v[i], f"split into axes of {[out_shape[j] for j in outs]} (e.g. a channel shuffle "
                                   "or attention heads): those units are kept fixed")
                for j in outs:
                    result[j] = self.fresh(out_shape[j])
        return tuple(result)

    # -- attention heads: factored and segmented spaces
    def factored(self, pair, lengths):
        """``pair``'s units split row-major into axes of ``lengths`` (``[heads, head_dim]``, or
        ``[3, heads, head_dim]`` for a fused qkv): one new space per axis, recorded as the factors of
        ``pair``'s space. Whether the split is a symmetry is decided by :meth:`close`."""
        factors = tuple(self.free(n) for n in lengths)
        self.compose(pair[0], tuple(f[0] for f in factors))
        return factors

    def merged(self, pairs):
        """Axes merged row-major into one (heads back into ``[N, T, heads * head_dim]``): a new space whose
        factors are theirs (:meth:`close` joins it with the space that was split into them)."""
        merged = self.free(math.prod(self.size(p) for p in pairs))
        self.compose(merged[0], tuple(p[0] for p in pairs))
        return merged

    def compose(self, space, factors):
        self.composites.append((space, tuple(factors), self.node.name))

    def segment(self, space, offset, part):
        self.segments.append((space, offset, part, self.node.name))

    def leading_factor(self, pair):
        """The index of a composite whose outer factor is ``pair``'s space (the q/k/v axis of a fused
        projection split into ``[3, heads, head_dim]``), else None."""
        root = self.spaces.find(pair[0])
        for i, (_, factors, _) in enumerate(self.composites):
            if len(factors) >= 2 and self.spaces.find(factors[0]) == root and pair[1] == 1:
                return i
        return None

    def part(self, index, p):
        """Part ``p`` of composite ``index`` cut along its outer factor (``q``, ``k`` or ``v`` of a fused
        qkv): ``(space of the part, {inner factor root: its copy})``. Each part gets its own copies of
        the inner factors, so q, k and v may be permuted differently; the part is recorded as a
        segment of the composite's space at offset ``p * part size``."""
        if (index, p) not in self.parts:
            whole, factors, _ = self.composites[index]
            inner = factors[1:]
            copies = [self.spaces.new(self.spaces.size[self.spaces.find(f)]) for f in inner]
            size = math.prod(self.spaces.size[c] for c in copies)
            space = copies[0] if len(copies) == 1 else self.spaces.new(size)
            if len(copies) > 1:
                self.compose(space, tuple(copies))
            self.segment(whole, p * size, space)
            self.label(space, whole, p * size, size)
            self.parts[(index, p)] = (space, {self.spaces.find(f): c for f, c in zip(inner, copies)})
        return self.parts[(index, p)]

    def label(self, space, whole, offset, size):
        producers = self.producers.get(self.spaces.find(whole))
        if producers:
            self.labels[space] = f"{producers[0]}[{offset}:{offset + size}]"

    def with_copies(self, value, mapping):
        """``value`` with every axis in a factor root of ``mapping`` moved to that factor's copy."""
        return tuple((mapping[self.spaces.find(s)], inner) if self.spaces.find(s) in mapping else (s, inner)
                     for s, inner in value)

    def segmented(self, pair, lengths):
        """``pair``'s units cut into consecutive parts of ``lengths`` (``qkv(x).chunk(3, -1)``): one new
        space per part, recorded as a segment of ``pair``'s space."""
        parts, offset = [], 0
        for n in lengths:
            space = self.spaces.new(n)
            self.segment(pair[0], offset, space)
            self.label(space, pair[0], offset, n)
            parts.append((space, 1))
            offset += n
        return parts

    def reorder(self, node):
        v, t = self.out[node.args[0]], node.target
        rank = len(v)
        rest = [a for a in node.args[1:]]
        if t == "permute" or t is torch.permute:
            dims = rest[0] if len(rest) == 1 and not isinstance(rest[0], int) else rest
            dims = _dims(dims if dims else node.kwargs.get("dims"), rank)
            order = list(dims)
        elif t in ("movedim",) or t is torch.movedim:
            src, dst = (rest + [node.kwargs.get(k) for k in ("source", "destination")][len(rest):])[:2]
            src, dst = _dims(src, rank), _dims(dst, rank)
            order = [None] * rank
            for s, d in zip(src, dst):
                order[d] = s
            remaining = iter(i for i in range(rank) if i not in src)
            order = [o if o is not None else next(remaining) for o in order]
        else:  # transpose / swapaxes / swapdims
            a, b = _dims(rest[:2], rank)
            order = list(range(rank))
            order[a], order[b] = b, a
        self.out[node] = tuple(v[i] for i in order)

    def reduce(self, node):
        v = self.out[node.args[0]]
        dims = self.arg(node, 1, "dim")
        keep = self.arg(node, 2, "keepdim", False)
        if isinstance(dims, fx.Node) or not isinstance(keep, bool):
            self.fail(node, "reduction over axes the analysis cannot read")
        dims = range(len(v)) if dims is None else _dims(dims, len(v))  # any symmetric reduction is invariant
        self.out[node] = tuple(self.fresh(1) if i in dims else p for i, p in enumerate(v) if keep or i not in dims)
        if len(self.out[node]) != len(self.shape(node)):
            self.fail(node, "the reduced shape does not match")

    def pad(self, node):
        v = self.out[node.args[0]]
        k = len(self.arg(node, 1, "pad")) // 2
        for pair in v[len(v) - k:]:
            self.fix(pair, "padded")
        self.out[node] = v[:len(v) - k] + self.fixed_value(self.shape(node)[len(v) - k:])

    def roll(self, node):
        v = self.out[node.args[0]]
        dims = self.arg(node, 2, "dims")
        if dims is None:
            self.fail(node, "roll over the flattened tensor")
        for d in _dims(dims, len(v)):
            self.fix(v[d], "rolled")
        self.out[node] = v

    def triangle(self, node):
        """``triu`` / ``tril`` of ``[.., R, C]`` (a causal mask): which entries it keeps depends on their
        positions along the last two axes, so those units are fixed; the leading axes are kept."""
        v = self.out[node.args[0]]
        if len(v) < 2:
            self.fail(node, "triu/tril of a tensor with fewer than two axes")
        for pair in v[-2:]:
            self.fix(pair, "triu/tril keeps one triangle of the last two axes")
        self.out[node] = v

    def getitem(self, node):
        """Basic indexing: ints drop an axis, full slices keep it, partial slices fix its units (one
        integer index tensor: :meth:`gather`)."""
        v, index = self.out[node.args[0]], node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, fx.Node) for i in index):
            self.gather(node, v, index)
            return
        if any(not (i is None or i is Ellipsis or isinstance(i, (int, slice))) for i in index):
            self.fail(node, "indexing the analysis cannot follow")
        used = sum(i is not None and i is not Ellipsis for i in index)
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (len(v) - used) + index[at + 1:]
        index = index + (slice(None),) * (len(v) - sum(i is not None for i in index))
        out_shape, result, axis, mapping = self.shape(node), [], 0, {}
        for i in index:
            if i is None:
                result.append(self.fresh(1))
                continue
            pair, length = v[axis], self.shape(node.args[0])[axis]
            axis += 1
            if isinstance(i, int) and (whole := self.leading_factor(pair)) is not None:
                mapping.update(self.part(whole, i % length)[1])  # qkv[0]: the query part
                self.fix(pair, None)
            elif isinstance(i, int):
                self.fix(pair, f"one entry of axis {axis - 1} is selected")
            elif i == slice(None) or len(range(*i.indices(length))) == length and (i.step or 1) == 1:
                result.append(pair)
            else:
                self.fix(pair, f"a slice of axis {axis - 1} is selected")
                result.append(self.fresh(len(range(*i.indices(length)))))
        if len(result) != len(out_shape):
            self.fail(node, "indexing the analysis cannot follow")
        self.out[node] = self.with_copies(tuple(result), mapping)

    def gather(self, node, v, index):
        """``x[..., idx, ...]``: one integer tensor ``idx`` and full slices elsewhere (a position-bias table
        ``[P, heads]`` read at a relative-position index). The indexed axis's units are gathered, so they are
        fixed; ``idx``'s axes take its place (``x[idx][i] = x[idx[i]]``: moving ``idx`` moves the result)."""
        tensors = [k for k, i in enumerate(index) if isinstance(i, fx.Node)]
        at, idx = tensors[0], self.value(index[tensors[0]])
        dtype = getattr(index[at].meta.get("tensor_meta"), "dtype", None)
        full = all(i == slice(None) for k, i in enumerate(index) if k != at)
        if len(tensors) != 1 or not full or not isinstance(idx, tuple) or dtype in (None, torch.bool) \
                or dtype.is_floating_point:
            self.fail(node, "indexing with tensors other than one integer index among full slices")
        self.fix(v[at], f"entries of axis {at} gathered by an index tensor")
        self.out[node] = v[:at] + idx + v[at + 1:]
        if len(self.out[node]) != len(self.shape(node)):
            self.fail(node, "indexing the analysis cannot follow")

    def expand(self, node):
        v, in_shape, out_shape = self.out[node.args[0]], self.shape(node.args[0]), self.shape(node)
        lead = len(out_shape) - len(in_shape)
        kept = [p if d == out_shape[lead + i] else self.fresh(out_shape[lead + i])
                for i, (p, d) in enumerate(zip(v, in_shape))]
        self.out[node] = self.fixed_value(out_shape[:lead]) + tuple(kept)

    def cat(self, node, stack):
        tensors = self.arg(node, 0, "tensors")
        values = [self.value(t) for t in tensors]
        if any(not isinstance(t, tuple) for t in values):
            self.fail(node, "concatenates values the analysis does not track")
        rank = len(self.shape(node))
        dim = _dims(self.arg(node, 1, "dim", 0), rank)[0]
        result = list(values[0]) if not stack else list(values[0][:dim]) + [None] + list(values[0][dim:])
        for v in values:
            parts = list(v) if not stack else list(v[:dim]) + [None] + list(v[dim:])
            for j, pair in enumerate(parts):
                if j == dim and not stack:
                    self.fix(pair, f"concatenated along axis {dim}: those units are kept fixed")
                elif j != dim:
                    self.unify(result[j], pair)
        result[dim] = self.fresh(self.shape(node)[dim])
        self.out[node] = tuple(result)

    def split(self, node, kind):
        """``unbind`` / ``chunk`` / ``split``: along the outer factor of a composite (``[3, heads, d]``)
        each result is one part with its own inner factors; along a free axis each result is a segment
        of its units (q, k and v of ``qkv(x).chunk(3, -1)``, the two halves of a GLU); else fixed."""
        v = self.out[node.args[0]]
        dim = _dims(self.arg(node, 1 if kind == "unbind" else 2, "dim", 0), len(v))[0]
        lengths = [_shape_of(meta)[dim] for meta in node.meta.get("tensor_meta")] if kind != "unbind" else None
        whole = self.leading_factor(v[dim])
        if whole is not None and (kind == "unbind" or set(lengths) == {1}):
            self.fix(v[dim], None)  # the parts keep their roles
            rest = (lambda p: v[:dim] + v[dim + 1:]) if kind == "unbind" else (lambda p: v[:dim] + (self.fresh(1),) + v[dim + 1:])
            count = self.shape(node.args[0])[dim]
            self.out[node] = [self.with_copies(rest(p), self.part(whole, p)[1]) for p in range(count)]
            return
        if kind != "unbind" and v[dim][1] == 1 and self.is_free(v[dim]) and sum(lengths) == self.size(v[dim]):
            self.out[node] = [v[:dim] + (part,) + v[dim + 1:] for part in self.segmented(v[dim], lengths)]
            return
        self.fix(v[dim], f"{kind} along axis {dim}: those units are kept fixed")
        parts = []
        for meta in node.meta.get("tensor_meta"):
            shape = _shape_of(meta)
            if kind == "unbind":
                parts.append(v[:dim] + v[dim + 1:])
            else:
                parts.append(v[:dim] + (self.fresh(shape[dim]),) + v[dim + 1:])
        self.out[node] = parts

    def matmul(self, node, a, b):
        """``a [..., n, k] @ b [..., k, m]``: the contracted axes share a space, batch axes broadcast."""
        if len(a) < 2 or len(b) < 2:
            self.fail(node, "matrix products of vectors")
        self.unify(a[-1], b[-2], "contracts")
        out_shape = self.shape(node)
        batch = []
        for j, length in enumerate(out_shape[:-2]):
            found = None
            for v, shape in ((a, self.shape(node.args[0])), (b, self.shape(node.args[1]))):
                i = j - (len(out_shape) - len(shape))
                if i >= 0 and shape[i] == length and length > 1:
                    found = v[i] if found is None else (self.unify(found, v[i]) or found)
            batch.append(found if found is not None else self.fresh(length))
        self.out[node] = tuple(batch) + (a[-2], b[-1])

    def einsum(self, node):
        """``torch.einsum(equation, *operands)`` (or the operands as one list), e.g. ``"bhid,bhjd->bhij"``
        on q ``[B, H, L, d]`` and k ``[B, H, S, d]``: every operand axis that carries a subscript letter
        joins that letter's space (a letter missing from the output is contracted, a kept one is a batch
        axis such as the heads); axes of length 1 broadcast. The output's axis for a letter is its space."""
        equation, operands = node.args[0], list(node.args[1:])
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = list(operands[0])
        if not isinstance(equation, str):
            self.fail(node, "einsum in sublist form (operand, [axes], ...) or with an equation that is not a "
                            "constant string")
        values = [self.value(o) for o in operands]
        if not all(isinstance(v, tuple) for v in values):
            self.fail(node, "einsum of values the analysis does not track")
        out_shape = self.shape(node)
        try:
            terms, output = _einsum_subscripts(equation, [len(v) for v in values])
        except ValueError as e:
            self.fail(node, f"einsum {equation!r}: {e}")
        if len(output) != len(out_shape):
            self.fail(node, f"einsum {equation!r}: {len(output)} output subscripts for {len(out_shape)} axes")
        pairs = {}
        for term, v, shape in zip(terms, values, (self.shape(o) for o in operands)):
            for letter, pair, length in zip(term, v, shape):
                if length == 1:
                    continue  # broadcast (or a single unit)
                if letter in pairs:
                    self.unify(pairs[letter], pair, "einsum keeps" if letter in output else "einsum contracts")
                else:
                    pairs[letter] = pair
        self.out[node] = tuple(pairs.get(letter) or self.fresh(n) for letter, n in zip(output, out_shape))

    def weight_name(self, node, index, name):
        w = self.arg(node, index, name)
        if not (isinstance(w, fx.Node) and w.op == "get_attr"):
            return None
        return w.target.rsplit(".", 1)[0]

    def linear_function(self, node):
        x, w = self.out[node.args[0]], self.value(self.arg(node, 1, "weight"))
        self.consumer_inputs.append(node.args[0])
        self.unify(x[-1], w[1], "feeds")
        self.unify_operand(node, 2, "bias", w[0])
        producer = self.weight_name(node, 1, "weight")
        if producer is not None:
            self.producers.setdefault(self.spaces.find(w[0][0]), []).append(producer)
        self.out[node] = x[:-1] + (w[0],)

    def conv_function(self, node):
        x, w = self.out[node.args[0]], self.value(self.arg(node, 1, "weight"))
        groups = self.arg(node, 6, "groups", 1)
        self.consumer_inputs.append(node.args[0])
        out_shape = self.shape(node)
        if groups == 1:
            self.unify(x[1], w[1], "feeds")
            out_c = w[0]
            producer = self.weight_name(node, 1, "weight")
            if producer is not None:
                self.producers.setdefault(self.spaces.find(out_c[0]), []).append(producer)
        elif groups == self.shape(node.args[0])[1] == out_shape[1]:
            out_c = x[1]
            self.unify(w[0], out_c)
        else:
            self.fix(x[1], f"grouped convolution ({groups} groups): channels kept fixed")
            self.fix(w[0], "grouped convolution")
            out_c = self.fresh(out_shape[1])
        self.unify_operand(node, 2, "bias", out_c)
        self.out[node] = (x[0], out_c) + self.fixed_value(out_shape[2:])

    def layer_norm_function(self, node):
        v = self.out[node.args[0]]
        shape = self.arg(node, 1, "normalized_shape")
        k = len(shape) if isinstance(shape, (tuple, list)) else 1
        for index, name in ((2, "weight"), (3, "bias")):
            operand = self.value(self.arg(node, index, name))
            for j, pair in enumerate(operand or ()):
                self.unify(pair, v[len(v) - k + j])
        self.out[node] = v

    def group_norm_function(self, node):
        v = self.out[node.args[0]]
        groups = self.arg(node, 1, "num_groups")
        if groups not in (1, self.shape(node.args[0])[1]):
            self.fix(v[1], f"GroupNorm with {groups} groups pools statistics within fixed channel groups")
            for index, name in ((2, "weight"), (3, "bias")):
                operand = self.value(self.arg(node, index, name))
                if operand is not None:
                    self.fix(operand[0], "GroupNorm")
        else:
            self.unify_operand(node, 2, "weight", v[1])
            self.unify_operand(node, 3, "bias", v[1])
        self.out[node] = v

    def attention_function(self, node):
        """``softmax(q k^T) v`` for ``[..., L, E]`` q, ``[..., S, E]`` k and ``[..., S, Ev]`` v."""
        q, k, v = (self.out[a] for a in node.args[:3])
        self.unify(q[-1], k[-1], "contracts")
        self.unify(k[-2], v[-2], "contracts")
        shapes = [self.shape(a) for a in node.args[:3]]
        for j in range(3, min(len(t) for t in (q, k, v)) + 1):  # batch axes, the heads among them
            axes = [(t[-j], s[-j]) for t, s in zip((q, k, v), shapes)]
            if len({n for _, n in axes}) == 1 and axes[0][1] > 1:
                for pair, _ in axes[1:]:
                    self.unify(axes[0][0], pair, "attends with")
        mask = self.value(self.arg(node, 3, "attn_mask"))
        for pair in mask or ():
            self.fix(pair, "attention mask")
        self.out[node] = q[:-1] + (v[-1],)

    def window_attention(self, node):
        """torchvision's ``shifted_window_attention(x [B, H, W, C], qkv_weight [3C, C], proj_weight [C, C],
        relative_position_bias [1, heads, W*W, W*W], window_size, num_heads, ..., qkv_bias [3C], proj_bias
        [C], logit_scale [heads, 1, 1])``: C joins ``qkv_weight``'s input axis, the output's last axis is
        ``proj_weight``'s. ``qkv_weight``'s rows are ``[3, heads, head_dim]`` (:meth:`window_heads`); the
        position bias's axis 1 and Swin V2's ``logit_scale`` axis 0 index the heads alone
        (:meth:`per_head`). The (padded, rolled, windowed) spatial axes stay fixed."""
        x = self.out[node.args[0]]
        qkv, proj = self.value(self.arg(node, 1, "qkv_weight")), self.value(self.arg(node, 2, "proj_weight"))
        self.unify(x[-1], qkv[1], "feeds")
        self.unify_operand(node, 9, "qkv_bias", qkv[0])
        bias, scale = (self.value(self.arg(node, i, n)) for i, n in ((3, "relative_position_bias"), (11, "logit_scale")))
        head = self.window_heads(node, qkv, proj)
        per_head = self.per_head(head, self.weight_name(node, 1, "qkv_weight")) if head is not None else None
        for operand, axis in ((bias, 1), (scale, 0)):
            for j, pair in enumerate(operand or ()):
                if j != axis:
                    self.fix(pair, "a position in the attention window")
                elif head is None:
                    self.fix(pair, "the attention heads are kept in place")
                else:
                    self.unify(pair, per_head, "indexes the attention heads with")
        if name_of_weight := self.weight_name(node, 2, "proj_weight"):
            self.producers.setdefault(self.spaces.find(proj[0][0]), []).append(name_of_weight)
        self.unify_operand(node, 10, "proj_bias", proj[0])
        for pair in x[1:-1]:
            self.fix(pair, "windowed")
        self.out[node] = x[:1] + self.fixed_value(self.shape(node)[1:-1]) + (proj[0],)

    def window_heads(self, node, qkv, proj):
        """The heads of a ``shifted_window_attention`` node, laid out like ``nn.MultiheadAttention``'s
        (:meth:`attention_module`): ``qkv`` (``qkv_weight``'s value, rows ``[3, heads, head_dim]``) is cut
        into the query, key and value parts; query and key share one permutation within each head, value
        and ``proj`` (``proj_weight``'s value, input axis ``[heads, head_dim]``) another, all of them one
        permutation of the heads. Returns the heads' space, or None (all fixed) for another layout."""
        heads, embed = self.arg(node, 5, "num_heads"), self.size(proj[1]) * proj[1][1]
        rows = qkv[0]
        if not (isinstance(heads, int) and heads > 0 and embed % heads == 0 and rows[1] == proj[1][1] == 1
                and self.size(rows) == 3 * embed):
            why = f"qkv_weight rows are not [3, {heads}, {embed} // {heads}]: attention heads kept fixed"
            self.fix(rows, why)
            self.fix(proj[1], why)
            return None
        if name_of_weight := self.weight_name(node, 1, "qkv_weight"):
            self.producers.setdefault(self.spaces.find(rows[0]), []).append(name_of_weight)
        head, vo, parts = self.head_parts(heads, embed)
        self.cut_rows(rows, parts)
        self.compose(proj[1][0], (head, vo))
        return head

    def per_head(self, head, name=None):
        """A new pair for axes that index the heads of ``head`` alone (one entry per head: a position-bias
        table's heads axis, Swin V2's ``logit_scale``): a space of ``[heads, 1]`` factors, so that it is a
        head group of one dimension per head that moves with the heads (:class:`Group`), labelled
        ``"<name>[heads]"`` (``name``: the attention's qkv projection)."""
        space = self.spaces.new(self.spaces.size[head])
        self.compose(space, (head, self.spaces.new(1, fixed=True)))
        if name is not None:
            self.labels[space] = f"{name}[heads]"
        return space, 1

    def patch_merging_pad(self, node):
        """torchvision's ``_patch_merging_pad``: 2 x 2 neighbours concatenated along the channels."""
        x = self.out[node.args[0]]
        for pair in x[-3:]:
            self.fix(pair, "2 x 2 patches concatenated along the channels: those units are kept fixed")
        self.out[node] = x[:-3] + self.fixed_value(self.shape(node)[-3:])

    def position_bias(self, node):
        """torchvision's ``_get_relative_position_bias(table [P, heads], index, window_size)`` -> ``[1,
        heads, N, N]``: table rows gathered by the (fixed) index buffer, so the table's heads axis is the
        output's axis 1 and its positions stay fixed; any other layout is fixed as a whole."""
        source = self.arg(node, 0, "relative_position_bias_table")
        table, shape = self.value(source), self.shape(node)
        if not (table is not None and len(table) == 2 and len(shape) == 4 and self.shape(source)[1] == shape[1]):
            self.fix_all(node, "read by a position-bias op of an unknown layout")
            self.out[node] = self.fixed_value(shape)
            return
        self.fix(table[0], "relative positions gathered by an index")
        for a in node.all_input_nodes:
            for pair in self.value(a) if a is not source and isinstance(self.value(a), tuple) else ():
                self.fix(pair, "the index of a position-bias op")
        self.out[node] = (self.fresh(1), table[1]) + self.fixed_value(shape[2:])


def _reshape_chunks(in_shape, out_shape):
    """Group the axes of a reshape (length-1 axes left out): ``[(input axes, output axes)]`` whose
    lengths have equal products."""
    ins = [i for i, d in enumerate(in_shape) if d != 1]
    outs = [j for j, d in enumerate(out_shape) if d != 1]
    chunks, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        ci, cj = [ins[i]], [outs[j]]
        pi, pj = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                ci.append(ins[i])
                pi *= in_shape[ins[i]]
                i += 1
            else:
                cj.append(outs[j])
                pj *= out_shape[outs[j]]
                j += 1
        chunks.append((ci, cj))
    return chunks


def _einsum_subscripts(equation: str, ranks: list) -> tuple:
    """An einsum ``equation`` (spaces allowed) on operands of ``ranks`` -> ``(terms, output)``: one string
    of subscripts per operand, one character per axis, and the output's. ``...`` becomes the same
    placeholder characters in every term, aligned from the right (broadcast batch axes); without ``->``
    the output is ``...`` and the letters used once, sorted. Raises ``ValueError`` (why) on another form."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    if "->" in rhs:
        raise ValueError("more than one '->'")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"{len(terms)} operand subscripts for {len(ranks)} operands")
    for term in terms + ([rhs] if arrow else []):
        body = term.replace("...", "")
        if term.count("...") > 1 or body and not (body.isascii() and body.isalpha()):
            raise ValueError(f"subscripts {term!r} are not letters with at most one '...'")
    extra = [rank - len(term.replace("...", "")) if "..." in term else 0 for term, rank in zip(terms, ranks)]
    if any(e < 0 for e in extra) or any("..." not in t and len(t) != r for t, r in zip(terms, ranks)):
        raise ValueError(f"subscripts {terms} do not match operands of {ranks} axes")
    if "..." in rhs and not any("..." in t for t in terms):
        raise ValueError("'...' in the output but in no operand")
    ellipsis = "".join(chr(0x100 + i) for i in range(max(extra, default=0)))  # non-ASCII placeholders
    terms = [t.replace("...", ellipsis[len(ellipsis) - e:] if e else "") for t, e in zip(terms, extra)]
    letters = "".join(terms)
    if not arrow:
        rhs = "..." + "".join(sorted(c for c in set(letters) if c.isascii() and letters.count(c) == 1))
    output = rhs.replace("...", ellipsis)
    if len(set(output)) != len(output) or not set(output) <= set(letters):
        raise ValueError(f"output subscripts {rhs!r} repeat a letter or name one no operand has")
    return terms, output


def _aliases(state: dict) -> dict:
    """``key -> first key holding the same tensor`` for tied weights (one module's parameter under
    several names)."""
    first, alias = {}, {}
    for key, t in state.items():
        ident = (t.data_ptr(), tuple(t.shape), t.dtype) if t.numel() else id(t)
        alias[key] = first.setdefault(ident, key)
    return alias


def _describe(gm, node):
    if node.op == "call_module":
        return f"call_module {node.target}: {type(gm.get_submodule(node.target)).__name__}"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
    return f"{node.op} {target}"


# ---------------------------------------------------------------- where a value's channels are
_LAST_AXIS_MODULES = (nn.Linear, nn.LayerNorm, nn.MultiheadAttention)
_DIM1_MODULES = _CONV_MODULES + _CONV_TRANSPOSE_MODULES + _NORM_MODULES + (nn.GroupNorm,)


def layer_channel_axis(gm: fx.GraphModule, node: fx.Node):
    """The channel axis that ``node``'s op itself decides, from the graph alone: ``-1`` (the last axis)
    for a Linear, a LayerNorm over one axis or attention (``[N, ..., D]``), ``1`` for a conv or a
    BatchNorm-like layer (``[N, C, *]``); None for any other op."""
    mod = gm.get_submodule(node.target) if node.op == "call_module" else None
    if isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) != 1:
        return None
    if isinstance(mod, _LAST_AXIS_MODULES) or node.op == "call_function" and node.target in (
            _F.linear, _F.scaled_dot_product_attention):
        return -1
    if isinstance(mod, _DIM1_MODULES) or node.op == "call_function" and node.target in _CONV_FUNCTIONS:
        return 1
    return None


def channel_axes(model: nn.Module, example: torch.Tensor = None) -> dict:
    """``node name -> the axis that holds its channels`` in ``trace(model)``: 1 for ``[N, C, *]`` maps,
    the last axis for the ``[N, T, D]`` tokens of a transformer (where a Linear or LayerNorm acts).

    With ``example`` (a batch) the graph analysis of :func:`permutation_spec` decides it for every node
    (non-negative axes): the axis whose units a layer wrote, preferring one that a permutation group
    indexes (a residual stream) -- so also after permutes, views and additions. Without it, or where the
    analysis stops at an op it does not know, a node takes its layer's axis (:func:`layer_channel_axis`)
    or, through element-wise ops and additions, that of its first operand that has one (``-1`` for the
    last axis); the rest are 1."""
    gm = trace(model)
    axes = _graph_channel_axes(gm)
    if example is None:
        return axes
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(as_input(example[:2], gm))
        an = _Analysis(gm, gm.state_dict(keep_vars=True))
        an.run()
        an.close()
    except ValueError:
        return axes  # an op the analysis does not know: the graph alone decides
    made = {an.spaces.find(s) for s in an.producers}
    for node, value in an.out.items():
        if not isinstance(value, tuple) or len(value) < 2:
            continue
        axis = _value_channel_axis(an.spaces, made, value)
        if axis is not None:
            axes[node.name] = axis
        elif axes[node.name] < 0:
            axes[node.name] %= len(value)
    return axes


def _value_channel_axis(sp, made: set, value: tuple):
    """The axis of a node's ``value`` (one ``(space, inner)`` pair per axis) that holds its channels: the
    last axis after the batch whose units a permutation may move, else the last whose units a layer
    wrote (``made``: those spaces' roots), else None."""
    roots = [sp.find(pair[0]) for pair in value]
    free = [i for i in range(1, len(value)) if not sp.is_fixed(roots[i]) and sp.size[roots[i]] > 1]
    written = [i for i in range(1, len(value)) if roots[i] in made]
    return (free or written or [None])[-1]


def _graph_channel_axes(gm: fx.GraphModule) -> dict:
    """:func:`channel_axes` from the graph alone (no shapes): see there."""
    axes = {}
    for node in gm.graph.nodes:
        axis = layer_channel_axis(gm, node)
        if axis is None and _keeps_axes(gm, node):
            axis = next((axes[a.name] for a in node.all_input_nodes if axes.get(a.name) is not None), None)
        elif axis is None and node.op == "call_function" and node.target is operator.getitem:
            source = node.args[0]  # the attention output of nn.MultiheadAttention's (output, weights)
            axis = -1 if node.args[1] == 0 and layer_channel_axis(gm, source) == -1 else None
        axes[node.name] = axis
    return {name: 1 if axis is None else axis for name, axis in axes.items()}


def _keeps_axes(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An element-wise op or an addition/product (with broadcasting): every axis stays where it is."""
    t = node.target
    if node.op == "call_module":
        return isinstance(gm.get_submodule(t), _ELEMENTWISE_MODULES)
    if node.op == "call_function":
        return t in _ELEMENTWISE_FUNCTIONS or t in _JOIN_FUNCTIONS
    return node.op == "call_method" and (t in _ELEMENTWISE_METHODS or t in _JOIN_METHODS)


# ---------------------------------------------------------------- building the spec
def permutation_spec(model: nn.Module, example_input: torch.Tensor, verify: bool = True,
                     rtol: float | None = None, heads: bool = True) -> PermutationSpec:
    """Trace ``model`` and group every (parameter or buffer, axis) that must share one permutation.

    ``example_input``: one batch (``[N, ...]``, any N >= 1) used to propagate shapes; the model is
    run on a copy, in eval mode, so its BatchNorm statistics are untouched. ``verify`` (default)
    checks the result on that input (:func:`verify_spec`, relative tolerance ``rtol``): a group
    that does not keep the network's function raises ``ValueError`` naming it and its graph
    nodes. Returns a :class:`PermutationSpec` whose groups are named after the layer that starts
    them; :meth:`PermutationSpec.summary` lists them and says which channels stay fixed and why.

    ``heads=False`` (for comparisons only) then turns every attention head group into a plain group of
    independent units (``heads=1``, no head set), as a spec finder that ignores heads would describe it:
    its permutations may move dimensions between heads, which changes the network's function (the
    verification runs on the head-structured groups first).
    """
    model = copy_model(model).eval()
    gm = trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(as_input(example_input[:2], model))
    an = _Analysis(gm, gm.state_dict(keep_vars=True))
    an.run()
    spec = _assemble(an)
    check_spec(spec, model)
    if verify:
        verify_spec(model, spec, example_input, rtol)
    if not heads:
        spec.groups = {name: replace(g, heads=1, head_set=None, within=True) for name, g in spec.groups.items()}
    return spec


def _assemble(an: _Analysis) -> PermutationSpec:
    """The groups of an analysed graph: one per free space that indexes some state_dict entry (a space
    cut into parts gives its entries to the parts; a space of ``[heads, head_dim]`` factors is a head
    group, :class:`Group`)."""
    an.close()
    sp = an.spaces
    entries, sites = _placed_entries(an)
    order = [sp.find(p[0]) for v in an.out.values() for val in (v if isinstance(v, list) else [v])
             for p in val or ()] + list(entries)
    heads = _head_factors(an)
    names, groups, notes = {}, {}, []
    for root in dict.fromkeys(r for r in order if r in entries):
        outer, inner = heads.get(root, (None, None))
        if outer is not None and sp.is_fixed(outer) and sp.is_fixed(inner):
            continue  # neither the heads nor the dimensions inside them may move
        producers = list(dict.fromkeys(p for s, ps in an.producers.items() if sp.find(s) == root for p in ps))
        label = next((an.labels[s] for s in an.labels if sp.find(s) == root), None)
        name = producers[0] if producers else label or _first_node(an, root) or entries[root][0].key
        while name in groups:
            name += "_"
        names[root] = name
        groups[name] = Group(size=sp.size[root], entries=entries[root], residual=len(producers) > 1,
                             nodes=list(dict.fromkeys(sites[root])))
        if outer is not None:
            groups[name].heads, groups[name].within = sp.size[outer], not sp.is_fixed(inner)
            head_set = None if sp.is_fixed(outer) else names.setdefault(("heads", outer), name)
            groups[name].head_set = head_set
    axes = _statistics_axes(an)
    node_groups = _node_groups(an, names, axes)
    for node in dict.fromkeys(an.consumer_inputs):
        name, axis = _probe(an, names, node_groups, axes, node)
        if name is not None:
            groups[name].probes.append(node.name)
            if axis != 1:
                groups[name].probe_axes[node.name] = axis
    notes += [n for root, ns in an.notes.items() for n in ns]
    for name, g in groups.items():
        if not g.probes:
            notes.append(f"group {name!r}: its units never sit one entry each on the channel axis of a conv or "
                         "linear input whose other axes are positions (a query/key group meets only in q k^T; an "
                         "MLP-Mixer's token-MLP units lie along permuted channels): activation matching aligns "
                         "it by weight matching")
    return PermutationSpec(groups=groups, node_groups=node_groups, notes=notes, mixed_nodes=_mixed_nodes(an, axes))


def _probe(an: _Analysis, names: dict, node_groups: dict, axes: dict, node) -> tuple:
    """``(group, axis)`` that the conv/linear input ``node`` probes, else ``(None, None)``: the group on
    its channel axis (``node_groups``: one entry each, dim 1 of ``[N, C, *]``, the last axis of ``[N, T,
    D]`` tokens or of an MLP-Mixer's token-MLP hidden units ``[N, D, hidden]``), else the group on dim 1 of a flattened
    ``[N, C * inner]`` map whose channel axis holds no other group. Only where every other axis but
    the batch is fixed (positions: pixels, tokens), so that a sample is one position in both networks;
    an MLP-Mixer's token-MLP hidden units ``[N, D, hidden]`` lie along a permuted ``D``: no probe."""
    sp, value = an.spaces, an.out[node]
    if not isinstance(value, tuple) or len(value) < 2:
        return None, None
    if node.name in node_groups:
        name, axis = node_groups[node.name], axes[node]
    else:
        root = sp.find(value[1][0])
        name, axis = names.get(root), 1
    others = [sp.find(s) for i, (s, _) in enumerate(value) if i not in (0, axis)]
    if name is None or not all(sp.is_fixed(r) or sp.size[r] == 1 for r in others):
        return None, None
    return name, axis


def _statistics_axes(an: _Analysis) -> dict:
    """``node -> axis`` (non-negative) on which statistics take the node's channels, as
    :func:`repairlib.stats.value_axes` finds it: the layer's own axis where its op decides it
    (:func:`layer_channel_axis`; a Linear's last axis also where that holds positions, as the token
    positions ``T`` of an MLP-Mixer's ``[N, D, T]`` token-MLP output), else :func:`_value_channel_axis`;
    absent where neither decides or the value has fewer than two axes."""
    sp, made, out = an.spaces, {an.spaces.find(s) for s in an.producers}, {}
    for node, value in an.out.items():
        if not isinstance(value, tuple) or len(value) < 2:
            continue
        axis = layer_channel_axis(an.gm, node)
        axis = _value_channel_axis(sp, made, value) if axis is None else axis % len(value)
        if axis is not None:
            out[node] = axis
    return out


def _node_groups(an, names: dict, axes: dict) -> dict:
    """``node name -> group`` of the units on the node's channel axis (``axes``, :func:`_statistics_axes`),
    where one group's units lie there one entry each; statistics measured per channel at that node are
    permuted with that group."""
    sp, out = an.spaces, {}
    for node, axis in axes.items():
        pair = an.out[node][axis]
        if pair[1] == 1 and sp.find(pair[0]) in names:
            out[node.name] = names[sp.find(pair[0])]
    return out


def _mixed_nodes(an, axes: dict) -> set:
    """Names of the nodes whose value ``[N, ..., C, ...]`` has a space that a permutation may move on an
    axis other than the batch (0) and its channel axis (``axes``): :attr:`PermutationSpec.mixed_nodes`."""
    return {node.name for node, axis in axes.items()
            if any(an.is_free(pair) for i, pair in enumerate(an.out[node]) if i not in (0, axis))}


def _placed_entries(an: _Analysis) -> tuple:
    """``(root -> [Entry], root -> [graph nodes])``: every bound (key, axis) given to
    the free space that indexes it, or, for a space cut into parts, to its parts at their offsets."""
    sp = an.spaces
    layout = {root: sorted((offset, sp.find(ps[0])) for offset, ps in parts.items())
              for root, parts in an.segment_layout().items()}
    keys_of, entries, sites = {}, {}, {}
    for key, canonical in an.alias.items():
        keys_of.setdefault(canonical, []).append(key)

    def place(root, key, axis, inner, start):
        if root in layout:
            for offset, part in layout[root]:
                place(part, key, axis, inner, start + offset * inner)
        elif not sp.is_fixed(root) and sp.size[root] > 1:
            for alias in keys_of.get(key, [key]):
                entries.setdefault(root, []).append(Entry(alias, axis, inner, start))
            sites.setdefault(root, []).extend(an.sites.get((key, axis), []))

    for (key, axis), (space, inner) in an.bound.items():
        place(sp.find(space), key, axis, inner, 0)
    return entries, sites


def _head_factors(an: _Analysis) -> dict:
    """``root -> (heads root, head-dim root)`` of every space that is ``[heads, head_dim]``."""
    sp = an.spaces
    return {sp.find(s): (sp.find(fs[0]), sp.find(fs[1])) for s, fs, _ in an.composites
            if len(fs) == 2 and not sp.is_fixed(s)}


def _first_node(an: _Analysis, root):
    for node, value in an.out.items():
        for val in value if isinstance(value, list) else [value]:
            if any(an.spaces.find(p[0]) == root for p in val or ()):
                return node.name
    return None


def check_spec(spec: PermutationSpec, model: nn.Module) -> None:
    """Raise ``ValueError`` if an entry names a missing tensor or an axis of the wrong length."""
    state = model.state_dict()
    sliced = {(key, axis) for g in spec.groups.values() for key, axis, _, start in g.entries if start}
    for name, g in spec.groups.items():
        where = f" (graph nodes {', '.join(g.nodes[:6])})" if g.nodes else ""
        for key, axis, inner, start in g.entries:
            if key not in state:
                raise ValueError(f"spec group {name!r}{where} names {key!r}, which the model does not have")
            whole = state[key].shape[axis]
            if whole < start + g.size * inner if (key, axis) in sliced else whole != g.size * inner:
                raise ValueError(
                    f"spec group {name!r}{where}: {key!r} axis {axis} has {whole} entries, "
                    f"expected {g.size} x {inner}" + (f" from entry {start} on" if start else "")
                )


# ---------------------------------------------------------------- verification
def permute_axis(t: torch.Tensor, axis: int, inner: int, perm: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Reorder ``t`` along ``axis``, viewed as ``[len(perm), inner]`` from entry ``start`` on:
    ``t'[.., start + i, ..] = t[.., start + perm[i], ..]`` (per block of ``inner``); the rest of the
    axis is kept. A new tensor."""
    perm = perm.to(t.device)
    length = len(perm) * inner
    if start or length != t.shape[axis]:
        head, part, tail = t.split((start, length, t.shape[axis] - start - length), dim=axis)
        return torch.cat((head, permute_axis(part, axis, inner, perm), tail), dim=axis)
    if inner == 1:
        return t.index_select(axis, perm)
    shape = t.shape
    split = shape[:axis] + (len(perm), inner) + shape[axis + 1:]
    return t.reshape(split).index_select(axis, perm).reshape(shape)


def _permuted_state(state: dict, spec: PermutationSpec, perms: dict) -> dict:
    """The state_dict tensors that ``perms`` (``group -> LongTensor``) changes, permuted."""
    out = {}
    for g, perm in perms.items():
        for key, axis, inner, start in spec.groups[g].entries:
            out[key] = permute_axis(out.get(key, state[key]), axis, inner, perm, start)
    return out


# ---------------------------------------------------------------- head-structured permutations
def compose_heads(head_perm: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """``head_perm [H]`` and ``within [H, d]`` (row h: the permutation inside new head h) -> the
    flat ``[H * d]`` permutation ``perm[h * d + i] = head_perm[h] * d + within[h, i]``."""
    d = within.shape[1]
    return (head_perm[:, None] * d + within).reshape(-1)


def split_heads(perm: torch.Tensor, heads: int):
    """The inverse of :func:`compose_heads`: ``(head_perm [H], within [H, d])``, or None when ``perm``
    does not move whole heads."""
    d = len(perm) // heads
    blocks = perm.reshape(heads, d)
    head_perm = blocks[:, 0] // d
    if not torch.equal(blocks // d, head_perm[:, None].expand(heads, d)):
        return None
    return head_perm, blocks - head_perm[:, None] * d


def is_structured(perm: torch.Tensor, group: Group) -> bool:
    """Whether ``perm`` keeps ``group``'s function: whole heads moved (none, without a head set), the
    dimensions inside each head kept unless ``group.within``. Any permutation for a plain group."""
    if group.heads == 1:
        return True
    parts = split_heads(torch.as_tensor(perm), group.heads)
    if parts is None:
        return False
    head_perm, within = parts
    heads_ok = group.head_set is not None or torch.equal(head_perm, torch.arange(group.heads))
    return heads_ok and (group.within or torch.equal(within, torch.arange(group.head_dim).expand_as(within)))


def random_group_permutations(spec: PermutationSpec, gen: torch.Generator, groups=None, move_heads=True) -> dict:
    """A random permutation of each of ``groups`` (default all) that keeps the function: any one for a
    plain group (``torch.randperm``); for head groups a random ``sigma`` shared by the head set (the
    identity unless ``move_heads``) and a random ``tau_h`` inside every head (where ``within``)."""
    sigma = {}
    out = {}
    for name in spec.groups if groups is None else groups:
        g = spec.groups[name]
        if g.heads == 1:
            out[name] = _moving_permutation(g.size, gen)
            continue
        if move_heads and g.head_set is not None and g.head_set not in sigma:
            sigma[g.head_set] = _moving_permutation(g.heads, gen)
        heads = sigma.get(g.head_set, torch.arange(g.heads)) if move_heads else torch.arange(g.heads)
        within = (torch.stack([torch.randperm(g.head_dim, generator=gen) for _ in range(g.heads)]) if g.within
                  else torch.arange(g.head_dim).repeat(g.heads, 1))
        out[name] = compose_heads(heads, within)
    return out


def _tensors(output) -> list:
    """Every tensor in a (nested) model output, as float."""
    if isinstance(output, torch.Tensor):
        return [output.detach().double()]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in _tensors(o)]
    return []


def _perturb(model: nn.Module, seed: int) -> None:
    """Give every constant float parameter and buffer generic values (in place): a zero-initialised
    gate or a uniform BatchNorm statistic would otherwise hide a wrong spec from the check."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if not t.is_floating_point() or t.numel() < 2 or not torch.isfinite(t).all() or t.min() != t.max():
                continue
            noise = 0.1 * torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t)
            if float(t.min()) > 0:  # positive statistics (variances) stay positive
                t.mul_(noise.exp())
            else:
                t.add_(noise * (float(t.abs().max()) + 0.1))


def _default_rtol(dtype) -> float:
    return max(1e-4, 100 * torch.finfo(dtype).eps)


def verify_spec(model: nn.Module, spec: PermutationSpec, example_input: torch.Tensor, rtol: float | None = None,
                seed: int = 0) -> None:
    """Raise ``ValueError`` unless permuting each group of ``spec`` keeps ``model``'s function.

    On a copy of ``model`` with perturbed weights (so that no zero-initialised layer hides a
    mistake), every group in turn gets a random non-identity permutation, and finally all groups at
    once; the output on ``example_input[:2]`` must stay within ``rtol`` (default 1e-4 in float32)
    times its largest magnitude (``example_input[:1]`` is used). The error names the group, its graph nodes and the deviation.
    """
    model = copy_model(model).eval()
    _perturb(model, seed)
    x = as_input(example_input[:1], model)
    state = model.state_dict()
    canonical = _aliases(model.state_dict(keep_vars=True))  # tied tensors: functional_call takes one name
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    rtol = _default_rtol(dtype) if rtol is None else rtol
    gen = torch.Generator().manual_seed(seed)
    perms = random_group_permutations(spec, gen)
    alone = random_group_permutations(spec, gen, move_heads=False)  # heads kept: a head group alone
    with torch.no_grad():
        reference = _tensors(model(x))
        scale = max((float(r.abs().max()) for r in reference if r.numel()), default=0.0)
        if not all(torch.isfinite(r).all() for r in reference):
            raise ValueError("permutation_spec cannot verify the spec: the network's output on the example input "
                             "is not finite. Pass verify=False, or an input on which the output is finite.")
        checks = [(g, {g: perms[g] if spec.groups[g].heads == 1 else alone[g]}) for g in spec.groups]
        checks += [(members, {m: perms[m] for m in members}) for members in spec.head_sets().values()]
        checks += [(None, perms)] if len(perms) > 1 else []
        for g, subset in checks:
            changed = {k: t for k, t in _permuted_state(state, spec, subset).items() if canonical.get(k, k) == k}
            outputs = _tensors(torch.func.functional_call(model, changed, (x,), strict=False))
            deviation = max((float((o - r).abs().max()) for o, r in zip(outputs, reference) if r.numel()),
                            default=0.0) / max(scale, 1e-30)
            if deviation > rtol:
                raise _verification_error(spec, g, deviation, rtol)


def _moving_permutation(size: int, gen: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(size, generator=gen)
    if size > 1 and torch.equal(perm, torch.arange(size)):
        perm = perm.roll(1)
    return perm


def _verification_error(spec, g, deviation, rtol):
    if g is None:
        what = f"permuting all {len(spec.groups)} groups together"
        nodes = ""
    elif isinstance(g, list):
        what = f"moving the heads of groups {', '.join(map(repr, g))} together"
        nodes = f" Their graph nodes: {', '.join(n for m in g for n in spec.groups[m].nodes[:4])}."
    else:
        grp = spec.groups[g]
        keys = ", ".join(f"{k} axis {a}" for k, a, _, _ in grp.entries[:4]) + (", ..." if len(grp.entries) > 4 else "")
        nodes = f" Its graph nodes: {', '.join(grp.nodes[:8])}; probes: {', '.join(grp.probes[:4]) or 'none'}."
        what = f"permuting group {g!r} ({grp.size} units; {keys})"
    return ValueError(
        f"permutation_spec: {what} changes the network's output on the example input by {deviation:.2g} of "
        f"its magnitude (tolerance {rtol:.0e}): the graph analysis got this symmetry wrong.{nodes} "
        f"{HAND_WRITTEN}"
    )
