"""Where REPAIR corrects: the correction points of a network, found in its torch.fx graph.

- scope ``"conv"``: the output (preactivation) of every Conv1d/2d/3d and Linear call except the
  classifier (a layer whose output reaches the network output without passing another conv/linear)
  and the query/key/value projections of attention (a layer whose output only reaches attention
  through views); in a transformer these are the MLP's hidden units and the outputs that write to the
  residual stream (attention's output projection, the MLP's second layer);
- scope ``"all"`` adds the residual-block outputs: every addition of two tensors of equal shape (before
  the classifier); when its only user is an element-wise activation, the point is that activation's
  output. In a transformer these are the residual stream after every block.

A point is named by its node in ``repairlib.spec.trace(model)``. Its channels are dim 1 of
``[B, C]`` or ``[B, C, *spatial]`` values, and the last axis of a transformer's ``[B, T, D]`` tokens
(where a Linear or LayerNorm acts): :func:`repairlib.spec.channel_axes` says which, and statistics are
taken per feature over all ``B * T`` positions.
"""

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from repairlib.plumbing import as_input, check_choice, eval_mode
from repairlib.spec import trace

SCOPES = ("conv", "all")

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
                       nn.Tanh, nn.Sigmoid)
_ACTIVATION_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.gelu,
                         F.silu, F.mish, F.hardswish, torch.tanh, torch.sigmoid}
_ACTIVATION_METHODS = {"relu", "relu_", "tanh", "sigmoid"}


def module_of(gm, node):
    """The submodule a ``call_module`` node calls, else None."""
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_layer(gm, node) -> bool:
    return isinstance(module_of(gm, node), LAYERS)


def _is_activation(gm, node) -> bool:
    return (isinstance(module_of(gm, node), _ACTIVATION_MODULES)
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


_VIEW_OPS = {"view", "reshape", "transpose", "permute", "contiguous", "chunk", "split", "unbind", "flatten",
             "unflatten", "movedim", "swapaxes", torch.reshape, torch.transpose, torch.permute, torch.chunk,
             torch.split, torch.unbind, torch.flatten, torch.movedim, operator.getitem}
_ATTENTION_OPS = {F.scaled_dot_product_attention, torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm"}


def _passes_on(gm, node) -> bool:
    """A view, an identity or a scaling by a constant (``q * scale``): the values pass on unmixed."""
    if node.op == "call_module":
        return isinstance(module_of(gm, node), (nn.Identity, nn.Dropout))
    if node.op not in ("call_function", "call_method"):
        return False
    scaling = node.target in (operator.mul, operator.truediv, "mul", "div") and not any(
        isinstance(a, fx.Node) for a in node.args[1:])
    return node.target in _VIEW_OPS or scaling


def _feeds_attention(gm, node) -> bool:
    """Whether ``node``'s value reaches attention (``scaled_dot_product_attention`` or a matrix product)
    only through views: a query, key or value projection, not a point of REPAIR."""
    stack, seen, found = list(node.users), set(), False
    while stack:
        user = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        if user.op in ("call_function", "call_method") and user.target in _ATTENTION_OPS:
            found = True
        elif _passes_on(gm, user):
            stack.extend(user.users)
        else:
            return False
    return found


def correction_points(model: nn.Module, scope: str = "conv", example: torch.Tensor = None) -> list:
    """Node names (of ``repairlib.spec.trace(model)``) of the values REPAIR corrects, in network order.

    ``example`` (a batch of inputs) is needed for scope ``"all"``, to tell residual additions (two
    tensors of equal shape) from broadcasting ones such as ``x + bias``.
    """
    check_choice("scope", scope, SCOPES)
    gm = trace(model)
    head = _head(gm)
    points = {n for n in gm.graph.nodes if _is_layer(gm, n) and not _feeds_attention(gm, n)} - head
    if scope == "all":
        if example is None:
            raise ValueError("scope 'all' needs an example input batch to find residual additions")
        with eval_mode(gm), torch.no_grad():
            ShapeProp(gm).propagate(as_input(example[:2], gm))
        points |= {_block_output(gm, n) for n in gm.graph.nodes if _is_residual_add(n)} - head
    return [n.name for n in gm.graph.nodes if n in points]


def nodes_named(gm, names) -> list:
    """The graph nodes called ``names``; ``ValueError`` naming the first that the graph lacks."""
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"the network has no correction point {missing[0]!r} (statistics of another network?)")
    return [by_name[name] for name in names]


def calls_of(gm, target) -> int:
    """How many graph nodes call the submodule ``target``."""
    return sum(n.op == "call_module" and n.target == target for n in gm.graph.nodes)
