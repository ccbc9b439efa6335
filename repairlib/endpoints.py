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
    model_device,
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


def measure(models: list, data, points: list) -> list:
    """One pass over ``data``, every model run on every batch: ``[{point: Moments}]`` per pair.

    ``models`` are taken in pairs ``(x, y)``; a lone last model is measured on its own. Each
    :class:`repairlib.stats.Moments` holds the pooled float64 moments, with the channel-wise cross
    moment of a pair (``cov_xy``). (:func:`measure_pairs` with consecutive pairs.)
    """
    pairs = [tuple(range(i, min(i + 2, len(models)))) for i in range(0, len(models), 2)]
    moments = measure_pairs(models, data, list(points),
                            {pair: {p: "diag" if len(pair) == 2 else None for p in points} for pair in pairs})
    return [moments[pair] for pair in pairs]


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


# ---------------------------------------------------------------- N networks
@dataclass
class NetworkStats:
    """Per-channel statistics of every correction point in N aligned networks (:class:`EndpointStats`
    for any number of networks; :func:`network_stats_of` turns one into the other).

    ``means[i]`` and ``variances[i]`` map a point name to network i's float64 ``[C]`` means and population
    variances; ``cov[(i, j)]`` (``i < j``, every pair) maps it to ``Cov(X_i, X_j)`` of corresponding
    channels, ``[C]``, or ``cov`` is None when it was not measured (only the closed form needs it).
    """

    scope: str
    means: list
    variances: list
    cov: dict = None

    @property
    def points(self) -> list:
        return list(self.means[0])

    def covariances(self) -> dict:
        """``cov``, or a clear error when these statistics were gathered without it."""
        if self.cov is None:
            raise ValueError("these statistics have no Cov(X_i, X_j) (the closed form and Eq. 5 need it): "
                             "gather them with align(..., stats_cov=True), align_many(..., stats_cov=True), "
                             "endpoint_stats() or network_stats(..., cov=True)")
        return self.cov

    def targets(self, weights) -> dict:
        """``point -> (mean [C], std [C])`` goals for the average ``sum_i w_i theta_i`` (Eqs. 3, 4 for N
        networks; ``weights`` sum to 1)::

            E[y]   = sum_i w_i E[X_i]
            std(y) = sum_i w_i std(X_i)        (clamped at 0 for negative weights)

        With weights ``(1 - alpha, alpha)`` these are :meth:`EndpointStats.targets` bit for bit.
        """
        weights = [float(w) for w in weights]
        if len(weights) != len(self.means):
            raise ValueError(f"{len(weights)} weights for the statistics of {len(self.means)} networks")
        goals = {}
        for p in self.points:
            mean, std = weights[0] * self.means[0][p], weights[0] * self.variances[0][p].sqrt()
            for w, means, variances in zip(weights[1:], self.means[1:], self.variances[1:]):
                mean, std = mean + w * means[p], std + w * variances[p].sqrt()
            goals[p] = (mean, std.clamp_min(0))
        return goals


def network_stats_of(stats: EndpointStats) -> NetworkStats:
    """Two endpoints' statistics as :class:`NetworkStats` of the networks ``[a, b]`` (the same tensors)."""
    cov = None if stats.cov_ab is None else {(0, 1): stats.cov_ab}
    return NetworkStats(stats.scope, [stats.mean_a, stats.mean_b], [stats.var_a, stats.var_b], cov)


@torch.no_grad()
def measure_pairs(models: list, data, names: list, pairs: dict, channels=None, axes=None) -> dict:
    """ONE pass over ``data``, every model run on every batch: ``{pair: {name: Moments}}``.

    ``pairs`` maps ``(i, j)`` (``i < j``) to ``{name: cross}`` (the cross moment of ``X_i`` and ``X_j``:
    ``"full"``, ``"diag"`` or None), or ``(i,)`` to ``{name: None}`` (network i alone). ``names``: the
    graph nodes every model captures (:func:`repairlib.stats.capture`, with ``channels`` and ``axes``). Network j's
    values are dropped once its last pair has seen them, so at most the models still paired are held.
    """
    data = reusable(data)
    channels = True if channels is None else channels
    probes = [capture(m, names, channels=channels, axes=axes) for m in models]
    moments = {pair: {n: Moments(cross=c) for n, c in watched.items()} for pair, watched in pairs.items()}
    index = {n: k for k, n in enumerate(names)}
    last_use = {i: max(pair[-1] for pair in pairs if i in pair) for i in range(len(models))}
    devices = [model_device(m) for m in models]
    with eval_mode(*models), scratch_pass():
        for x, _ in batches(data, chunk=True):
            outs = {}
            for j, (probe, model) in enumerate(zip(probes, models)):
                if j not in last_use:
                    continue
                outs[j] = probe(as_input(x, model))  # [name] of [N, C, L] samples
                for pair, pair_moments in moments.items():
                    if pair[-1] == j:
                        _update_pair(pair_moments, [outs[i] for i in pair], pair, index, devices)
                for i in [i for i in outs if last_use[i] == j]:
                    del outs[i]
    return moments


