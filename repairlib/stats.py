"""Activation statistics gathered in one pass: intermediate outputs and pooled moments.

Every spatial position counts as a sample: a ``[N, C, H, W]`` activation contributes ``N * H * W``
samples of its ``C`` channels, viewed as ``[N, C, L]`` (:func:`channel_samples`, no copy). Each
batch is reduced in the activations' dtype to sums of the samples, of their squares and of cross
products, taken about a per-channel shift (none when the means are small against the spread: one
read per sum, no temporary); the sums are added in float64 (:class:`Moments`). The pooled statistics
are then those of all samples together, to rounding, however large the data's offset and however
many batches are pooled -- never an average of per-batch statistics. A batch whose float32 squares
would underflow (channels of spread below ~1e-15, e.g. deep in a randomly initialised or interpolated
MobileNet) or overflow is summed in per-channel powers of two, exactly, and converted back in float64.
"""

import contextlib
import operator

import torch
from torch import fx, nn

from repairlib.spec import channel_axes, layer_channel_axis, trace


def channel_samples(x: torch.Tensor, channels: int | None = None, axis: int = 1) -> torch.Tensor:
    """``[N, C, *spatial]`` (or ``[N, C * inner]``, with ``channels=C``) -> ``[N, C, L]``: the ``L``
    samples of every channel in each example. With the channels on another ``axis`` (the last of a
    transformer's ``[N, T, D]`` tokens, ``axis=-1``) -> ``[N * T, D, 1]``: every position is a sample
    of each feature. A view of ``x`` where the layout allows; float16 and bfloat16 become float32."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if x.dim() > 2 and axis % x.dim() != 1:
        x = x.movedim(axis, -1)
        return x.reshape(-1, x.shape[-1] if channels is None else channels, 1)
    return x.reshape(x.shape[0], x.shape[1] if channels is None else channels, -1)


def _sum_of_products(xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
    """``sum over samples of xc_c * yc_c`` for ``[N, C, L]`` inputs: ``[C]``."""
    if xc.shape[2] == 1:
        return (xc * yc).sum((0, 2))
    return torch.linalg.vecdot(xc, yc).sum(0)


def _sum_of_squares(v: torch.Tensor) -> torch.Tensor:
    """``sum over samples of v_c^2`` for ``[N, C, L]`` samples: ``[C]``. For spatial maps, the norm of
    every ``[L]`` row is one fused reduction (no temporary the size of ``v``): 2-3x faster on a CPU
    than ``(v * v).sum``."""
    if v.shape[2] == 1:
        return _sum_of_products(v, v)
    return torch.linalg.vector_norm(v, 2, dim=2).square().sum(0)


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


@contextlib.contextmanager
def scratch_pass():
    """A pass over the data whose moment updates share the scratch buffers, freed when it ends."""
    try:
        yield
    finally:
        release_scratch()


# Largest mean^2 / variance (per channel, in a batch) for which float32 sums of the samples about the
# current shift (0 at first) are used as they are: the variance then loses about 4e-7 times this ratio
# (measured), 2e-5 at 50. A batch beyond it is summed about its own means instead, and its sums are
# moved to the shared shift in float64.
OFFSET_MAX_RATIO = 50.0


# Mean squares (per channel, in a batch) outside [2^-100, 2^100] put float32 squares near underflow (denormals,
# then 0: a variance of 0 for a channel of tiny spread) or overflow (inf). Such a batch is summed in units of a
# per-channel power of two (exact), and its sums are converted back in float64.
SQUARE_RANGE = (2.0 ** -100, 2.0 ** 100)


def _plain_sums(v: torch.Tensor) -> tuple:
    total = v.sum(2).sum(0) if v.shape[2] > 1 else v.sum((0, 2))  # contiguous rows first: faster
    return total, _sum_of_squares(v)


def _power_of_two_units(v: torch.Tensor, r: torch.Tensor, q: torch.Tensor, nb: int):
    """``None`` while every channel's float32 mean square ``q / nb`` lies in :data:`SQUARE_RANGE` or is
    that of a dead channel (``r = q = 0``: no extra pass), or ``v`` is float64; else ``[C]`` powers of
    two ``u`` such that ``v / u`` has its largest magnitude in [0.5, 1) per channel (1 for channels
    that are exactly zero or not finite)."""
    if v.dtype == torch.float64:
        return None
    low, high = SQUARE_RANGE
    suspect = ~((q >= low * nb) & (q <= high * nb)) & ((q != 0) | (r != 0))
    if not bool(suspect.any()):
        return None
    largest = v.abs().amax(2).amax(0) if v.shape[2] > 1 else v.abs().amax((0, 2))
    if not bool(((largest > 0) & torch.isfinite(largest) & suspect).any()):
        return None  # dead (all-zero) channels: their sums are exact
    _, exponent = torch.frexp(largest.double())
    usable = (largest > 0) & torch.isfinite(largest)
    return torch.where(usable, torch.ldexp(torch.ones_like(largest, dtype=torch.float64), exponent), 1.0)


def _sums_about(xs: torch.Tensor, shift, slot: int) -> tuple:
    """``(v, r, q, units)``: the samples ``v = (xs - shift) / units`` (``xs`` itself for ``shift=None`` and
    ``units=None``; else in scratch buffer ``slot``), and their sums ``r = sum v`` and ``q = sum v^2`` per
    channel (``[C]``), in the samples' dtype. ``units`` (float64 ``[C]`` powers of two, or None) is only
    used where float32 squares would underflow or overflow (:data:`SQUARE_RANGE`)."""
    v = xs if shift is None else torch.sub(xs, shift[:, None], out=_scratch(slot, xs))
    total, squares = _plain_sums(v)
    units = _power_of_two_units(v, total, squares, v.shape[0] * v.shape[2])
    if units is None:
        return v, total, squares, None
    v = torch.div(v, units.to(v.dtype)[:, None], out=_scratch(slot, xs))  # exact: powers of two
    total, squares = _plain_sums(v)
    return v, total, squares, units


def _in_units(t: torch.Tensor, units) -> torch.Tensor:
    """A float32 sum taken in ``units`` -> float64 in the samples' own units (``units`` per factor)."""
    t = t.double()
    for u in units:
        t = t * u
    return t


