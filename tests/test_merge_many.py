"""``repairlib.merge_many``: N networks aligned to one unit order, averaged and REPAIRed to N-way goals."""

import pytest
import torch
from conftest import TinyBN, TinyCNN, TinyResNet, image_data, pair
from hypothesis import given, settings
from hypothesis import strategies as st

import repairlib
from repairlib.alignment import permute, permuted_state, random_permutations, weight_matching
from repairlib.analysis import goal_errors
from repairlib.correction import repair_many
from repairlib.endpoints import network_stats
from repairlib.interpolation import average, weighted_average
from repairlib.metrics import point_statistics
from repairlib.pipeline import align_many
from repairlib.spec import permutation_spec

FAST = settings(max_examples=4, deadline=None)


def networks(make, n, seed=0):
    """``n`` independently initialised float64 networks in eval mode."""
    torch.manual_seed(seed)
    return [make().double().eval() for _ in range(n)]


def one_batch(data):
    return [(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))]


def outputs(model, data):
    with torch.no_grad():
        return torch.cat([model.eval()(x.double()) for x, _ in data])


def same_state(m1, m2) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


# ---------------------------------------------------------------- two networks: merge, bit for bit
@pytest.mark.parametrize("correct", ["repair", "rescale", "closed_form", "reset_bn", "none"])
@pytest.mark.parametrize("align", ["activation", "weight", "none"])
def test_two_networks_with_unnormalised_weights_are_merge_bit_for_bit(align, correct):
    a, b = pair(TinyBN)
    data = image_data()
    many = repairlib.merge_many([a, b], data, weights=(2.0, 6.0), align=align, correct=correct)
    assert same_state(many, repairlib.merge(a, b, data, 0.75, align=align, correct=correct))


def test_two_networks_are_the_documented_steps_bit_for_bit():
    """The N-way pass (alignment, REPAIR's statistics) with N = 2 is align + permute + interpolate + repair."""
    a, b = pair(TinyResNet)
    data = image_data()
    perms = repairlib.align(a, b, data, stats_scope="conv", stats_cov=False)
    b2 = permute(b, perms)
    steps = repairlib.repair(repairlib.interpolate(a, b2, 0.3), a, b2, data, 0.3, stats=perms.endpoint_stats)
    assert same_state(repairlib.merge_many([a, b], data, weights=(0.7, 0.3)), steps)
    many = align_many([a, b], data)
    assert all(torch.equal(many[1][g], perms[g]) for g in perms)


def test_two_network_weight_matching_is_align():
    a, b = pair(TinyCNN)
    data = image_data()
    many, two = align_many([a, b], data, method="weight"), repairlib.align(a, b, data, method="weight")
    assert all(torch.equal(many[1][g], two[g]) for g in two)
    assert all(torch.equal(p, torch.arange(len(p))) for p in many[0].values())


# ---------------------------------------------------------------- unit order does not matter
@FAST
@given(which=st.integers(0, 2), seed=st.integers(0, 1000))
def test_permuting_any_input_leaves_the_merged_function_unchanged(which, seed):
    nets = networks(TinyResNet, 3)
    data = image_data()
    merged = repairlib.merge_many(nets, data, weights=(0.5, 0.3, 0.2))
    spec = permutation_spec(nets[0], data[0][0].double())
    shuffled = list(nets)
    shuffled[which] = permute(nets[which], random_permutations(spec, seed), spec)
    assert not same_state(shuffled[which], nets[which])  # the units were reordered
    again = repairlib.merge_many(shuffled, data, weights=(0.5, 0.3, 0.2))
    torch.testing.assert_close(outputs(again, data), outputs(merged, data), rtol=1e-9, atol=1e-9)


def test_refinement_rounds_keep_the_invariance_and_stop():
    nets = networks(TinyBN, 3, seed=2)
    data = image_data()
    spec = permutation_spec(nets[0], data[0][0].double())
    merged = repairlib.merge_many(nets, data, max_iter=3)
    shuffled = [nets[0], permute(nets[1], random_permutations(spec, 7), spec), nets[2]]
    torch.testing.assert_close(outputs(repairlib.merge_many(shuffled, data, max_iter=3), data),
                               outputs(merged, data), rtol=1e-9, atol=1e-9)


def test_n_way_weight_matching_ends_at_a_fixed_point():
    """Every network is weight-matched to the weighted average of the others: matching it again
    against that average (the others as aligned) finds the permutation it already has."""
    nets = networks(TinyCNN, 4, seed=3)
    data = image_data()
    weights = [0.1, 0.2, 0.3, 0.4]
    found = align_many(nets, data, method="weight", weights=weights)
    spec, params = found.spec, {k for k, _ in nets[0].named_parameters()}
    states = [permuted_state(m.state_dict(), p, spec) for m, p in zip(nets, found)]
    for i in range(1, 4):
        others = [j for j in range(4) if j != i]
        target = weighted_average([states[j] for j in others], [weights[j] for j in others])
        again = weight_matching(spec, target, nets[i].state_dict(), params)
        assert all(torch.equal(again[g], found[i][g]) for g in again)


