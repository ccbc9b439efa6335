"""Neuron alignment: find the permutation of ``model_b``'s units that best matches ``model_a``.

- Activation matching (Li et al. 2015; paper section 2.3, Eq. 2): maximise the summed correlation
  of paired units. The statistics of every matched unit of both networks are gathered in ONE pass
  over the data (permuting earlier layers does not change a unit's activations), then each group
  is solved with ``scipy.optimize.linear_sum_assignment``. Units are measured at their group's probes
  (:class:`repairlib.spec.Group`): conv channels on dim 1, a transformer's token features (MLP hidden
  units, residual stream, merged value/output heads) on the last axis of ``[N, T, D]``, every position a
  sample; groups without a probe (query/key heads) are weight-matched with the others held.
- Weight matching (Ainsworth et al. 2022): data-free; maximise the summed inner product of paired
  weights by coordinate descent over the groups, one assignment problem per step.

For N networks (:func:`repairlib.pipeline.align_many`, :func:`repairlib.merge_many`),
:func:`reference_correlations` gathers every network's correlations with the first one in ONE pass of
all N, and :func:`permuted_state` / :func:`identity_permutations` / :func:`point_order` carry one
alignment per network.
"""

import copy
import warnings

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from repairlib.endpoints import (
    EndpointStats,
    endpoint_stats,
    endpoint_stats_of,
    measure_pairs,
    network_stats_at,
    network_stats_of,
    with_points,
)
from repairlib.plumbing import (
    check_same_architecture,
    copy_model,
    first_inputs,
    reusable,
)
from repairlib.points import correction_points
from repairlib.spec import (
    PermutationSpec,
    compose_heads,
    is_structured,
    permutation_spec,
    permute_axis,
    random_group_permutations,
    split_heads,
)


class Alignment(dict):
    """``group name -> LongTensor [size]`` permutation of ``model_b``'s units; ``.spec`` is kept.

    ``perm[i]`` is the unit of ``model_b`` matched to unit ``i`` of ``model_a``, so the aligned
    network is ``model_b`` indexed by ``perm`` along every axis of the group.
    ``correlations`` (activation matching) holds each group's ``[size, size]`` correlation matrix.
    """

    def __init__(self, perms, spec, correlations=None, endpoint_stats=None):
        super().__init__(perms)
        self.spec = spec
        self.correlations = correlations or {}
        self.endpoint_stats = endpoint_stats

    def matched_correlation(self):
        """Mean correlation of matched pairs per group (paper section 3.2 quotes about 0.4)."""
        return {g: float(c[torch.arange(len(self[g])), self[g]].mean()) for g, c in self.correlations.items()}