class Moments:
    """Pooled per-channel mean and variance of one activation, optionally its cross moments.

    ``update(x)`` with an activation ``x: [N, C, *]`` (see :func:`channel_samples`; ``channels``
    for ``[N, C * inner]`` layouts, ``axis`` for channels elsewhere, e.g. ``-1`` for ``[N, T, D]``); ``update(x, y)`` also accumulates the co-moment of ``x_i`` and
    ``y_j`` (``cross="full"``: the ``[C, C]`` matrix; ``"diag"``: only i = j). Inputs are never
    modified; :meth:`update_batch` also returns this batch's ``(mean, variance)`` of ``x``.

    Method (the shifted-data algorithm): every batch's float32 sums of ``v = x - K``, ``v^2`` and
    ``v_x v_y`` are added into float64 totals, for a per-channel shift ``K``: none while the first
    batch shows every channel's mean small against its spread (one read per sum, no temporary),
    else that batch's float32 means. Then ``mean = K + S1 / n``, ``M2 = S2 - S1^2 / n``. A later
    batch whose means drift far from ``K`` is summed about its own means and moved to ``K`` exactly
    in float64, so the totals stay those of all samples, to rounding, whatever the offsets; a batch
    whose squares would leave float32's range is summed in units of a power of two per channel.
    """

    def __init__(self, cross=None, channels=None, axis=1):
        if cross not in (None, "full", "diag"):
            raise ValueError(f"cross must be None, 'full' or 'diag', got {cross!r}")
        self.cross, self.channels, self.axis = cross, channels, axis
        self.n = 0
        self._shift = None  # K of x (and y): None, or float32 [C]
        self._sums = None  # float64 S1_x, S2_x[, S1_y, S2_y[, S_xy]]

    @property
    def shifted(self) -> bool:
        """Whether the samples are summed about a non-zero shift (large means against the spread)."""
        return any(k is not None for k in self._shift or ())

    def _stream(self, xs, i, nb):
        """Sums of stream ``i`` about its shift: ``(v, r, q, units, delta)``; ``units`` see
        :func:`_sums_about`; ``delta`` (float64 ``[C]`` or None) is how far this batch's own centring lies
        from the shift when it had to be re-centred."""
        shift = self._shift[i]
        v, r, q, units = _sums_about(xs, shift, i)
        # mean^2 > R var  <=>  q - (1 + R) / (R nb) r^2 < 0, with mean = r / nb and var = q / nb - mean^2
        # (per channel, so the same in any units)
        if not float(torch.addcmul(q, r, r, value=-(1 + OFFSET_MAX_RATIO) / (OFFSET_MAX_RATIO * nb)).min()) < 0:
            return v, r, q, units, None
        mean = (r.double() if units is None else _in_units(r, [units])) / nb
        own = mean.to(xs.dtype) if shift is None else shift + mean.to(xs.dtype)  # this batch's means
        v, r, q, units = _sums_about(xs, own, i)
        if self.n == 0:  # the first batch sets the shift
            self._shift[i] = own
            return v, r, q, units, None
        return v, r, q, units, own.double() - (0.0 if shift is None else shift.double())

    @torch.no_grad()
    def update(self, x, y=None):
        """Add a batch (``x``, and ``y`` for the cross moments); returns nothing (see :meth:`update_batch`)."""
        self._add(x, y)

    @torch.no_grad()
    def update_batch(self, x, y=None):
        """:meth:`update`, returning this batch's own ``(mean [C], variance [C])`` of ``x``, float64."""
        sums, nb = self._add(x, y)
        batch_mean = sums[0].double() / nb
        batch_var = (sums[1].double() / nb - batch_mean.square()).clamp_min(0)
        return (batch_mean if self._shift[0] is None else batch_mean + self._shift[0]), batch_var

    def _add(self, x, y=None):
        streams = [channel_samples(x, self.channels, self.axis)]
        if y is not None:
            streams.append(channel_samples(y, self.channels, self.axis))
        nb = streams[0].shape[0] * streams[0].shape[2]
        if self.n == 0:
            self._shift = [None] * len(streams)
        elif len(streams) != len(self._shift):
            raise ValueError("Moments.update: pass y on every batch or on none (the first batch "
                             f"{'had' if len(self._shift) == 2 else 'had no'} y)")
        vs, sums, deltas, units = [], [], [], []
        for i, xs in enumerate(streams):
            v, r, q, u, delta = self._stream(xs, i, nb)
            vs.append(v)
            deltas.append(delta)
            units.append(u)
            sums += [r, q]
        if y is not None and self.cross is not None:
            sums.append(_cross_moment(vs[0], vs[1], self.cross == "full"))
        if any(u is not None for u in units):
            sums = self._from_units(sums, units)
        if any(d is not None for d in deltas):
            sums = self._move([t.double() for t in sums], deltas, nb)
        if self.n == 0:
            self._sums = [t.double() for t in sums]
        else:
            for total, t in zip(self._sums, sums):  # float32 sums added into float64 totals
                total.add_(t)
        self.n += nb
        return sums, nb

    def _from_units(self, sums, units):
        """Sums taken in per-channel powers of two (:func:`_sums_about`) -> float64 sums of the samples."""
        one = [u if u is not None else torch.ones_like(sums[2 * i], dtype=torch.float64)
               for i, u in enumerate(units)]
        out = []
        for i in range(len(units)):
            out += [_in_units(sums[2 * i], [one[i]]), _in_units(sums[2 * i + 1], [one[i], one[i]])]
        if len(sums) == 2 * len(units) + 1:
            ux, uy = one[0], one[1]
            out.append(_in_units(sums[-1], [torch.outer(ux, uy)] if self.cross == "full" else [ux * uy]))
        return out

    def _move(self, sums, deltas, nb):
        """Sums about ``own = K + delta`` -> sums about ``K`` (float64): ``S1 + nb d``,
        ``S2 + 2 d S1 + nb d^2``, ``Sxy + dx S1y + S1x dy + nb dx dy``."""
        out = list(sums)
        for i, d in enumerate(deltas):
            if d is not None:
                r, q = sums[2 * i], sums[2 * i + 1]
                out[2 * i], out[2 * i + 1] = r + nb * d, q + 2 * d * r + nb * d * d
        if len(sums) == 5:
            dx, dy = (d if d is not None else torch.zeros_like(sums[0]) for d in deltas)
            rx, ry = sums[0], sums[2]
            if self.cross == "full":
                out[4] = sums[4] + torch.outer(dx, ry) + torch.outer(rx, dy) + nb * torch.outer(dx, dy)
            else:
                out[4] = sums[4] + dx * ry + rx * dy + nb * dx * dy
        return out

    def _require(self, index=0):
        if self.n == 0:
            raise ValueError("no samples were seen: the data yielded no batches")
        if index >= len(self._sums):
            raise ValueError("these moments were accumulated without that statistic (pass y / cross)")
        return self._sums[index]

    def _mean(self, i):
        s1 = self._require(2 * i)
        mean = s1 / self.n
        return mean if self._shift[i] is None else mean + self._shift[i]

    def _var(self, i):
        s1, s2 = self._require(2 * i), self._require(2 * i + 1)
        return ((s2 - s1 * s1 / self.n) / self.n).clamp_min(0)

    @property
    def mean_x(self):
        return self._mean(0)

    @property
    def var_x(self):
        return self._var(0)

    @property
    def mean_y(self):
        return self._mean(1)

    @property
    def var_y(self):
        return self._var(1)

    @property
    def cov_xy(self):
        """Population covariance: ``[C, C]`` for ``cross="full"``, ``[C]`` for ``"diag"``."""
        sxy, s1x, s1y = self._require(4), self._sums[0], self._sums[2]
        product = torch.outer(s1x, s1y) if self.cross == "full" else s1x * s1y
        return (sxy - product / self.n) / self.n

    def corr_xy(self, eps=1e-12):
        """Correlation matrix ``[C, C]`` (paper Eq. 2); dead units (zero variance) give 0, never NaN."""
        std_x, std_y = self.var_x.sqrt(), self.var_y.sqrt()
        return self.cov_xy / torch.outer(std_x, std_y).clamp_min(eps)


