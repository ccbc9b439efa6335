"""Measurements behind the book's sections 3 and 4 and appendix C that REPAIR itself does not need.

- Section 3.2: the correlation of aligned units, corr(X_1, X_2), and the variance of a unit of the
  interpolated network predicted from the endpoints alone (Eq. 5), with its equal-std simplification
  Var(X_alpha) = ((1 - a)^2 + a^2 + 2 a (1 - a) corr) Var(X_1)  (0.5 + 0.5 corr at the midpoint).
- (Per-channel statistics and per-layer variance ratios measured where a correction point's final
  value lives are :func:`repairlib.metrics.point_statistics` and :func:`repairlib.variance_ratio`.)
- REPAIR's goals (Eqs. 3, 4): how far measured channels are from them.
- Permutation invariance: the largest difference between two networks' outputs over a data set.

Statistics are pooled over every sample (examples times spatial positions) in float64, as in
:mod:`repairlib.stats`.
"""

import torch
from torch import nn

from repairlib.endpoints import EndpointStats
from repairlib.plumbing import as_input, batches, eval_mode, reusable


# ---------------------------------------------------------------- section 3.2: Eq. 5
def unit_correlations(stats: EndpointStats) -> dict:
    """``point -> [C]`` correlation of each pair of corresponding channels, corr(X_1, X_2).

    ``stats`` from :func:`repairlib.endpoint_stats` (``model_b`` aligned to ``model_a``, or not, to see
    the unaligned pairing). Dead channels (zero variance in either network) get 0, never NaN.
    """
    cov = stats.covariances()
    return {p: cov[p] / (stats.var_a[p] * stats.var_b[p]).sqrt().clamp_min(1e-30) for p in stats.points}


def predicted_variance(stats: EndpointStats, alpha: float) -> dict:
    """``point -> [C]`` Var(X_alpha) predicted from the endpoints alone (paper Eq. 5)::

        Var(X_alpha) = (1 - a)^2 Var(X_1) + a^2 Var(X_2) + 2 a (1 - a) Cov(X_1, X_2)

    Exact for the first layer of the interpolated network (its preactivation is the interpolation
    of the endpoints' preactivations); deeper, the collapse compounds and the prediction is too high.
    """
    a, cov = float(alpha), stats.covariances()
    return {p: (1 - a) ** 2 * stats.var_a[p] + a ** 2 * stats.var_b[p] + 2 * a * (1 - a) * cov[p]
            for p in stats.points}


def predicted_variance_ratios(stats: EndpointStats, alpha: float) -> dict:
    """``point -> v_alpha / ((v_1 + v_2) / 2)`` as Eq. 5 predicts it from each layer's own endpoint units.

    v is a layer's summed channel variance (as in :func:`repairlib.variance_ratio`). The prediction treats every
    layer like the first one, i.e. it ignores that a layer's inputs have collapsed already, so deeper
    layers of a real interpolated network fall below it (the collapse compounds).
    """
    predicted = predicted_variance(stats, alpha)
    return {p: float(predicted[p].sum() / ((stats.var_a[p].sum() + stats.var_b[p].sum()) / 2).clamp_min(1e-30))
            for p in stats.points}


def equal_std_factor(corr, alpha: float = 0.5):
    """Var(X_alpha) / Var(X_1) by Eq. 5 when std(X_1) = std(X_2): ``(1-a)^2 + a^2 + 2a(1-a) corr``.

    At the midpoint this is ``0.5 + 0.5 corr``: the paper's corr 0.4 gives 0.7 (section 3.2).
    ``corr``: a float, array or tensor; the result has the same type.
    """
    a = float(alpha)
    return (1 - a) ** 2 + a ** 2 + 2 * a * (1 - a) * corr


# ---------------------------------------------------------------- REPAIR's goals
def goal_errors(measured: dict, goals: dict) -> dict:
    """How far channels are from REPAIR's goals (Eqs. 3, 4), per point, in units of the goal std.

    ``measured``: ``point -> (mean [C], var [C])`` (:func:`point_statistics`); ``goals``:
    ``point -> (mean [C], std [C])`` (``EndpointStats.targets(alpha)``). Returns
    ``point -> {"mean": max_c |mean - goal mean| / goal std, "std": max_c |std / goal std - 1|}``
    over channels whose goal std is positive.
    """
    errors = {}
    for p, (goal_mean, goal_std) in goals.items():
        if p not in measured:
            raise ValueError(f"no measured statistics for point {p!r}")
        mean, var = measured[p]
        live = goal_std > 0
        std = var.double().sqrt()
        errors[p] = {
            "mean": float(((mean.double() - goal_mean) / goal_std)[live].abs().max()) if live.any() else 0.0,
            "std": float((std / goal_std - 1)[live].abs().max()) if live.any() else 0.0,
        }
    return errors


# ---------------------------------------------------------------- permutation invariance
@torch.no_grad()
def output_difference(model_a: nn.Module, model_b: nn.Module, data) -> dict:
    """``{"max_diff": max |f_a(x) - f_b(x)|, "max_output": max |f_a(x)|}`` over all outputs on ``data``.

    For a network and its permuted copy (:func:`repairlib.permute`) ``max_diff`` is rounding error,
    a tiny fraction of ``max_output``.
    """
    diff, scale = 0.0, 0.0
    with eval_mode(model_a, model_b):
        for x, _ in batches(reusable(data), chunk=True):
            ya, yb = model_a(as_input(x, model_a)), model_b(as_input(x, model_b))
            diff = max(diff, float((ya.double() - yb.double().to(ya.device)).abs().max()))
            scale = max(scale, float(ya.abs().max()))
    return {"max_diff": diff, "max_output": scale}