def align(model_a: nn.Module, model_b: nn.Module, data, method="activation", spec=None,
          max_iter=100, seed=0, stats_scope=None, stats_cov=True) -> Alignment:
    """Permutations that align ``model_b`` to ``model_a``: ``{group name: LongTensor}``.

    ``data``: any iterable of ``(inputs, targets)`` batches (targets unused). With
    ``method="weight"`` only its first batch is used, to trace shapes. ``spec`` defaults to
    :func:`repairlib.permutation_spec` of ``model_a``. Neither model is modified.

    ``method="activation"`` correlates every group at its probes (``spec.groups[g].probes``): ``[N, C, *]``
    channels on dim 1 (every pixel a sample), ``[N, T, D]`` token features on the last axis (every token a
    sample: a ViT's MLP hidden units, its residual stream, and its value/output heads at the input of
    the output projection, solved as whole heads, :func:`solve_unit`). Groups without a probe (a query/key
    group, an MLP-Mixer's token-MLP units) are weight-matched, the other groups held at their activation
    match and a head set's heads where its value/output group put them (:func:`solve_groups`).

    ``stats_scope="conv"|"all"`` also measures REPAIR's endpoint statistics (of ``model_a`` and of
    the *aligned* ``model_b``) in the same pass over ``data``: permuting B only reorders its
    channels, so B's statistics are measured once and permuted afterwards. Where another axis of a
    point's value is permuted too (``spec.mixed_nodes``: an MLP-Mixer's token MLP), ``Cov(X_a, X_b)``
    pairs A's elements with B's only once B is aligned: with ``stats_cov`` those points are measured in
    a second pass of A and the aligned B, cut after the last of them (:func:`late_points`). They are returned as
    ``result.endpoint_stats``, for ``repairlib.repair(..., stats=result.endpoint_stats)``.
    ``stats_cov=False`` leaves out ``Cov(X_a, X_b)``, which only the closed-form variant needs: the pass
    then skips a ``[C, C]`` cross moment at every point that is not also a matching probe.

    Cost: activation matching is one forward pass of each network over ``data`` (the endpoint
    statistics ride along in it); weight matching needs no pass (one for ``stats_scope``). For the
    common case, :func:`repairlib.merge` runs align, interpolate and REPAIR with these statistics
    reused; call the steps yourself to inspect or vary each one. ``data`` is read in a fixed order
    (:func:`repairlib.plumbing.reusable`): the result does not depend on earlier passes.
    """
    if method not in ("activation", "weight"):
        raise ValueError(f"method must be 'activation' or 'weight', got {method!r}")
    check_same_architecture(model_a, model_b)
    data = reusable(data)
    if spec is None:
        spec = permutation_spec(model_a, first_inputs(data))
    if method == "weight":
        params = {k for k, _ in model_a.named_parameters()}
        perms = weight_matching(spec, model_a.state_dict(), model_b.state_dict(), params, max_iter, seed)
        stats = endpoint_stats(model_a, permute(model_b, perms, spec), data, stats_scope) if stats_scope else None
        return Alignment(perms, spec, endpoint_stats=stats)
    points = correction_points(model_a, stats_scope, first_inputs(data)) if stats_scope else []
    late = late_points(spec, points) if stats_cov else []
    corr, point_moments = activation_correlations(model_a, model_b, data, spec, [p for p in points if p not in late],
                                                  point_cross="full" if stats_cov else None)
    params = {k for k, _ in model_a.named_parameters()}
    perms = solve_groups(spec, corr, model_a.state_dict(), model_b.state_dict(), params, max_iter, seed)
    stats = permuted_endpoint_stats(point_moments, perms, spec, stats_scope) if stats_scope else None
    if late:
        aligned = network_stats_at([model_a, permute(model_b, perms, spec)], data, stats_scope, late, cov=True)
        stats = endpoint_stats_of(with_points(network_stats_of(stats), aligned, points))
    return Alignment(perms, spec, corr, stats)


def late_points(spec: PermutationSpec, points: list) -> list:
    """The ``points`` whose cross moments need the networks aligned first: those of ``spec.mixed_nodes``,
    whose value has a permuted space on an axis other than the batch and the channels (an MLP-Mixer's
    token-MLP hidden units ``[N, D, hidden]`` along the residual stream ``D``), so that a cross moment
    of unaligned networks pairs mismatched positions. Empty for convolutional networks and ViTs."""
    return [p for p in points if p in spec.mixed_nodes]


def permuted_endpoint_stats(moments: dict, perms: dict, spec: PermutationSpec, scope: str) -> EndpointStats:
    """REPAIR's endpoint statistics of ``model_a`` and of ``model_b`` aligned by ``perms``.

    ``moments``: ``point -> Moments`` of (A, B), with the full ``[C, C]`` cross moment for ``cov_ab``
    (else ``cov_ab`` is None). A point whose channels belong to group g sees B's channel ``perms[g][i]``
    at position i after alignment.
    """
    fields = {f: {} for f in ("mean_a", "var_a", "mean_b", "var_b", "cov_ab")}
    for p, m in moments.items():
        g = spec.node_groups.get(p)
        device, size = m.mean_x.device, len(m.mean_x)
        perm = perms[g].to(device) if g is not None else torch.arange(size, device=device)
        fields["mean_a"][p], fields["var_a"][p] = m.mean_x, m.var_x
        fields["mean_b"][p], fields["var_b"][p] = m.mean_y[perm], m.var_y[perm]
        if m.cross == "full":
            fields["cov_ab"][p] = m.cov_xy[torch.arange(len(perm), device=perm.device), perm]
    if len(fields["cov_ab"]) < len(moments):
        fields["cov_ab"] = None
    return EndpointStats(scope, **fields)


