"""REPAIR's endpoint statistics: the per-channel moments of both aligned endpoints at every correction
point, gathered in one pass (the inputs of Eqs. 3-5)."""

from dataclasses import dataclass

import torch
from torch import nn

from repairlib.plumbing import (
    as_input,
    batches,
    check_choice,
    check_finite_stats,
    check_networks,
    eval_mode,
    first_inputs,
    reusable,
)
from repairlib.points import SCOPES, correction_points
from repairlib.stats import Moments, capture, scratch_pass


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
    data = reusable(data)
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
    check_choice("scope", scope, SCOPES)
    check_networks(model_a=model_a, model_b=model_b)
    data = reusable(data)
    points = correction_points(model_a, scope, first_inputs(data) if scope == "all" else None)
    (m,) = measure([model_a, model_b], data, points)
    stats = EndpointStats(scope, *({p: getattr(m[p], f) for p in points}
                                   for f in ("mean_x", "var_x", "mean_y", "var_y", "cov_xy")))
    for field in ("mean_a", "var_a", "mean_b", "var_b", "cov_ab"):
        check_finite_stats(getattr(stats, field), f"endpoint statistics ({field})")
    return stats
