"""Find a network's permutation symmetries automatically from its torch.fx graph (paper section 2.2).

Every tensor flowing through the network has a *channel space*: the meaning of its dimension 1
(the channels of an ``[N, C, H, W]`` map, the features of an ``[N, F]`` vector). A layer such as a
convolution or a linear layer starts a new space; element-wise layers, pooling and normalisation
keep it; an addition joins the spaces of its operands (so a whole residual stream is one space).
Spaces that reach the network's input or output, or go through an op whose channels cannot be
freely reordered (concatenation, grouped convolutions), are fixed. Every other space is one
*group*: a permutation of its units, applied to every ``(state_dict key, axis)`` that indexes it,
leaves the network's function unchanged.

No per-architecture code: the same analysis covers MLPs, VGGs, CIFAR ResNets, torchvision
ResNets, and networks nobody listed. An op the analysis does not know raises ``ValueError``
naming the graph node; a hand-written :class:`PermutationSpec` can then be passed instead.
"""

import copy
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from repairlib.plumbing import as_input


@dataclass
class Group:
    """One permutation: ``size`` units, and every place that indexes them.

    ``entries`` holds ``(state_dict key, axis, inner)``: the key's ``axis`` has ``size * inner``
    entries, viewed as ``[size, inner]`` (``inner > 1`` where a conv map was flattened into a
    linear layer, ``inner = H * W``). ``probes`` names the graph nodes (or submodules) whose outputs
    carry these units; activation matching correlates them there. ``residual`` is true for a
    space shared by several layers through additions (a residual stream).
    """

    size: int
    entries: list = field(default_factory=list)
    probes: list = field(default_factory=list)
    residual: bool = False


@dataclass
class PermutationSpec:
    """The permutation groups of a network: ``groups`` maps a group name to a :class:`Group`.

    ``node_groups`` maps a graph node name to the group of its output channels (absent for
    fixed spaces), which lets statistics measured at any node be permuted along with the network.
    """

    groups: dict
    node_groups: dict = field(default_factory=dict)

    def axes_of(self):
        """Map each state_dict key to its permuted axes: ``key -> [(axis, group name, inner)]``."""
        out = {}
        for name, g in self.groups.items():
            for key, axis, inner in g.entries:
                out.setdefault(key, []).append((axis, name, inner))
        return out