def solve_assignment(score: torch.Tensor) -> torch.Tensor:
    """``score [n, n]`` -> LongTensor ``perm`` maximising ``sum_i score[i, perm[i]]`` (Hungarian).

    The solver gets the doubly centred score ``score_ij - mean_j score_ij - mean_i score_ij + mean score``:
    that adds the same constant to the total of every permutation, so the best one is the same, and
    scipy's solver is far faster on it when the score is close to rank one, as the sorted-weight scores
    of weight matching's start are (a 3,072 x 3,072 one of torchvision's ConvNeXt-Tiny: 49 s raw,
    0.16 s centred, the same assignment)."""
    score = score.detach().cpu().double()
    centred = score - score.mean(1, keepdim=True) - score.mean(0, keepdim=True) + score.mean()
    _, cols = linear_sum_assignment(centred.numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)


def solve_unit(spec: PermutationSpec, members: list, scores: dict, sigma=None) -> dict:
    """The best permutations of one solver unit (:meth:`PermutationSpec.units`): ``{group: perm}``
    maximising ``sum_g sum_i scores[g][i, perm_g[i]]`` (``scores[g]``: ``[size, size]``).

    A plain group is one assignment problem. Head groups (``[heads, head_dim]`` units) only admit
    ``perm[h * d + i] = sigma[h] * d + tau_h[i]``: for every pair of heads (a of A, b of B) and every
    member the best ``tau`` inside the block ``score[a * d:(a + 1) * d, b * d:(b + 1) * d]`` is one
    assignment of ``d`` units (the identity where ``within`` is False); ``sigma`` is then the
    assignment of heads by those best block scores summed over the members (the identity without a
    head set). Exact: the best head-structured permutation. ``sigma`` (LongTensor ``[heads]``) holds the
    heads where they are already decided (by other groups of the head set): only the ``tau`` are solved.
    """
    first = spec.groups[members[0]]
    if first.heads == 1:
        return {members[0]: solve_assignment(scores[members[0]])}
    heads = first.heads
    total = torch.zeros(heads, heads, dtype=torch.float64)
    within = {}
    for g in members:
        values, within[g] = _block_assignments(scores[g].detach().cpu().double(), heads, spec.groups[g].within)
        total += values
    if sigma is None:
        sigma = solve_assignment(total) if first.head_set is not None else torch.arange(heads)
    rows = torch.arange(heads)
    return {g: compose_heads(sigma, within[g][rows, sigma]) for g in members}


def _block_assignments(score: torch.Tensor, heads: int, free: bool) -> tuple:
    """``score [H d, H d]`` -> ``(values [H, H], taus [H, H, d])``: for heads (a, b) the best score of a
    permutation ``tau`` of the ``d`` dimensions mapping A's head a to B's head b, and that ``tau``
    (the identity when not ``free``)."""
    d = score.shape[0] // heads
    blocks = score.reshape(heads, d, heads, d).permute(0, 2, 1, 3)  # [a, b, i, j]
    values = torch.zeros(heads, heads, dtype=torch.float64)
    taus = torch.arange(d).repeat(heads, heads, 1)
    idx = torch.arange(d)
    for a in range(heads):
        for b in range(heads):
            if free:
                taus[a, b] = solve_assignment(blocks[a, b])
            values[a, b] = blocks[a, b][idx, taus[a, b]].sum()
    return values, taus


