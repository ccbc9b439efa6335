"""The common case in one call: align, average and correct two (:func:`merge`) or N (:func:`merge_many`)
trained networks; :func:`align_many` puts N networks into one unit order."""

import torch
from torch import nn

from repairlib.alignment import (
    Alignment,
    Alignments,
    identity_permutations,
    late_points,
    permute,
    permuted_state,
    point_order,
    reference_correlations,
    solve_groups,
    weight_matching,
)
from repairlib.correction import CORRECTIONS, VARIANT_OF, corrected_many
from repairlib.endpoints import network_stats, network_stats_at, stats_from_pairs, with_points
from repairlib.interpolation import average, check_weights, weighted_average
from repairlib.plumbing import check_alpha, check_choice, check_networks, first_inputs, reusable
from repairlib.points import SCOPES, correction_points
from repairlib.spec import permutation_spec

ALIGNMENTS = ("activation", "weight", "none")
ROUNDS = {"activation": 0, "weight": 100}  # max_iter=None: refinement passes / N-way weight-matching rounds


def merge(model_a: nn.Module, model_b: nn.Module, data, alpha: float = 0.5, *, align: str = "activation",
          correct: str = "repair", scope: str = "conv") -> nn.Module:
    """theta_alpha = (1 - alpha) theta_a + alpha theta_b' with B aligned to A (B' = P(B)), corrected.

    ``data``: training batches ``(inputs, targets)`` for the statistics (about 5,000 images suffice),
    read in a fixed order. ``align``: ``"activation"`` (correlation matching, Eq. 2), ``"weight"``
    (weight matching, data-free) or ``"none"``. ``correct``: ``"repair"`` (exact REPAIR, section 4.2),
    ``"rescale"`` (exact REPAIR of the standard deviation only, the mean left as interpolated),
    ``"closed_form"`` (4.1), ``"reset_bn"`` (BatchNorm statistics reset) or ``"none"``. ``scope``: where
    REPAIR corrects (:mod:`repairlib.points`). Returns a new network (of the input's class when every
    correction folds into its layers); neither input is modified.

    The fastest path: activation matching gathers REPAIR's endpoint statistics in its own pass (one
    forward pass of A and B), and exact REPAIR adds one renormalising pass of the merged network, so
    the whole call costs about three forward passes over ``data``. It is :func:`merge_many` of
    ``[model_a, model_b]`` with weights ``(1 - alpha, alpha)``.
    """
    alpha = check_alpha(alpha)  # align, correct and scope are checked by merge_many
    return merge_many([model_a, model_b], data, weights=(1 - alpha, alpha), align=align, correct=correct,
                      scope=scope)


def merge_many(models, data, *, weights=None, align: str = "activation", correct: str = "repair",
               scope: str = "conv", max_iter: int | None = None) -> nn.Module:
    """theta = sum_i w_i P_i(theta_i): N >= 2 networks aligned to one unit order, averaged, corrected.

    ``models``: networks of one architecture; ``models[0]`` is the reference whose unit order the result
    keeps. ``weights``: N non-negative numbers with a positive sum, normalised to sum 1 (default
    uniform). ``align``: ``"activation"``, ``"weight"`` or ``"none"`` (:func:`align_many`; ``max_iter``
    as there). ``correct``: as in :func:`merge`; REPAIR's goals are the weighted means over the
    aligned networks (Eqs. 3, 4 for N networks)::

        E[y] = sum_i w_i E[X_i],    std(y) = sum_i w_i std(X_i)

    Returns a new network; no input is modified. With two networks and weights ``(1 - alpha, alpha)``
    this is :func:`merge` at ``alpha``, bit for bit.

    Cost with the defaults (activation matching, exact REPAIR): ONE pass of all N networks over
    ``data`` (matching and REPAIR's statistics together) and one renormalising pass of the merged
    network: N + 1 forward passes, plus the cross moments. ``max_iter`` refinement rounds (0 by
    default for activation matching) add one pass of N networks each.
    """
    check_choice("align", align, ALIGNMENTS)
    check_choice("correct", correct, CORRECTIONS)
    check_choice("scope", scope, SCOPES)
    models = _checked_models(models)
    weights = check_weights(weights, len(models))
    data = reusable(data)
    stats = None
    if align != "none":
        repairing = correct in VARIANT_OF
        alignment = align_many(models, data, method=align, weights=weights, max_iter=max_iter,
                               stats_scope=scope if repairing else None, stats_cov=correct == "closed_form")
        models = [models[0]] + [permute(m, perms) for m, perms in zip(models[1:], alignment[1:])]
        stats = alignment.stats
    return corrected_many(average(models, weights), models, data, weights, correct, scope, stats)


def _checked_models(models) -> list:
    """``models`` as a list of at least two finite networks of one architecture, else ``ValueError``."""
    if isinstance(models, nn.Module):  # an nn.Sequential would iterate over its layers
        raise ValueError("merge_many takes a list of networks, got a single network")  # noqa: TRY004
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"merge_many needs at least 2 networks, got {len(models)}")
    check_networks(**{f"models[{i}]": m for i, m in enumerate(models)})
    return models