def _update_pair(pair_moments: dict, values: list, pair: tuple, index: dict, devices: list) -> None:
    """Add one batch of the pair's values (``[model][name]``) to its moments, on the first model's device."""
    for n, m in pair_moments.items():
        xs = [v[index[n]] for v in values]
        m.update(*(x if devices[i] == devices[pair[0]] else x.to(devices[pair[0]]) for i, x in zip(pair, xs)))


def network_stats(models: list, data, scope: str = "conv", cov: bool = False) -> NetworkStats:
    """Statistics of every correction point of N (already aligned) networks, from ONE pass over ``data``;
    ``cov=True`` also measures ``Cov(X_i, X_j)`` of every pair (for the closed form)."""
    check_choice("scope", scope, SCOPES)
    if len(models) < 1:
        raise ValueError("network_stats needs at least one network")
    check_networks(**{f"models[{i}]": m for i, m in enumerate(models)})
    data = reusable(data)
    points = correction_points(models[0], scope, first_inputs(data) if scope == "all" else None)
    return network_stats_at(models, data, scope, points, cov)


def network_stats_at(models: list, data, scope: str, points: list, cov: bool = False) -> NetworkStats:
    """:func:`network_stats` at the given ``points`` (of ``scope``) only: one pass of the N networks over
    ``data``, each graph cut after the last of ``points``."""
    n = len(models)
    if cov and n > 1:
        pairs = {(i, j): dict.fromkeys(points, "diag") for i in range(n) for j in range(i + 1, n)}
    else:
        pairs = {(i,): dict.fromkeys(points) for i in range(n)}
    moments = measure_pairs(models, reusable(data), points, pairs)
    stats = stats_from_pairs(moments, n, scope, points)
    for i in range(n):
        check_finite_stats(stats.means[i], f"network {i}'s means")
        check_finite_stats(stats.variances[i], f"network {i}'s variances")
    return stats


def with_points(stats: NetworkStats, later: NetworkStats, points: list) -> NetworkStats:
    """``stats`` and ``later`` (statistics of the same networks at other points) as one
    :class:`NetworkStats` over ``points``, in that order; ``cov`` where both have it."""
    def join(first: dict, second: dict) -> dict:
        return {p: second[p] if p in second else first[p] for p in points}

    means = [join(a, b) for a, b in zip(stats.means, later.means)]
    variances = [join(a, b) for a, b in zip(stats.variances, later.variances)]
    cov = None
    if stats.cov is not None and later.cov is not None:
        cov = {pair: join(stats.cov[pair], later.cov[pair]) for pair in stats.cov}
    return NetworkStats(stats.scope, means, variances, cov)


def endpoint_stats_of(stats: NetworkStats) -> EndpointStats:
    """The statistics of two networks ``[a, b]`` as :class:`EndpointStats` (:func:`network_stats_of`
    reversed, the same tensors)."""
    cov = None if stats.cov is None else stats.cov[(0, 1)]
    return EndpointStats(stats.scope, stats.means[0], stats.variances[0], stats.means[1], stats.variances[1], cov)


def stats_from_pairs(moments: dict, n: int, scope: str, points: list, orders=None) -> NetworkStats:
    """:class:`NetworkStats` from :func:`measure_pairs` moments that see every network at ``points``.

    ``orders``: ``None`` (the networks as measured), or per network a function ``point -> LongTensor
    [C] or None`` that gives the channel order after alignment (channel c is measured channel
    ``order[c]``). ``cov`` comes from the pairs with cross moments at every point (``[C, C]`` ones are
    read at ``(order_i[c], order_j[c])``, diagonal ones only without ``orders``); None when some pair
    of networks has none.
    """
    means, variances, cov = [{} for _ in range(n)], [{} for _ in range(n)], {}
    order = (lambda i, p, size: _order(orders, i, p, size))
    for pair, pair_moments in moments.items():
        for p in points:
            m = pair_moments.get(p)
            if m is None:
                continue
            for k, i in enumerate(pair):
                if p not in means[i]:
                    mean, var = (m.mean_x, m.var_x) if k == 0 else (m.mean_y, m.var_y)
                    perm = order(i, p, len(mean)).to(mean.device)
                    means[i][p], variances[i][p] = mean[perm], var[perm]
            if len(pair) == 2 and m.cross is not None:
                i, j = pair
                size = len(m.mean_x)
                oi, oj = order(i, p, size).to(m.mean_x.device), order(j, p, size).to(m.mean_x.device)
                if m.cross == "diag" and orders is not None:
                    raise ValueError("a diagonal cross moment cannot be reordered: measure aligned networks")
                cov.setdefault(pair, {})[p] = m.cov_xy[oi, oj] if m.cross == "full" else m.cov_xy
    complete = (all(len(cov.get((i, j), {})) == len(points) for i in range(n) for j in range(i + 1, n))
                and n > 1)
    return NetworkStats(scope, means, variances, cov if complete else None)


def _order(orders, i, p, size) -> torch.Tensor:
    perm = None if orders is None else orders[i](p)
    return torch.arange(size) if perm is None else perm