def solve_groups(spec: PermutationSpec, scores: dict, state_a=None, state_b=None, keys=None, max_iter=100,
                 seed=0) -> dict:
    """Every group's permutation: the groups in ``scores`` (``{group: [size, size]}``, e.g. activation
    correlations) solved from them, unit by unit (:func:`solve_unit`; a head set's heads by the scored
    groups alone, e.g. the value/output group of an attention layer); the groups without a score (no
    activation probe: a query/key group) by weight matching of ``state_b`` to ``state_a`` with the
    others held at their solved permutations, and the heads of a head set at those of its solved groups
    (:func:`weight_matching` with ``fixed``). Without states, a missing group is an error."""
    perms, missing = {}, []
    for members in spec.units():
        scored = [g for g in members if g in scores]
        if scored:
            perms.update(solve_unit(spec, scored, scores))
        missing += [g for g in members if g not in scores]
    if missing:
        if state_a is None:
            raise ValueError(f"group {missing[0]!r} has no probe where its activations can be measured: pass "
                             "the networks' states for weight matching, or align with method='weight'")
        perms = weight_matching(spec, state_a, state_b, keys, max_iter, seed, fixed=perms)
    return perms


def activation_correlations(model_a, model_b, data, spec: PermutationSpec, points=(), point_cross="full") -> tuple:
    """One pass over ``data``: each group's ``[size, size]`` correlation matrix (Eq. 2).

    A group with several probes (a residual stream is seen after every block) sums their
    correlation matrices, i.e. maximises the summed correlation over all places it is observed.
    ``points``: further graph nodes whose (A, B) moments are gathered in the same pass, with cross
    moments ``point_cross`` ("full", "diag" or None; a point that is also a probe keeps "full").
    Returns ``(group -> correlation, point -> Moments)``. (:func:`reference_correlations` with two
    networks.)
    """
    corr, moments = reference_correlations([model_a, model_b], data, spec, points, point_cross)
    return corr[1], moments[(0, 1)]


@torch.no_grad()
def reference_correlations(models: list, data, spec: PermutationSpec, points=(), point_cross="full",
                           all_pairs: bool = False, points_alone: bool = False) -> tuple:
    """ONE pass over ``data`` for N networks: each network's correlations with ``models[0]`` (Eq. 2).

    Every batch runs through all N networks; for each ``i >= 1`` the cross moments of (X_0, X_i) are
    accumulated at every probe (on its channel axis, :func:`probe_axis`; summed over a group's probes, as
    in :func:`activation_correlations`)
    and at ``points`` (cross moments ``point_cross``; a point that is also a probe keeps "full").
    ``all_pairs=True`` also gathers every pair (X_i, X_j), ``1 <= i < j``, at ``points`` (cross
    ``point_cross``): what the closed form's Var(sum_i w_i X_i) needs. ``points_alone=True`` instead
    measures every network on its own at the (non-probe) ``points``, under keys ``(i,)``: N moment
    streams there rather than 2 (N - 1), when no cross moment is needed. Returns ``(i -> {group ->
    [size, size] correlation}, pair -> {point -> Moments})``; a group without probes has no
    correlation (:func:`solve_groups` weight-matches it).
    """
    probe_group = {p: g for g, grp in spec.groups.items() for p in grp.probes}
    probes = list(probe_group)
    watched = probes + [p for p in points if p not in probe_group]
    sizes = [spec.groups[probe_group[p]].size if p in probe_group else None for p in watched]
    axes = [probe_axis(spec.groups[probe_group[p]], p) if p in probe_group else None for p in watched]
    cross = {p: "full" if p in probe_group else point_cross for p in watched}
    pairs = {(0, i): cross for i in range(1, len(models))}
    if points_alone:
        alone = [p for p in points if p not in probe_group]
        pairs = {(0, i): {p: c for p, c in cross.items() if p not in alone} for i in range(1, len(models))}
        pairs.update({(i,): dict.fromkeys(alone) for i in range(len(models))})
    if all_pairs:
        pairs.update({(i, j): {p: cross[p] for p in points} for i in range(1, len(models))
                      for j in range(i + 1, len(models))})
    moments = measure_pairs(models, reusable(data), watched, pairs, channels=sizes, axes=axes)
    corr = {}
    for i in range(1, len(models)):
        summed = {}
        for p in probes:  # pooled moments: the chunking of the batches does not change them
            g = probe_group[p]
            c = moments[(0, i)][p].corr_xy()
            if c.shape[0] != spec.groups[g].size:
                raise ValueError(f"probe {p!r} of group {g!r} measured {c.shape[0]} channels for its "
                                 f"{spec.groups[g].size} units: its channel axis is not the spec's")
            summed[g] = c if g not in summed else summed[g] + c
        corr[i] = {g: summed[g] for g in spec.groups if g in summed}
    if len(models) > 1:
        samples = {}
        for p in probes:
            g = probe_group[p]
            samples[g] = max(samples.get(g, 0), moments[(0, 1)][p].n)
        warn_undetermined(undetermined_groups(corr, samples))
    return corr, {pair: {p: m[p] for p in points if p in m} for pair, m in moments.items()}


