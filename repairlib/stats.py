"""Activation statistics gathered in one pass: intermediate outputs and pooled moments.

Every spatial position counts as a sample: a ``[N, C, H, W]`` activation contributes ``N * H * W``
samples of its ``C`` channels, viewed as ``[N, C, L]`` (:func:`channel_samples`, no copy). Each
batch's moments are computed in the activations' dtype (:func:`_batch_moments`): from the samples
as they are when every channel's mean is small against its spread (one read, no temporary), else
from samples centred on the batch's means; batches are merged in float64 with Chan et al.'s
pairwise formula. The pooled statistics are then those of all samples together, to rounding,
however large the data's offset and however many batches are pooled -- never an average of per-batch
statistics.
"""

import operator

import torch
from torch import fx, nn

from repairlib.spec import trace


def channel_samples(x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """``[N, C, *spatial]`` (or ``[N, C * inner]``, with ``channels=C``) -> ``[N, C, L]``: the ``L``
    samples of every channel in each example. A view of ``x`` where the layout allows; float16 and
    bfloat16 become float32."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return x.reshape(x.shape[0], x.shape[1] if channels is None else channels, -1)


def _sum_of_products(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
    """``sum over samples of xc_c * yc_c`` for ``[N, C, L]`` inputs: ``[C]``."""
    if xc.shape[2] == 1:
        return (xc * yc).sum((0, 2))
    return torch.linalg.vecdot(xc, yc).sum(0)


def _cross_moment(xc: torch.Tensor, yc: torch.Tensor, full: bool) -> torch.Tensor:
    """``sum over samples of xc_i * yc_j`` for ``[N, C, L]`` inputs: ``[C, C]`` (``full``) or ``[C]``."""
    if not full:
        return _sum_of_products(xc, yc)
    _, c, length = xc.shape
    if length == 1:
        return xc[:, :, 0].T @ yc[:, :, 0]
    if c <= 2 * length:  # a batch of [C, L] @ [L, C] products: no transposed copy of the samples
        return torch.bmm(xc, yc.transpose(1, 2)).sum(0)
    rows_x = xc.transpose(0, 1).reshape(c, -1)  # few samples per example, many channels
    return rows_x @ yc.transpose(0, 1).reshape(c, -1).T


_SCRATCH = {}


def _scratch(slot: int, like: torch.Tensor) -> torch.Tensor:
    """A reusable buffer shaped like ``like`` (one per slot, device and dtype, grown when needed).

    The centred samples are a temporary as large as the activation. Allocated afresh for every
    update, a multi-megabyte CPU tensor costs more in page faults than the arithmetic done on it
    (several times more for ResNet20's first stage), so the temporaries live in these buffers.
    """
    key = (slot, like.device, like.dtype)
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.numel() < like.numel():
        buffer = _SCRATCH[key] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
    return buffer[:like.numel()].view(like.shape)


def release_scratch():
    """Free the scratch buffers (the passes that gather moments call this when they end)."""
    _SCRATCH.clear()


# Largest mean^2 / variance for which a channel's moments are summed from the raw samples: float32
# sums of x and x^2 then give the variance to about 1e-4 (relative). Beyond it, centred samples.
RAW_SUMS_MAX_RATIO = 1e3


def _batch_moments(xs: torch.Tensor, centre: bool, slot: int = 0) -> tuple:
    """``xs [N, C, L]`` -> ``(v, mean, m2, r)``: the samples ``v`` the sums were taken of, float64 ``[C]``
    means and sums of squared deviations, and ``r``, the sums of ``v`` (float64 ``[C]``).

    ``centre=False``: ``v`` is ``xs`` itself (one read for the sums, no temporary). ``centre=True``:
    ``v = xs - mean`` (in scratch buffer ``slot``, valid until that slot is used again), exact
    whatever the offset; the residual sums ``r`` then refine the float32 mean (whose rounding error is
    about eps * |mean|). Either way ``m2 = sum(v^2) - r^2 / n``, and a cross moment of two such ``v``
    is corrected by ``r_x r_y / n``. Plain sums: several times faster on the CPU than
    ``torch.var_mean`` over dims (0, 2).
    """
    n = xs.shape[0] * xs.shape[2]
    if centre:
        shift = xs.mean((0, 2))
        v = torch.sub(xs, shift[:, None], out=_scratch(slot, xs))
        shift = shift.double()
    else:
        v, shift = xs, 0.0
    r = v.sum((0, 2)).double()
    m2 = (_sum_of_products(v, v).double() - r * r / n).clamp_min(0)
    return v, shift + r / n, m2, r


class Moments:
    """Pooled per-channel mean and variance of one activation, optionally its cross moments.

    ``update(x)`` with an activation ``x: [N, C, *]`` (see :func:`channel_samples`; ``channels``
    for ``[N, C * inner]`` layouts); ``update(x, y)`` also accumulates the co-moment
    ``sum (x_i - mean x_i)(y_j - mean y_j)`` (``cross="full"``: the ``[C, C]`` matrix; ``"diag"``:
    only i = j). Inputs are never modified. Returns this batch's ``(mean, variance)`` of ``x``
    (float64 ``[C]`` each).
    """

    def __init__(self, cross=None, channels=None):
        if cross not in (None, "full", "diag"):
            raise ValueError(f"cross must be None, 'full' or 'diag', got {cross!r}")
        self.cross, self.channels = cross, channels
        self.n = 0
        self.centre = True  # the first batch is centred; later ones use raw sums where that is exact enough
        self._mean_x = self._m2_x = self._mean_y = self._m2_y = self._cxy = None

    @torch.no_grad()
    def update(self, x, y=None):
        xs = channel_samples(x, self.channels)
        nb = xs.shape[0] * xs.shape[2]
        vx, mean_x, m2_x, rx = _batch_moments(xs, self.centre, 0)
        batch = [mean_x, m2_x]
        if y is not None:
            vy, mean_y, m2_y, ry = _batch_moments(channel_samples(y, self.channels), self.centre, 1)
            batch += [mean_y, m2_y]
            if self.cross is not None:
                cxy = _cross_moment(vx, vy, self.cross == "full").double()
                batch.append(cxy - (torch.outer(rx, ry) if self.cross == "full" else rx * ry) / nb)
        if self.n == 0:  # raw sums from now on if no channel's mean is large against its spread
            pairs = [(batch[0], batch[1] / nb)] + ([(batch[2], batch[3] / nb)] if y is not None else [])
            self.centre = any(bool((m * m > RAW_SUMS_MAX_RATIO * v).any()) for m, v in pairs)
        self._merge(nb, *batch)
        return batch[0], batch[1] / nb

    def _merge(self, nb, mean_x, m2_x, mean_y=None, m2_y=None, cxy=None):
        """Chan et al.: pool ``nb`` new samples (their means and centred sums) into the totals."""
        if self.n == 0:
            self._mean_x, self._m2_x, self._mean_y, self._m2_y, self._cxy = mean_x, m2_x, mean_y, m2_y, cxy
            self.n = nb
            return
        n = self.n + nb
        weight = self.n * nb / n

        def pool(mean, m2, batch_mean, batch_m2):  # -> pooled mean, pooled m2, shift of the means
            d = batch_mean - mean
            return mean + d * (nb / n), m2 + batch_m2 + d * d * weight, d

        self._mean_x, self._m2_x, dx = pool(self._mean_x, self._m2_x, mean_x, m2_x)
        if mean_y is not None:
            self._mean_y, self._m2_y, dy = pool(self._mean_y, self._m2_y, mean_y, m2_y)
            if cxy is not None:
                self._cxy = self._cxy + cxy + (torch.outer(dx, dy) if self.cross == "full" else dx * dy) * weight
        self.n = n

    def _require(self, field="_mean_x"):
        if self.n == 0:
            raise ValueError("no samples were seen: the data yielded no batches")
        if getattr(self, field) is None:
            raise ValueError("these moments were accumulated without that statistic (pass y / cross)")
        return getattr(self, field)

    @property
    def mean_x(self):
        return self._require("_mean_x")

    @property
    def var_x(self):
        return (self._require("_m2_x") / self.n).clamp_min(0)

    @property
    def mean_y(self):
        return self._require("_mean_y")

    @property
    def var_y(self):
        return (self._require("_m2_y") / self.n).clamp_min(0)

    @property
    def cov_xy(self):
        """Population covariance: ``[C, C]`` for ``cross="full"``, ``[C]`` for ``"diag"``."""
        return self._require("_cxy") / self.n

    def corr_xy(self, eps=1e-12):
        """Correlation matrix ``[C, C]`` (paper Eq. 2); dead units (zero variance) give 0, never NaN."""
        std_x, std_y = self.var_x.sqrt(), self.var_y.sqrt()
        return self.cov_xy / torch.outer(std_x, std_y).clamp_min(eps)


def capture(model: nn.Module, names, channels=None):
    """A function ``inputs -> [outputs of the named graph nodes]`` for one network.

    ``names`` are node names of the model's torch.fx trace, or submodule names (then forward
    hooks capture them, which also works for untraceable models); the graph is cut after the last
    requested node. ``channels``: ``None`` returns the values as they are; a list of channel counts
    (one per name, ``None`` for ``shape[1]``), or ``True`` for ``shape[1]`` everywhere, returns each
    as ``[N, C, L]`` samples (:func:`channel_samples`). A value that a later in-place op of the
    network could overwrite (``ReLU(inplace=True)``, ``+=``, ...) is copied where it is taken; the
    others are not copied (:func:`overwritten_nodes`).
    """
    names = list(names)
    channels = [None] * len(names) if channels is True else channels
    if channels is not None and len(channels) != len(names):
        raise ValueError(f"channels has {len(channels)} entries for {len(names)} names")
    submodules = dict(model.named_modules())
    if names and all(n in submodules for n in names) and not _all_nodes(model, names):
        return _hook_capture(model, names, submodules, channels)
    gm = trace(model)
    graph, copies = fx.Graph(), {}
    graph.graph_copy(gm.graph, copies)  # every node but the output
    nodes = {old.name: new for old, new in copies.items()}
    missing = [n for n in names if n not in nodes]
    if missing:
        raise ValueError(f"graph has no node named {missing[0]!r}")
    unsafe = overwritten_nodes(gm, [n for n in gm.graph.nodes if n.name in names])
    taken = []
    for i, name in enumerate(names):
        value = nodes[name]
        if name in unsafe:
            with graph.inserting_after(value):
                value = graph.call_method("clone", (value,))
        if channels is not None:
            with graph.inserting_after(value):
                value = graph.call_function(channel_samples, (value, channels[i]))
        taken.append(value)
    graph.output(tuple(taken))
    cut = fx.GraphModule(gm, graph)
    cut.graph.eliminate_dead_code()
    cut.recompile()
    return lambda x: list(cut(x))


# Ops whose result may share memory with their (first) input, and ops that overwrite their first input.
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "t",
                 "permute", "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "contiguous",
                 "__getitem__", "chunk", "split", "unbind", "detach", "to", "type", "float", "double",
                 "half", "bfloat16", "cpu", "cuda", "as_strided", "movedim", "swapaxes", "select"}
_VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.t, torch.permute, torch.squeeze,
                   torch.unsqueeze, torch.narrow, torch.chunk, torch.split, torch.unbind, torch.detach,
                   torch.movedim, torch.select, nn.functional.dropout, nn.functional.dropout1d,
                   nn.functional.dropout2d, nn.functional.dropout3d, nn.functional.alpha_dropout}
_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                 nn.Dropout3d, nn.AlphaDropout)
_IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                       operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
                       operator.ilshift, operator.irshift, operator.imatmul, operator.setitem}


def _overwrites_first_input(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (node.target in _IN_PLACE_FUNCTIONS or bool(node.kwargs.get("inplace"))
                or (name.endswith("_") and not name.endswith("__")))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    return False


def _may_alias(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s value may share memory with its first input."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _VIEW_MODULES) or _overwrites_first_input(gm, node)
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS or node.target is operator.getitem or _overwrites_first_input(gm, node)
    if node.op == "call_method":
        return node.target in _VIEW_METHODS or _overwrites_first_input(gm, node)
    return False


def overwritten_nodes(gm: fx.GraphModule, nodes) -> set:
    """Names of those ``nodes`` whose value a later in-place op may overwrite.

    Conservative: a value is traced back through ops that may alias (views, identities, in-place
    ops) to the tensor whose memory it shares, and every op after it in the graph that takes that
    memory (or anything that may alias it) as its first argument and works in place counts as
    overwriting it. Such values must be copied where they are taken; the others can be read after
    the forward pass as they are.
    """
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    unsafe = set()
    for start in nodes:
        root = start
        while _may_alias(gm, root) and root.args and isinstance(root.args[0], fx.Node):
            root = root.args[0]
        seen, stack = set(), [root]
        while stack and start.name not in unsafe:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            for user in node.users:
                if not user.args or user.args[0] is not node:
                    continue
                if _overwrites_first_input(gm, user) and order[user] > order[start]:
                    unsafe.add(start.name)
                    break
                if _may_alias(gm, user):
                    stack.append(user)
    return unsafe


def _all_nodes(model, names):
    try:
        nodes = {n.name for n in trace(model).graph.nodes}
    except ValueError:
        return False
    return all(n in nodes for n in names)


def _hook_capture(model, names, submodules, channels):
    def take(output, i):  # a hook sees the value before later in-place ops: always a copy
        return output.clone() if channels is None else channel_samples(output, channels[i]).clone()

    def run(x):
        got = {}
        handles = [submodules[n].register_forward_hook(lambda m, inp, o, n=n, i=i: got.__setitem__(n, take(o, i)))
                   for i, n in enumerate(names)]
        try:
            model(x)
        finally:
            for h in handles:
                h.remove()
        return [got[n] for n in names]

    return run


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


class eval_mode:
    """Context manager: put models in eval mode, restore their train flags afterwards."""

    def __init__(self, *models):
        self.models = models

    def __enter__(self):
        self.flags = [[m.training for m in model.modules()] for model in self.models]
        for model in self.models:
            model.eval()

    def __exit__(self, *exc):
        for model, flags in zip(self.models, self.flags):
            for m, f in zip(model.modules(), flags):
                m.train(f)
