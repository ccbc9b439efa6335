"""Measurements behind the book's sections 3 and 4 and appendix C that REPAIR itself does not need.

- Section 3.2: the correlation of aligned units, corr(X_1, X_2), and the variance of a unit of the
  interpolated network predicted from the endpoints alone (Eq. 5), with its equal-std simplification
  Var(X_alpha) = ((1 - a)^2 + a^2 + 2 a (1 - a) corr) Var(X_1)  (0.5 + 0.5 corr at the midpoint).
- (Per-channel statistics and per-layer variance ratios measured where a correction point's final
  value lives are :func:`repairlib.metrics.point_statistics` and :func:`repairlib.variance_ratio`.)
- REPAIR's goals (Eqs. 3, 4): how far measured channels are from them.
- Permutation invariance: the largest difference between two networks' outputs over a data set.
- N networks: ensembles of softmax outputs and the best single network (:func:`ensembles`), one
  alignment shared by several corrections (:func:`merge_many_each`), and variance collapse of an N-way
  average (:func:`variance_ratios_many`).

Statistics are pooled over every sample (examples times spatial positions) in float64, as in
:mod:`repairlib.stats`.
"""

import torch
from torch import nn

from repairlib.alignment import permute
from repairlib.correction import CORRECTIONS, VARIANT_OF, corrected_many, repair_many
from repairlib.endpoints import EndpointStats
from repairlib.interpolation import average, check_weights
from repairlib.metrics import point_statistics
from repairlib.pipeline import ALIGNMENTS, align_many
from repairlib.plumbing import as_input, batches, check_choice, eval_mode, reusable


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


# ---------------------------------------------------------------- N networks: ensembles, merges, collapse
@torch.no_grad()
def ensembles(models: list, data, sizes=None) -> dict:
    """Each network alone and the ensembles of the first n networks, on ``data``, from one pass each.

    The ensemble of n networks averages their softmax outputs, ``p(x) = (1/n) sum_i softmax(f_i(x))``;
    its accuracy is that of ``argmax p`` and its loss the mean of ``-log p_y``. ``sizes`` (default
    ``1..N``) are the n to report. Returns ``{"members": [{"accuracy", "loss"}] (one per network),
    "ensemble": {n: {"accuracy", "loss"}}, "best_single": {n: {"accuracy", "loss", "index"}}}``; the
    best single network of the first n is the most accurate one (lower loss breaks ties).
    """
    models = list(models)
    sizes = list(range(1, len(models) + 1)) if sizes is None else [int(n) for n in sizes]
    if not models or any(n < 1 or n > len(models) for n in sizes):
        raise ValueError(f"sizes must lie in 1..{len(models)} (the number of networks), got {sizes}")
    probs, targets = [[] for _ in models], []
    with eval_mode(*models):
        for x, y in batches(reusable(data), chunk=True):
            if y is None:
                raise ValueError("ensembles needs (inputs, targets) batches")
            targets.append(y.cpu())
            for i, m in enumerate(models):
                probs[i].append(torch.softmax(m(as_input(x, m)).double(), 1).cpu())
    y = torch.cat(targets)
    probs = [torch.cat(p) for p in probs]

    def scores(p):
        picked = p.gather(1, y[:, None]).squeeze(1)
        return {"accuracy": float((p.argmax(1) == y).double().mean()),
                "loss": float(-picked.clamp_min(1e-300).log().mean())}

    members = [scores(p) for p in probs]
    ensemble, best = {}, {}
    running = torch.zeros_like(probs[0])
    for n, p in enumerate(probs, 1):
        running += p
        if n in sizes:
            ensemble[n] = scores(running / n)
            i = max(range(n), key=lambda j: (members[j]["accuracy"], -members[j]["loss"]))
            best[n] = {**members[i], "index": i}
    return {"members": members, "ensemble": ensemble, "best_single": best}


def merge_many_each(models: list, data, corrections, *, weights=None, align: str = "activation",
                    scope: str = "conv", max_iter: int | None = None, fuse: bool = True) -> dict:
    """:func:`repairlib.merge_many` once per correction in ``corrections``, sharing one alignment.

    The networks are aligned once (:func:`repairlib.pipeline.align_many`, with REPAIR's statistics of
    the aligned networks when a correction needs them), and every correction starts from its own copy
    of the same weighted average; each result equals ``merge_many(models, data, correct=c, ...)``.
    ``fuse=False`` keeps REPAIR's corrections (repair, rescale, closed_form) as separate per-channel
    affines (:func:`repairlib.correction.repair_many`), the same function, so that
    :func:`variance_ratios_many` sees the corrected values (in a BatchNorm network a folded correction
    lives in the BatchNorm after the conv).
    Returns ``{"merged": {correction: network}, "aligned": [the aligned networks], "stats":
    NetworkStats of the aligned networks at ``scope`` (None when no correction needed them)}``.
    """
    check_choice("align", align, ALIGNMENTS)
    corrections = list(corrections)
    for c in corrections:
        check_choice("correct", c, CORRECTIONS)
    models = list(models)
    weights = check_weights(weights, len(models))
    data = reusable(data)
    repairing = any(c in VARIANT_OF for c in corrections)
    stats = None
    if align != "none":
        alignment = align_many(models, data, method=align, weights=weights, max_iter=max_iter,
                               stats_scope=scope if repairing else None, stats_cov="closed_form" in corrections)
        models = [models[0]] + [permute(m, perms) for m, perms in zip(models[1:], alignment[1:])]
        stats = alignment.stats
    merged = {c: corrected_many(average(models, weights), models, data, weights, c, scope, stats) if fuse
              or c not in VARIANT_OF else
              repair_many(average(models, weights), models, data, weights, VARIANT_OF[c], scope, stats, fuse=False)
              for c in corrections}
    return {"merged": merged, "aligned": models, "stats": stats}


def variance_ratios_many(model: nn.Module, stats, data, weights=None) -> dict:
    """Variance collapse of an N-way average (section 3.1 for N networks): ``point -> v / sum_i w_i v_i``.

    ``v`` is the sum over a layer's channels of each channel's variance over ``data`` at the point's
    final value in ``model`` (:func:`repairlib.metrics.point_statistics`); ``v_i`` the same in aligned
    network i, from ``stats`` (:class:`repairlib.endpoints.NetworkStats` on the same data, e.g.
    :func:`merge_many_each`'s ``"stats"``). ``weights`` default to uniform. With two networks and
    scope-"conv" statistics this is :func:`repairlib.variance_ratio` at the midpoint.
    """
    weights = check_weights(weights, len(stats.variances))
    measured = point_statistics(model, reusable(data), stats.points)
    return {p: float(measured[p][1].sum() / sum(w * v[p].sum() for w, v in zip(weights, stats.variances))
                     .clamp_min(1e-30)) for p in stats.points}