def probe_axis(group, probe: str) -> int:
    """The axis on which ``probe`` of ``group`` carries its units: dim 1 (``[N, C, *]`` or ``[N, C * inner]``,
    measured as ``[N, C, L]`` samples) unless ``group.probe_axes`` names another (the last axis of a
    transformer's ``[N, T, D]`` tokens: ``[N * T, D, 1]`` samples, every position one)."""
    return group.probe_axes.get(probe, 1)


def undetermined_groups(corr: dict, samples: dict) -> dict:
    """``group -> reason`` for the groups whose activation-matching assignment the data do not determine.

    ``corr``: ``network i -> {group -> [size, size]}`` correlations with the reference (Eq. 2); ``samples``:
    ``group -> n``, the samples its probes saw (examples x positions; the most over its probes). Two
    causes: fewer samples than units (the correlation matrix has rank below ``n``, so many assignments
    score alike), and ties, units of either network with identical correlation rows (to 1e-9), e.g. units
    dead or constant on the data, whose correlations are all 0 (:meth:`Moments.corr_xy`)."""
    reasons = {}
    for scores in corr.values():
        for g, c in scores.items():
            size = c.shape[0]
            if g in samples and samples[g] < size:
                reasons.setdefault(g, f"{samples[g]} samples for {size} units")
                continue
            tied = max(_tied_rows(c), _tied_rows(c.T))
            if tied:
                reasons.setdefault(g, f"{tied} units with tied correlations")
    return reasons


def _tied_rows(c: torch.Tensor) -> int:
    """How many rows of ``c [n, n]`` equal another row (to 1e-9)."""
    _, inverse, counts = torch.unique(torch.round(c.double(), decimals=9), dim=0, return_inverse=True,
                                      return_counts=True)
    return int((counts[inverse] > 1).sum())


def warn_undetermined(reasons: dict) -> None:
    """One warning naming the groups of :func:`undetermined_groups` (``group -> reason``), if any."""
    if reasons:
        named = "; ".join(f"{g!r}: {r}" for g, r in list(reasons.items())[:5])
        more = f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else ""
        warnings.warn(f"activation matching: the data do not determine the assignment of {len(reasons)} "
                      f"group(s): {named}{more}; their permutations are one of several that fit equally well. "
                      "Use more (or more varied) data, or align with method='weight'", stacklevel=4)