# ---------------------------------------------------------------- REPAIR meets the N-way goals
@pytest.mark.parametrize("variant", ["exact", "rescale"])
def test_repair_meets_the_weighted_goals_at_every_point(variant):
    """Goals measured independently on each aligned network: E = sum_i w_i E[X_i], std = sum_i w_i std(X_i)."""
    nets, weights = networks(TinyCNN, 3, seed=4), [0.5, 0.3, 0.2]
    data = one_batch(image_data(n=120))  # one batch: the exact variant is exact at every depth
    found = align_many(nets, data, weights=weights, stats_scope="conv")
    aligned = [permute(m, p) for m, p in zip(nets, found)]
    points = found.stats.points
    measured = [point_statistics(m, data, points) for m in aligned]
    goals = {p: (sum(w * s[p][0] for w, s in zip(weights, measured)),
                 sum(w * s[p][1].sqrt() for w, s in zip(weights, measured))) for p in points}
    for p, (mean, std) in found.stats.targets(weights).items():  # the alignment pass's own statistics
        torch.testing.assert_close(mean, goals[p][0])
        torch.testing.assert_close(std, goals[p][1])
    plain = average(aligned, weights)
    assert max(e["std"] for e in goal_errors(point_statistics(plain, data, points), goals).values()) > 0.05
    correct = {"exact": "repair", "rescale": "rescale"}[variant]
    merged = repairlib.merge_many(nets, data, weights=weights, correct=correct)
    assert same_state(merged, repair_many(plain, aligned, data, weights, variant, stats=found.stats))
    errors = goal_errors(point_statistics(merged, data, points), goals)
    assert max(e["std"] for e in errors.values()) < 1e-5  # REL_EPS: about 5e-7 (goal / std)^2
    if variant == "exact":
        assert max(e["mean"] for e in errors.values()) < 1e-6


def test_closed_form_equals_exact_on_the_first_layer_for_three_networks():
    """In the first layer sum_i w_i X_i is exactly the average's preactivation, so Eq. 5 for N networks
    (every pair's covariance) gives the exact variant's affine."""
    nets, weights, data = networks(TinyCNN, 3, seed=5), [0.2, 0.5, 0.3], image_data()
    exact = repairlib.merge_many(nets, data, weights=weights, correct="repair")
    closed = repairlib.merge_many(nets, data, weights=weights, correct="closed_form")
    torch.testing.assert_close(closed.conv1.weight, exact.conv1.weight)
    torch.testing.assert_close(closed.conv1.bias, exact.conv1.bias)
    assert not torch.allclose(closed.conv3.weight, exact.conv3.weight, rtol=1e-4, atol=0)


def test_the_alignment_pass_statistics_are_those_of_the_aligned_networks():
    nets, data = networks(TinyResNet, 3, seed=6), image_data()
    found = align_many(nets, data, stats_scope="all", stats_cov=True)
    aligned = [permute(m, p) for m, p in zip(nets, found)]
    again = network_stats(aligned, data, "all", cov=True)
    assert found.stats.points == again.points
    for i in range(3):
        for p in again.points:
            torch.testing.assert_close(found.stats.means[i][p], again.means[i][p])
            torch.testing.assert_close(found.stats.variances[i][p], again.variances[i][p])
    for ij, cov in again.cov.items():
        for p in again.points:
            torch.testing.assert_close(found.stats.cov[ij][p], cov[p])


# ---------------------------------------------------------------- weights
@pytest.mark.parametrize("correct", ["repair", "none"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_all_mass_on_one_network_returns_that_network(which, correct):
    """(REPAIR then meets goals the network already meets: with one batch, exactly at every depth.)"""
    nets, data = networks(TinyBN, 3, seed=7), one_batch(image_data())
    weights = [0.0, 0.0, 0.0]
    weights[which] = 3.0
    merged = repairlib.merge_many(nets, data, weights=weights, correct=correct)
    torch.testing.assert_close(outputs(merged, data), outputs(nets[which], data), rtol=1e-5, atol=1e-6)


def test_inputs_are_left_as_they_were():
    nets, data = networks(TinyBN, 3, seed=8), image_data()
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in nets]
    repairlib.merge_many(nets, data, align="weight")
    for m, state in zip(nets, before):
        assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


@pytest.mark.parametrize("models, weights, message", [
    (lambda: networks(TinyBN, 1), None, "at least 2"),
    (lambda: networks(TinyBN, 1)[0], None, "list of networks"),
    (lambda: [TinyBN().double(), TinyBN(width=6).double()], None, "differ in shape"),
    (lambda: networks(TinyBN, 3), [0.5, 0.5], "one entry per network"),
    (lambda: networks(TinyBN, 3), [0.5, -0.1, 0.6], "non-negative"),
    (lambda: networks(TinyBN, 3), [0.0, 0.0, 0.0], "positive"),
    (lambda: networks(TinyBN, 3), [float("nan"), 1.0, 1.0], "finite"),
    (lambda: networks(TinyBN, 3), "abc", "numbers"),
])
def test_bad_inputs_are_one_clear_value_error(models, weights, message):
    with pytest.raises(ValueError, match=message):
        repairlib.merge_many(models(), image_data(), weights=weights)


def test_bad_choices_name_the_option():
    nets = networks(TinyBN, 3)
    for kwargs, name in (({"align": "cca"}, "align"), ({"correct": "rescales"}, "correct"),
                         ({"scope": "every"}, "scope")):
        with pytest.raises(ValueError, match=name):
            repairlib.merge_many(nets, image_data(), **kwargs)