def capture(model: nn.Module, names, channels=None, axes=None):
    """A function ``inputs -> [outputs of the named graph nodes]`` for one network.

    ``names`` are node names of the model's torch.fx trace, or submodule names (then forward
    hooks capture them, which also works for untraceable models); the graph is cut after the last
    requested node. ``channels``: ``None`` returns the values as they are; a list of channel counts
    (one per name, ``None`` for ``shape[1]``), or ``True`` for ``shape[1]`` everywhere, returns each
    as ``[N, C, L]`` samples (:func:`channel_samples`). ``None`` entries (and ``True``) take the value's
    channels where they are (:func:`repairlib.spec.channel_axes`, decided on the first batch): the last axis of a
    transformer's ``[N, T, D]`` tokens gives ``[N * T, D, 1]``. ``axes`` (with ``channels``): per name the
    channel axis where the caller knows it (a permutation group's probe, ``Group.probe_axes``), None
    where the rule above decides it. A value that a later in-place op of the network could overwrite
    (``ReLU(inplace=True)``, ``+=``, ...) is copied where it is taken; the others are not copied
    (:func:`overwritten_nodes`).
    """
    names = list(names)
    channels = [None] * len(names) if channels is True else channels
    known = [None] * len(names) if axes is None or channels is None else list(axes)
    if channels is not None and not len(channels) == len(known) == len(names):
        raise ValueError(f"channels and axes have {len(channels)} and {len(known)} entries for {len(names)} names")
    submodules = dict(model.named_modules())
    if names and all(n in submodules for n in names) and not _all_nodes(model, names):
        return _hook_capture(model, names, submodules, channels, known)
    if channels is None or all(c is not None or a is not None for c, a in zip(channels, known)):
        return _graph_capture(model, names, channels, [1 if a is None else a for a in known])
    cut = []

    def run(x):  # the channel axes need one batch (shapes) when some value is not a layer's output
        if not cut:
            unknown = [n for n, c, a in zip(names, channels, known) if c is None and a is None]
            located = value_axes(model, unknown, x)
            found = [a if a is not None else 1 if c is not None else located.pop(0)
                     for c, a in zip(channels, known)]
            cut.append(_graph_capture(model, names, channels, found))
        return cut[0](x)

    return run


def value_axes(model: nn.Module, names, example) -> list:
    """The channel axis of each named value of ``trace(model)``: its layer's where that decides it
    (a conv: 1, a Linear: the last), else :func:`repairlib.spec.channel_axes` on ``example``."""
    gm = trace(model)
    nodes = {n.name: n for n in gm.graph.nodes}
    axes = [layer_channel_axis(gm, nodes[n]) if n in nodes else 1 for n in names]
    if any(a is None for a in axes):
        found = channel_axes(model, example)
        axes = [found.get(n, 1) if a is None else a for n, a in zip(names, axes)]
    return axes


def _graph_capture(model, names, channels, axes):
    """:func:`capture` on the traced graph, each value's channels on ``axes``."""
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
                value = graph.call_function(channel_samples, (value, channels[i], axes[i]))
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


def _hook_capture(model, names, submodules, channels, axes):
    def take(output, i):  # a hook sees the value before later in-place ops: always a copy
        if channels is None:
            return output.clone()
        return channel_samples(output, channels[i], 1 if axes[i] is None else axes[i]).clone()

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