def weight_matching(spec: PermutationSpec, state_a, state_b, keys=None, max_iter=100, seed=0, fixed=None,
                    starts=("sorted",)) -> dict:
    """Ainsworth et al.'s weight matching: coordinate descent over the solver units (data-free).

    Maximises the summed inner product of paired weights, ``sum over tensors <W_a, P(W_b)>``
    (:func:`matching_objective`). For group g, the score ``S[i, j] = sum over g's entries <W_a[i], W_b'[j]>``
    (every other axis of W_b already permuted by the current permutations) is maximised by an assignment (a
    head-structured one for attention heads, a head set's groups together: :func:`solve_unit`); the units are
    visited in random order, sweep after sweep, until no permutation changes (at most ``max_iter`` sweeps).
    ``keys`` limits the sums to these tensors (parameters, not running statistics). ``fixed``: ``{group:
    perm}`` held as given; only the other groups are solved, those of a head set with a fixed group under
    its heads (``sigma``, :func:`solve_unit`).

    ``starts``: the descent runs from each of these starting points and the permutations with the best
    objective are kept. ``"sorted"`` matches every group on its own weights sorted over their other axes
    (:func:`_sorted_score`), which no permutation of the other groups changes; ``"identity"`` is Ainsworth
    et al.'s start. Coordinate descent from the identity stops in a local optimum where groups are coupled
    only weakly (through depthwise convolutions, whose 9 weights per channel carry little signal, or
    through attention heads): a planted permutation of torchvision's MobileNetV3-Small is missed in all 27
    groups from the identity, found in all from the sorted start. On two independently initialised networks
    the sorted start also ends higher (objective 5204.4 vs 5203.0 on ResNet-18, 8424.8 vs 8410.5 on
    MobileNetV3-Small) at about twice the identity start's cost; ``starts=("sorted", "identity")`` keeps the
    better of both (never worse than Ainsworth et al.'s start alone, about three times its cost). A start that reaches the objective's Cauchy-Schwarz bound
    (:func:`_objective_bound`: ``model_b`` is a permuted copy of ``model_a``) is optimal: no descent runs
    from it and no further start is tried.
    """
    fixed = dict(fixed or {})
    units = [free for u in spec.units() if (free := [g for g in u if g not in fixed])]
    held = _held_heads(spec, fixed)
    bound = _objective_bound(spec, state_a, state_b, keys)
    best, best_value = None, -float("inf")
    for start in starts:
        perms = dict(fixed)
        perms.update(_start_permutations(spec, units, start, state_a, state_b, keys, held))
        if matching_objective(spec, state_a, state_b, perms, keys) < bound:
            perms = _coordinate_descent(spec, units, perms, state_a, state_b, keys, max_iter, seed, held)
        value = matching_objective(spec, state_a, state_b, perms, keys)
        if value > best_value:
            best, best_value = perms, value
        if best_value >= bound:
            break
    return best


def _objective_bound(spec: PermutationSpec, state_a, state_b, keys=None) -> float:
    """The largest value :func:`matching_objective` can take, less rounding: ``sum ||W_a|| ||W_b||`` over
    the spec's tensors (Cauchy-Schwarz), times ``1 - 1e-9``. Reached only where ``P(W_b) = W_a``, e.g. a
    permuted copy: no descent can improve on it, and no other start is needed."""
    total = 0.0
    for key in spec.axes_of():
        if keys is None or key in keys:
            total += float(state_a[key].double().norm() * state_b[key].double().norm())
    return total * (1 - 1e-9)


def _held_heads(spec: PermutationSpec, fixed: dict) -> dict:
    """``head set -> sigma [heads]``: the head permutation of every head set with a group in ``fixed``."""
    held = {}
    for g, perm in fixed.items():
        grp = spec.groups[g]
        if grp.heads > 1 and grp.head_set is not None:
            held.setdefault(grp.head_set, split_heads(torch.as_tensor(perm), grp.heads)[0])
    return held


def _solve_held(spec: PermutationSpec, members: list, scores: dict, held: dict) -> dict:
    """:func:`solve_unit`, a head set's heads held at ``held[head set]`` where it has them."""
    grp = spec.groups[members[0]]
    return solve_unit(spec, members, scores, held.get(grp.head_set) if grp.heads > 1 else None)


def _start_permutations(spec: PermutationSpec, units: list, start: str, state_a, state_b, keys,
                        held=None) -> dict:
    """The descent's starting permutation of every group in ``units``: ``"identity"`` or ``"sorted"``
    (each unit's assignment by :func:`_sorted_score`); ``held``: ``head set -> sigma`` kept (identity
    inside every head for ``"identity"``)."""
    held = held or {}
    if start == "identity":
        return {g: _identity_under(spec.groups[g], held) for members in units for g in members}
    if start != "sorted":
        raise ValueError(f"weight matching start must be 'sorted' or 'identity', got {start!r}")
    perms = {}
    for members in units:
        scores = {g: _sorted_score(spec, g, state_a, state_b, keys) for g in members}
        perms.update(_solve_held(spec, members, scores, held))
    return perms


