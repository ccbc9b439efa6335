"""Activation statistics gathered in one pass: intermediate outputs and pooled moments.

Every spatial position counts as a sample: a ``[N, C, H, W]`` activation contributes ``N * H * W``
samples of its ``C`` channels, laid out as channel rows ``[C, N * H * W]`` (:func:`channel_rows`), so
every sum is a contiguous row reduction or one matrix product. Moments are *shifted* sums (the first
batch's channel means are subtracted first): within a batch they are computed in the activations'
dtype (pairwise / BLAS sums), across batches accumulated in float64, which keeps the pooled variance
exact to rounding however many batches are pooled -- never an average of per-batch statistics.
"""

import torch
from torch import fx, nn

from repairlib.spec import trace


def channel_rows(x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """``[N, C, *spatial]`` (or ``[N, C * inner]``, with ``channels=C``) -> ``[C, samples]``: one
    contiguous row of samples per channel, in float32 (float64 stays float64). Always a new tensor
    (never a view of ``x``), so later in-place ops on ``x`` cannot change it."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    n, channels = x.shape[0], x.shape[1] if channels is None else channels
    rows = x.reshape(n, channels, -1).transpose(0, 1).reshape(channels, -1)
    same_memory = rows.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    return rows.clone() if same_memory else rows


class Moments:
    """Pooled per-channel mean and variance of one activation, optionally its cross moments.

    ``update(x)`` with channel rows ``x: [C, samples]`` (see :func:`channel_rows`); ``update(x, y)``
    also accumulates the cross moment ``sum (x_i - kx_i)(y_j - ky_j)`` (``cross="full"``: the
    ``[C, C]`` matrix; ``"diag"``: only i = j). ``x`` and ``y`` are scratch: they are shifted in place,
    so pass copies (:func:`channel_rows` and :func:`capture` with ``rows`` make them). Returns this
    batch's ``(mean, variance)`` of ``x`` (float64 ``[C]``), a by-product of the pooled sums.
    """

    def __init__(self, cross=None):
        self.cross = cross
        self.n = 0
        self.shift_x = self.shift_y = None
        self.sx = self.sxx = self.sy = self.syy = self.sxy = None

    @torch.no_grad()
    def update(self, x, y=None):
        if self.n == 0:
            self.shift_x = x.mean(1)
            self.sx = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            self.sxx = torch.zeros_like(self.sx)
            if y is not None:
                self.shift_y = y.mean(1)
                self.sy, self.syy = torch.zeros_like(self.sx), torch.zeros_like(self.sx)
                if self.cross == "full":
                    self.sxy = torch.zeros(x.shape[0], y.shape[0], dtype=torch.float64, device=x.device)
                elif self.cross == "diag":
                    self.sxy = torch.zeros_like(self.sx)
        xc = x.sub_(self.shift_x[:, None])  # in place: the rows are the caller's scratch copy
        batch_sx, batch_sxx = xc.sum(1).double(), torch.linalg.vecdot(xc, xc).double()
        self.sx += batch_sx
        self.sxx += batch_sxx
        if y is not None:
            yc = y.sub_(self.shift_y[:, None])
            self.sy += yc.sum(1)
            self.syy += torch.linalg.vecdot(yc, yc)
            if self.cross == "full":
                self.sxy += xc @ yc.T
            elif self.cross == "diag":
                self.sxy += torch.linalg.vecdot(xc, yc)
        self.n += x.shape[1]
        n = x.shape[1]  # this batch's mean and population variance of x, float64 [C] each
        return self.shift_x.double() + batch_sx / n, (batch_sxx / n - (batch_sx / n) ** 2).clamp_min(0)

    def _require(self):
        if self.n == 0:
            raise ValueError("no samples were seen: the data yielded no batches")

    @property
    def mean_x(self):
        self._require()
        return self.shift_x.double() + self.sx / self.n

    @property
    def var_x(self):
        self._require()
        return (self.sxx / self.n - (self.sx / self.n) ** 2).clamp_min(0)

    @property
    def mean_y(self):
        self._require()
        return self.shift_y.double() + self.sy / self.n

    @property
    def var_y(self):
        self._require()
        return (self.syy / self.n - (self.sy / self.n) ** 2).clamp_min(0)

    @property
    def cov_xy(self):
        """Population covariance: ``[C, C]`` for ``cross="full"``, ``[C]`` for ``"diag"``."""
        self._require()
        mx, my = self.sx / self.n, self.sy / self.n
        if self.cross == "full":
            return self.sxy / self.n - torch.outer(mx, my)
        return self.sxy / self.n - mx * my

    def corr_xy(self, eps=1e-12):
        """Correlation matrix ``[C, C]`` (paper Eq. 2); dead units (zero variance) give 0, never NaN."""
        std_x, std_y = self.var_x.sqrt(), self.var_y.sqrt()
        return self.cov_xy / torch.outer(std_x, std_y).clamp_min(eps)


def capture(model: nn.Module, names, rows=None):
    """A function ``inputs -> [outputs of the named graph nodes]`` for one network.

    ``names`` are node names of the model's torch.fx trace, or submodule names (then forward
    hooks capture them, which also works for untraceable models). Values are copied where taken,
    so later in-place ops cannot alter them; the graph is cut after the last requested node.
    ``rows``: ``None`` returns the values as they are (cloned); a list of channel counts (one per
    name, ``None`` for ``shape[1]``), or ``True`` for ``shape[1]`` everywhere, returns each as channel
    rows ``[C, samples]`` (:func:`channel_rows`, which is then the one copy taken).
    """
    names = list(names)
    rows = [None] * len(names) if rows is True else rows
    if rows is not None and len(rows) != len(names):
        raise ValueError(f"rows has {len(rows)} entries for {len(names)} names")
    submodules = dict(model.named_modules())
    if names and all(n in submodules for n in names) and not _all_nodes(model, names):
        return _hook_capture(model, names, submodules, rows)
    gm = trace(model)
    graph, copies = fx.Graph(), {}
    graph.graph_copy(gm.graph, copies)  # every node but the output
    nodes = {old.name: new for old, new in copies.items()}
    missing = [n for n in names if n not in nodes]
    if missing:
        raise ValueError(f"graph has no node named {missing[0]!r}")
    taken = []
    for i, name in enumerate(names):
        with graph.inserting_after(nodes[name]):
            taken.append(graph.call_method("clone", (nodes[name],)) if rows is None
                         else graph.call_function(channel_rows, (nodes[name], rows[i])))
    graph.output(tuple(taken))
    cut = fx.GraphModule(gm, graph)
    cut.graph.eliminate_dead_code()
    cut.recompile()
    return lambda x: list(cut(x))


def _all_nodes(model, names):
    try:
        nodes = {n.name for n in trace(model).graph.nodes}
    except ValueError:
        return False
    return all(n in nodes for n in names)


def _hook_capture(model, names, submodules, rows):
    def take(output, i):
        return output.clone() if rows is None else channel_rows(output, rows[i])

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