def align_many(models: list, data, method: str = "activation", spec=None, weights=None,
               max_iter: int | None = None, seed: int = 0, stats_scope: str | None = None, stats_cov: bool = True) -> Alignments:
    """Alignments of N networks to one common unit order, that of ``models[0]`` (the reference).

    - ``"activation"``: ONE pass of all N networks over ``data`` aligns each network ``i >= 1`` to the
      reference (Eq. 2, :func:`repairlib.alignment.reference_correlations`); then up to ``max_iter``
      refinement rounds (default 0), each one more pass, re-align every network ``i >= 1`` to the
      activations of the current weighted average of the aligned networks (all at once), stopping when
      no permutation changes.
    - ``"weight"`` (data-free): each network ``i >= 1`` in turn is weight-matched
      (:func:`repairlib.alignment.weight_matching`) to the weighted average of the others as currently
      aligned, until a round changes no permutation (at most ``max_iter`` rounds, default 100).

    ``weights``: the merge weights (default uniform). ``stats_scope``, ``stats_cov``: as in
    :func:`repairlib.align`: REPAIR's statistics of the *aligned* networks as ``result.stats``
    (:class:`repairlib.endpoints.NetworkStats`), gathered in the matching pass for activation matching
    (``stats_cov``: every pair's ``Cov(X_i, X_j)``, for the closed form), in one pass of N networks
    for weight matching; the points of :func:`repairlib.alignment.late_points` (``stats_cov``) in a second
    pass of the aligned networks. With two networks this is :func:`repairlib.align` (the same permutations).
    """
    check_choice("method", method, ("activation", "weight"))
    for m in models[1:]:
        check_networks(reference=models[0], model=m)
    weights = check_weights(weights, len(models))
    data = reusable(data)
    spec = permutation_spec(models[0], first_inputs(data)) if spec is None else spec
    rounds = ROUNDS[method] if max_iter is None else int(max_iter)
    if method == "weight":
        params = {k for k, _ in models[0].named_parameters()}
        perms = weight_matching_many(spec, [m.state_dict() for m in models], weights, params, rounds, seed)
        alignments = [Alignment(p, spec) for p in perms]
        stats = None
        if stats_scope:
            aligned = [models[0]] + [permute(m, p, spec) for m, p in zip(models[1:], perms[1:])]
            stats = network_stats(aligned, data, stats_scope, cov=stats_cov)
        return Alignments(alignments, spec, stats)
    points = correction_points(models[0], stats_scope, first_inputs(data)) if stats_scope else []
    late = late_points(spec, points) if stats_cov else []
    early = [p for p in points if p not in late]
    corr, moments = reference_correlations(models, data, spec, early, "full" if stats_cov else None,
                                           all_pairs=stats_cov, points_alone=not stats_cov)
    perms = [identity_permutations(spec)] + [_assignments(corr[i], spec, models[0], models[i])
                                             for i in range(1, len(models))]
    for _ in range(rounds):
        refined, corr = _refined(models, perms, weights, data, spec)
        if all(_same(p, q) for p, q in zip(perms, refined)):
            break
        perms = refined
    stats = None
    if stats_scope:
        orders = [point_order(p, spec) for p in perms]
        stats = stats_from_pairs(moments, len(models), stats_scope, early, orders)
        if late:
            aligned = [models[0]] + [permute(m, p, spec) for m, p in zip(models[1:], perms[1:])]
            stats = with_points(stats, network_stats_at(aligned, data, stats_scope, late, cov=True), points)
    alignments = [Alignment(perms[0], spec)] + [Alignment(p, spec, corr[i]) for i, p in enumerate(perms) if i]
    return Alignments(alignments, spec, stats)


def _assignments(corr: dict, spec, reference: nn.Module, model: nn.Module) -> dict:
    """``model``'s permutations from its correlations with ``reference``; groups without an activation
    probe are weight-matched to ``reference`` (:func:`repairlib.alignment.solve_groups`)."""
    params = {k for k, _ in reference.named_parameters()}
    return solve_groups(spec, corr, reference.state_dict(), model.state_dict(), params)


def _same(p: dict, q: dict) -> bool:
    return all(torch.equal(p[g], q[g]) for g in p)


def _refined(models, perms, weights, data, spec) -> tuple:
    """One refinement pass: every network ``i >= 1`` re-aligned to the average of the aligned networks."""
    aligned = [permute(m, p, spec) for m, p in zip(models, perms)]
    mean = average(aligned, weights)
    corr, _ = reference_correlations([mean] + list(models[1:]), data, spec)
    return [perms[0]] + [_assignments(corr[i], spec, mean, models[i]) for i in range(1, len(models))], corr


def weight_matching_many(spec, states: list, weights: list, keys=None, max_iter: int = 100, seed: int = 0) -> list:
    """N-network weight matching: ``[perms]`` per network, the first (the reference) the identity.

    Each network ``i >= 1`` in turn gets the permutation that weight-matches it to
    ``sum_{j != i} w_j P_j(theta_j) / sum_{j != i} w_j`` (uniform when those weights are all 0), the
    others as currently aligned; rounds repeat until no permutation changes (at most ``max_iter``). A
    network is matched again only when another one changed since its last matching (with two networks,
    one matching: :func:`repairlib.alignment.weight_matching`).
    """
    n = len(states)
    perms = [identity_permutations(spec) for _ in range(n)]
    changed_at = [0] * n  # step at which each network's permutation last changed
    seen_at = [-1] * n  # step at which each network was last matched
    step = 0
    for _ in range(max(max_iter, 1)):
        moved = False
        for i in range(1, n):
            others = [j for j in range(n) if j != i]
            if seen_at[i] >= max(changed_at[j] for j in others):
                continue  # its target has not changed since its last matching
            step += 1
            seen_at[i] = step
            new = weight_matching(spec, _others_average(states, perms, weights, others, spec), states[i], keys,
                                  seed=seed)
            if not _same(new, perms[i]):
                perms[i], changed_at[i], moved = new, step, True
        if not moved:
            break
    return perms


def _others_average(states, perms, weights, others, spec) -> dict:
    mass = [weights[j] for j in others]
    mass = mass if sum(mass) > 0 else [1.0] * len(others)
    return weighted_average([permuted_state(states[j], perms[j], spec) for j in others], mass)