def _identity_under(grp, held: dict) -> torch.Tensor:
    """The identity of ``grp``'s units, or its heads moved by ``held[grp.head_set]`` (each head's own
    dimensions in place)."""
    sigma = held.get(grp.head_set) if grp.heads > 1 else None
    if sigma is None:
        return torch.arange(grp.size)
    return compose_heads(sigma, torch.arange(grp.head_dim).repeat(grp.heads, 1))


def _coordinate_descent(spec: PermutationSpec, units: list, perms: dict, state_a, state_b, keys, max_iter,
                        seed, held=None) -> dict:
    """Ascend the weight-matching objective from ``perms`` (``{group: LongTensor [size]}``, every group):
    each unit in turn set to its best assignment given the others (a head set's heads at ``held[head
    set]`` where given), in an order drawn from ``seed`` each sweep, until a sweep changes nothing or
    ``max_iter`` sweeps. Returns the new permutations."""
    held = held or {}
    perms = dict(perms)
    axes = spec.axes_of()
    order_rng = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        improved = False
        for ui in torch.randperm(len(units), generator=order_rng).tolist():
            members = units[ui]
            scores = {g: _weight_score(spec, g, state_a, state_b, perms, axes, keys) for g in members}
            new = _solve_held(spec, members, scores, held)
            gain = sum(_assigned(scores[g], new[g]) - _assigned(scores[g], perms[g]) for g in members)
            if gain > 1e-9 * max(float(scores[g].abs().max()) for g in members):
                perms.update(new)
                improved = True
        if not improved:
            break
    return perms


def matching_objective(spec: PermutationSpec, state_a, state_b, perms: dict, keys=None) -> float:
    """Weight matching's objective: ``sum over the spec's tensors <W_a, P(W_b)>`` (float64), ``P(W_b)``
    ``state_b`` with every group of ``perms`` applied; ``keys`` limits the sum to these tensors."""
    total = 0.0
    for key, entries in spec.axes_of().items():
        if keys is not None and key not in keys:
            continue
        wb = state_b[key]
        for axis, g, inner, start in entries:
            wb = permute_axis(wb, axis, inner, perms[g], start)
        total += float((state_a[key].double() * wb.double()).sum())
    return total


def _sorted_score(spec, g, state_a, state_b, keys) -> torch.Tensor:
    """``[size, size]``: like :func:`_weight_score`, but each unit's weights over the other axes are
    sorted first, which no permutation of the other groups changes. By Cauchy-Schwarz a network and a
    permuted copy of it score highest on the true pairs, whatever the other groups' order: the start
    recovers a planted permutation without any descent (measured on timm's ViT-Tiny, 37 groups of which 24
    head groups: all 37 wrong from the identity, none from this start; torchvision's MobileNetV3-Small and
    MNASNet: 27 and 20 wrong, none)."""
    grp = spec.groups[g]
    score = torch.zeros(grp.size, grp.size, dtype=torch.float64)
    for key, axis, inner, start in grp.entries:
        if keys is not None and key not in keys:
            continue
        rows = [w.narrow(axis, start, grp.size * inner).double().movedim(axis, 0).reshape(grp.size, inner, -1)
                .sort(dim=-1).values.reshape(grp.size, -1) for w in (state_a[key], state_b[key])]
        score += rows[0] @ rows[1].T
    return score


def _assigned(score: torch.Tensor, perm: torch.Tensor) -> float:
    return float(score[torch.arange(len(perm)), perm].sum())