def trace(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` with an error that says what to do when tracing fails."""
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types; report them uniformly
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__}: {e}. "
            "Pass a hand-written spec=PermutationSpec(...) instead."
        ) from e


# ---------------------------------------------------------------- op tables
_PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.SELU, nn.CELU,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ZeroPad2d,
)
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                 nn.InstanceNorm3d, nn.SyncBatchNorm)
_F = nn.functional
_PASSTHROUGH_FUNCTIONS = {
    torch.relu, _F.relu, torch.relu_, _F.relu6, _F.leaky_relu, _F.gelu, _F.silu, torch.sigmoid,
    _F.sigmoid, torch.tanh, _F.tanh, _F.elu, _F.hardswish, _F.mish, _F.softplus, _F.dropout,
    _F.dropout2d, _F.max_pool1d, _F.max_pool2d, _F.avg_pool1d, _F.avg_pool2d,
    _F.adaptive_avg_pool1d, _F.adaptive_avg_pool2d, _F.adaptive_max_pool2d, torch.clone,
}
_PASSTHROUGH_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "to",
                        "detach", "type_as"}
_JOIN_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                   operator.imul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}
_JOIN_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_FLATTEN_FUNCTIONS = {torch.flatten}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_MEAN_METHODS = {"mean", "sum", "amax"}
_NON_TENSOR_METHODS = {"size", "dim"}


class _Spaces:
    """Union-find over channel spaces, with a flag for spaces that must stay fixed."""

    def __init__(self):
        self.parent, self.fixed = [], set()

    def new(self, fixed=False):
        self.parent.append(len(self.parent))
        if fixed:
            self.fixed.add(len(self.parent) - 1)
        return len(self.parent) - 1

    def find(self, s):
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.fixed:
                self.fixed.add(ra)
        return ra

    def fix(self, s):
        self.fixed.add(self.find(s))

    def is_fixed(self, s):
        return self.find(s) in self.fixed


class _Analysis:
    """Walks the traced graph once and records, per node, ``(space, inner)`` of its output."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.spaces = _Spaces()
        self.out = {}  # node -> (space, inner) for tensor outputs of rank >= 2
        self.entries = []  # (key, axis, inner, space)
        self.producers = {}  # space -> [module names that start it]
        self.consumer_inputs = []  # nodes feeding a conv/linear (activation probes)

    # -- helpers
    def shape(self, node):
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def fail(self, node, why="unsupported op"):
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
        raise ValueError(
            f"permutation_spec cannot handle graph node {node.name!r} ({node.op} {target}): {why}. "
            "Pass a hand-written spec=PermutationSpec(...) instead."
        )

    def tensor_args(self, node):
        return [a for a in node.all_input_nodes if a in self.out]

    def same(self, node, src):
        self.out[node] = self.out[src]

    def entry(self, key, axis, space, inner=1):
        self.entries.append((key, axis, inner, space))

    def new_layer_space(self, node, name):
        s = self.spaces.new()
        self.producers.setdefault(s, []).append(name)
        return s

    # -- dispatch
    def run(self):
        for node in self.gm.graph.nodes:
            shape = self.shape(node)
            if node.op == "placeholder":
                if shape is not None and len(shape) >= 2:
                    self.out[node] = (self.spaces.new(fixed=True), 1)
            elif node.op == "get_attr":
                pass  # parameters used functionally are handled by the op that uses them
            elif node.op == "output":
                for a in node.all_input_nodes:
                    if a in self.out:
                        self.spaces.fix(self.out[a][0])
            elif shape is None or len(shape) < 2:
                if node.op == "call_method" and node.target in _NON_TENSOR_METHODS:
                    continue
                if node.op == "call_function" and node.target in (getattr, operator.getitem):
                    continue
                # a tensor op that collapses the channel axis: its inputs' channels are fixed
                for a in self.tensor_args(node):
                    self.spaces.fix(self.out[a][0])
            elif node.op == "call_module":
                self.module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self.function(node)
            else:
                self.fail(node)

    def module(self, node, mod):
        name = node.target
        args = self.tensor_args(node)
        if not args:
            self.fail(node, "no tensor input")
        src = args[0]
        s_in, inner_in = self.out[src]
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            groups = getattr(mod, "groups", 1)
            self.consumer_inputs.append(src)
            out_ch = mod.weight.shape[0]
            if groups == 1:
                s = self.new_layer_space(node, name)
                self.entry(f"{name}.weight", 0, s)
                self.entry(f"{name}.weight", 1, s_in, inner_in)
                if mod.bias is not None:
                    self.entry(f"{name}.bias", 0, s)
                self.out[node] = (s, 1)
            elif groups == out_ch == mod.in_channels:  # depthwise: keeps the channel space
                self.entry(f"{name}.weight", 0, s_in)
                if mod.bias is not None:
                    self.entry(f"{name}.bias", 0, s_in)
                self.out[node] = (s_in, 1)
            else:  # grouped conv: channels may only move within groups; keep them fixed
                self.spaces.fix(s_in)
                self.out[node] = (self.spaces.new(fixed=True), 1)
        elif isinstance(mod, _NORM_MODULES):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                if getattr(mod, attr, None) is not None:
                    self.entry(f"{name}.{attr}", 0, s_in, inner_in)
            self.same(node, src)
        elif isinstance(mod, nn.GroupNorm):
            if mod.num_groups not in (1, mod.num_channels):
                self.spaces.fix(s_in)  # statistics are pooled within fixed channel groups
            elif mod.affine:
                self.entry(f"{name}.weight", 0, s_in, inner_in)
                self.entry(f"{name}.bias", 0, s_in, inner_in)
            self.same(node, src)
        elif isinstance(mod, nn.LayerNorm):
            rank = len(self.shape(src))
            if len(mod.normalized_shape) == rank - 1 and mod.elementwise_affine:  # covers the channels
                self.entry(f"{name}.weight", 0, s_in, inner_in)
                if mod.bias is not None:
                    self.entry(f"{name}.bias", 0, s_in, inner_in)
            self.same(node, src)
        elif isinstance(mod, nn.PReLU):
            if mod.num_parameters > 1:
                self.entry(f"{name}.weight", 0, s_in, inner_in)
            self.same(node, src)
        elif isinstance(mod, nn.Flatten):
            self.flatten(node, src, mod.start_dim)
        elif isinstance(mod, _PASSTHROUGH_MODULES):
            self.same(node, src)
        else:
            self.fail(node, f"unknown module type {type(mod).__name__}")

    def flatten(self, node, src, start_dim):
        in_shape, out_shape = self.shape(src), self.shape(node)
        s, inner = self.out[src]
        if start_dim != 1 or len(out_shape) != 2:
            self.fail(node, "only flattening everything after the batch axis is supported")
        spatial = 1
        for d in in_shape[2:]:
            spatial *= d
        self.out[node] = (s, inner * spatial)

    def function(self, node):
        t = node.target
        args = self.tensor_args(node)
        is_fn, is_method = node.op == "call_function", node.op == "call_method"
        if (is_fn and t in _PASSTHROUGH_FUNCTIONS) or (is_method and t in _PASSTHROUGH_METHODS):
            self.same(node, args[0])
        elif (is_fn and t in _JOIN_FUNCTIONS) or (is_method and t in _JOIN_METHODS):
            self.join(node, args)
        elif (is_fn and t in _FLATTEN_FUNCTIONS) or (is_method and t in _RESHAPE_METHODS):
            start = 1 if t in ("view", "reshape") else (node.args[1] if len(node.args) > 1 else
                                                          node.kwargs.get("start_dim", 0))
            self.flatten(node, args[0], start)
        elif (is_fn and t in (torch.mean, torch.sum, torch.amax)) or (is_method and t in _MEAN_METHODS):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else dims
            if dims is None or any(d in (0, 1, -len(self.shape(args[0]))) for d in dims):
                self.fail(node, "reduction over the batch or channel axis")
            self.same(node, args[0])
        elif is_fn and t is torch.cat:
            for a in args:
                self.spaces.fix(self.out[a][0])
            self.out[node] = (self.spaces.new(fixed=True), 1)
        else:
            self.fail(node)

    def join(self, node, args):
        """Element-wise binary op: tensors of the node's own shape share its space."""
        out_shape = self.shape(node)
        space = None
        for a in args:
            if self.shape(a) == out_shape or self.shape(a)[1] == out_shape[1] and self.shape(a)[1] > 1:
                space = self.out[a][0] if space is None else self.spaces.union(space, self.out[a][0])
        if space is None:
            self.fail(node, "no operand has the output's shape")
        for a in node.all_input_nodes:
            if a.op == "get_attr":
                self.attr_operand(node, a, space)
        self.out[node] = (space, self.out[args[0]][1])

    def attr_operand(self, node, attr, space):
        """A parameter used in an element-wise op: a scalar, or one value per channel."""
        value = operator.attrgetter(attr.target)(self.gm)
        if value.numel() == 1:
            return
        rank = len(self.shape(node))
        shape = (1,) * (rank - value.dim()) + tuple(value.shape)
        if shape[1] == value.numel() and value.dim() >= rank - 1:
            self.entry(attr.target, value.dim() - (rank - 1), space, self.out[node.all_input_nodes[0]][1])
        else:
            self.fail(node, f"parameter {attr.target} of shape {tuple(value.shape)} is not per-channel")


def permutation_spec(model: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """Trace ``model`` and group every (parameter or buffer, axis) that must share one permutation.

    ``example_input``: one batch (``[N, ...]``, any N >= 1) used to propagate shapes; the model is
    run on a copy, in eval mode, so its BatchNorm statistics are untouched.
    Returns a :class:`PermutationSpec` whose groups are named after the layer that starts them.
    """
    model = copy.deepcopy(model).eval()
    gm = trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(as_input(example_input[:2], model))
    an = _Analysis(gm)
    an.run()
    sp = an.spaces

    names, groups = {}, {}
    for node, (space, _) in an.out.items():
        root = sp.find(space)
        if sp.is_fixed(root) or root in names:
            continue
        producers = [p for s, ps in an.producers.items() if sp.find(s) == root for p in ps]
        name = producers[0] if producers else node.name
        names[root] = name
        size = an.shape(node)[1] // an.out[node][1]
        groups[name] = Group(size=size, residual=len(producers) > 1)
    for key, axis, inner, space in an.entries:
        root = sp.find(space)
        if root in names:
            groups[names[root]].entries.append((key, axis, inner))
    for node in dict.fromkeys(an.consumer_inputs):
        root = sp.find(an.out[node][0])
        if root in names:
            groups[names[root]].probes.append(node.name)
    node_groups = {n.name: names[sp.find(s)] for n, (s, _) in an.out.items() if sp.find(s) in names}
    spec = PermutationSpec(groups=groups, node_groups=node_groups)
    check_spec(spec, model)
    return spec


def check_spec(spec: PermutationSpec, model: nn.Module) -> None:
    """Raise ``ValueError`` if an entry names a missing tensor or an axis of the wrong length."""
    state = model.state_dict()
    for name, g in spec.groups.items():
        for key, axis, inner in g.entries:
            if key not in state:
                raise ValueError(f"spec group {name!r} names {key!r}, which the model does not have")
            if state[key].shape[axis] != g.size * inner:
                raise ValueError(
                    f"spec group {name!r}: {key!r} axis {axis} has {state[key].shape[axis]} entries, "
                    f"expected {g.size} x {inner}"
                )
