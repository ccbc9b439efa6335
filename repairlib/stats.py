"""Activation statistics gathered in one pass: intermediate outputs and pooled moments.

Every spatial position counts as a sample: a ``[N, C, H, W]`` activation contributes ``N * H * W``
samples of its ``C`` channels. Moments are accumulated as *shifted* sums in float64 (the first
batch's channel means are subtracted before summing), which keeps the variance exact to float64
rounding however many batches are pooled -- never an average of per-batch statistics.
"""

import torch
from torch import fx, nn

from repairlib.spec import trace


def as_samples(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``[N, C, *spatial]`` (or ``[N, C * inner]``) -> ``[samples, C]``, channels last."""
    n = x.shape[0]
    x = x.reshape(n, channels, -1)
    return x.transpose(1, 2).reshape(-1, channels)


class Moments:
    """Pooled per-channel mean and variance of one activation, optionally its cross moments.

    ``update(x)`` with ``x: [samples, C]``; ``update(x, y)`` also accumulates the cross moment
    ``sum (x_i - kx_i)(y_j - ky_j)`` (``cross="full"``: the ``[C, C]`` matrix; ``"diag"``: only i = j).
    """

    def __init__(self, cross=None):
        self.cross = cross
        self.n = 0
        self.shift_x = self.shift_y = None
        self.sx = self.sxx = self.sy = self.syy = self.sxy = None

    @torch.no_grad()
    def update(self, x, y=None):
        if self.n == 0:
            self.shift_x = x.mean(0).detach()
            self.sx = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.sxx = torch.zeros_like(self.sx)
            if y is not None:
                self.shift_y = y.mean(0).detach()
                self.sy, self.syy = torch.zeros_like(self.sx), torch.zeros_like(self.sx)
                if self.cross == "full":
                    self.sxy = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, device=x.device)
                elif self.cross == "diag":
                    self.sxy = torch.zeros_like(self.sx)
        xc = x - self.shift_x
        self.sx += xc.sum(0, dtype=torch.float64)
        self.sxx += (xc * xc).sum(0, dtype=torch.float64)
        if y is not None:
            yc = y - self.shift_y
            self.sy += yc.sum(0, dtype=torch.float64)
            self.syy += (yc * yc).sum(0, dtype=torch.float64)
            if self.cross == "full":
                self.sxy += (xc.T @ yc).double()
            elif self.cross == "diag":
                self.sxy += (xc * yc).sum(0, dtype=torch.float64)
        self.n += x.shape[0]

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


def capture(model: nn.Module, names):
    """A function ``inputs -> [outputs of the named graph nodes]`` for one network.

    ``names`` are node names of the model's torch.fx trace, or submodule names (then forward
    hooks capture them, which also works for untraceable models). Values are cloned where taken,
    so later in-place ops cannot alter them; the graph is cut after the last requested node.
    """
    names = list(names)
    submodules = dict(model.named_modules())
    if names and all(n in submodules for n in names) and not _all_nodes(model, names):
        return _hook_capture(model, names, submodules)
    gm = trace(model)
    graph, copies = fx.Graph(), {}
    graph.graph_copy(gm.graph, copies)  # every node but the output
    nodes = {old.name: new for old, new in copies.items()}
    missing = [n for n in names if n not in nodes]
    if missing:
        raise ValueError(f"graph has no node named {missing[0]!r}")
    clones = []
    for name in names:
        with graph.inserting_after(nodes[name]):
            clones.append(graph.call_method("clone", (nodes[name],)))
    graph.output(tuple(clones))
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


def _hook_capture(model, names, submodules):
    def run(x):
        got = {}
        handles = [submodules[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.clone()))
                   for n in names]
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