def _weight_score(spec, g, state_a, state_b, perms, axes, keys) -> torch.Tensor:
    """``[size, size]``: ``sum over g's entries <W_a[i], W_b'[j]>``, W_b' with every other group applied
    on the entry's other axes (the entry's own axis is cut to its slice)."""
    grp = spec.groups[g]
    score = torch.zeros(grp.size, grp.size, dtype=torch.float64)
    for key, axis, inner, start in grp.entries:
        if keys is not None and key not in keys:
            continue
        wb = state_b[key]
        for ax, other, inn, st in axes[key]:
            if other != g and ax != axis:
                wb = permute_axis(wb, ax, inn, perms[other], st)
        length = grp.size * inner
        wa = state_a[key].narrow(axis, start, length).double().movedim(axis, 0).reshape(grp.size, -1)
        wb = wb.narrow(axis, start, length).double().movedim(axis, 0).reshape(grp.size, -1)
        score += wa @ wb.T
    return score


def permute(model: nn.Module, perms: dict, spec: PermutationSpec = None) -> nn.Module:
    """A new network computing the same function as ``model``, its units reordered by ``perms``.

    ``perms`` maps group names to LongTensor permutations (as returned by :func:`align`, whose
    result carries its spec; otherwise pass ``spec``). ``model`` is not modified; the copy carries the
    attribute ``repairlib_permuted = True`` (the book's records tell aligned from naive curves by it).
    """
    spec = spec if spec is not None else getattr(perms, "spec", None)
    if spec is None:
        raise ValueError("permute needs the spec the permutations refer to: pass spec=...")
    state = permuted_state(model.state_dict(), perms, spec)
    out = copy_model(model)
    out.load_state_dict(state)
    out.repairlib_permuted = True
    return out


def permuted_state(state: dict, perms: dict, spec: PermutationSpec) -> dict:
    """A new state dict: ``state`` with every entry of each group of ``perms`` reordered (see :func:`permute`).
    A copy of ``state`` itself (an OrderedDict keeps its ``_metadata``, the versions some modules read
    when they load, e.g. torchvision's MNASNet)."""
    state = copy.copy(state)
    for g, perm in perms.items():
        if g not in spec.groups:
            raise ValueError(f"unknown permutation group {g!r}; the spec has {sorted(spec.groups)[:5]}...")
        size = spec.groups[g].size
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.shape != (size,) or not torch.equal(perm.sort().values, torch.arange(size)):
            raise ValueError(f"permutation for group {g!r} is not a permutation of {size} units")
        if not is_structured(perm, spec.groups[g]):
            grp = spec.groups[g]
            raise ValueError(f"permutation for group {g!r} does not move whole attention heads ({grp.heads} heads "
                             f"of {grp.head_dim}; see Group): it would change the network's function")
        for key, axis, inner, start in spec.groups[g].entries:
            state[key] = permute_axis(state[key], axis, inner, perm, start)
    return state


def identity_permutations(spec: PermutationSpec) -> dict:
    """The identity permutation of every group of ``spec`` (the reference network's alignment)."""
    return {g: torch.arange(grp.size) for g, grp in spec.groups.items()}


def point_order(perms: dict, spec: PermutationSpec):
    """``point -> LongTensor [C] or None``: the channel order that ``perms`` gives the values at a graph
    node (None for a node whose channels no group permutes)."""
    def order(point):
        g = spec.node_groups.get(point)
        return None if g is None else torch.as_tensor(perms[g], dtype=torch.long)
    return order


def random_permutations(spec: PermutationSpec, seed=0) -> dict:
    """A random permutation for every group of ``spec`` that keeps the function (for tests and
    demonstrations): any one for a plain group, head-structured ones for attention heads
    (:func:`repairlib.spec.random_group_permutations`)."""
    return random_group_permutations(spec, torch.Generator().manual_seed(seed))


class Alignments(list):
    """N networks' alignments to one common unit order: one :class:`Alignment` per network (the
    first, the reference's, is the identity), ``.spec``, and ``.stats``, the
    :class:`repairlib.endpoints.NetworkStats` of the aligned networks when they were gathered."""

    def __init__(self, alignments, spec, stats=None):
        super().__init__(alignments)
        self.spec, self.stats = spec, stats
