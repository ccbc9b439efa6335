"""repairlib.analysis: Eq. 5 and unit correlations (section 3.2), statistics at corrected values, goal errors,
permutation invariance of outputs."""

import os

import pytest
import torch
from conftest import TinyBN

from repairlib import analysis, metrics, models
from repairlib.alignment import align, permute, random_permutations
from repairlib.correction import repair
from repairlib.endpoints import endpoint_stats
from repairlib.interpolation import interpolate
from repairlib.metrics import variance_ratio
from repairlib.points import correction_points
from repairlib.spec import permutation_spec

os.environ.setdefault("TQDM_DISABLE", "1")



def mlp_pair(seed=0, depth=3, width=12):
    torch.manual_seed(seed)
    a, b = (models.mlp(depth=depth, width=width, in_features=64, num_classes=3).double().eval() for _ in range(2))
    return a, b


def bn_pair(seed=0):
    torch.manual_seed(seed)
    a, b = TinyBN(width=6).double(), TinyBN(width=6).double()
    for m in (a, b):  # non-trivial running statistics and affines
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)
    return a.eval(), b.eval()


def data(n=120, batch=40, seed=1, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64) * 1.5 + 0.3
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def by_hand(model, data, module):
    """[samples, C] float64 outputs of one submodule, with a plain forward hook."""
    got = []
    handle = module.register_forward_hook(lambda m, i, o: got.append(o.detach().double()))
    with torch.no_grad():
        for x, _ in data:
            model(x)
    handle.remove()
    out = torch.cat(got)
    return out.movedim(1, -1).reshape(-1, out.shape[1])


# ---------------------------------------------------------------- section 3.2
@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_eq5_is_exact_for_the_first_layer_of_an_interpolated_network(alpha):
    a, b = mlp_pair()
    d = data()
    stats = endpoint_stats(a, b, d)
    first = stats.points[0]
    predicted = analysis.predicted_variance(stats, alpha)[first]
    _, measured = metrics.point_statistics(interpolate(a, b, alpha), d, [first])[first]
    assert torch.allclose(predicted, measured, rtol=1e-9, atol=1e-12)
    # and it is a real prediction: the endpoints' own variances are different numbers
    assert not torch.allclose(predicted, (stats.var_a[first] + stats.var_b[first]) / 2, rtol=1e-3)


def test_unit_correlations_match_a_hand_computation_and_are_one_for_identical_networks():
    a, b = mlp_pair()
    d = data()
    stats = endpoint_stats(a, b, d)
    first = stats.points[0]
    xa, xb = by_hand(a, d, a[1]), by_hand(b, d, b[1])
    expected = torch.stack([torch.corrcoef(torch.stack([xa[:, c], xb[:, c]]))[0, 1] for c in range(xa.shape[1])])
    corr = analysis.unit_correlations(stats)
    assert torch.allclose(corr[first], expected, atol=1e-10)
    assert all((c.abs() <= 1 + 1e-9).all() for c in corr.values())
    same = analysis.unit_correlations(endpoint_stats(a, a, d))
    assert all(torch.allclose(c, torch.ones_like(c)) for c in same.values())


def test_dead_units_have_correlation_zero_not_nan():
    a, b = mlp_pair()
    with torch.no_grad():
        a[1].weight[0].zero_()  # unit 0 of the first layer is constant in network a
    corr = analysis.unit_correlations(endpoint_stats(a, b, data()))
    first = next(iter(corr))
    assert torch.isfinite(corr[first]).all() and corr[first][0] == 0


def test_predicted_ratios_are_exact_in_the_first_layer_only():
    a, b = mlp_pair(depth=4, width=16)
    d = data()
    stats = endpoint_stats(a, b, d)
    predicted = analysis.predicted_variance_ratios(stats, 0.5)
    measured = metrics.variance_ratio(interpolate(a, b, 0.5), a, b, d)
    first, *deeper = stats.points
    assert predicted[first] == pytest.approx(measured[first], rel=1e-9)
    assert list(predicted) == stats.points and 0 < predicted[first] < 1
    assert any(abs(predicted[p] - measured[p]) > 1e-3 for p in deeper)


def test_equal_std_factor():
    assert analysis.equal_std_factor(0.4) == pytest.approx(0.7)  # the paper's section 3.2 example
    assert analysis.equal_std_factor(1.0, 0.37) == pytest.approx(1.0)  # identical units never collapse
    assert analysis.equal_std_factor(0.0, 0.0) == pytest.approx(1.0)  # alpha 0 is network A
    corr = torch.tensor([0.0, 0.4, 1.0])
    assert torch.allclose(analysis.equal_std_factor(corr), torch.tensor([0.5, 0.7, 1.0]))


def test_equal_std_factor_agrees_with_eq5_when_the_stds_are_equal():
    a, b = mlp_pair()
    d = data()
    stats = endpoint_stats(a, b, d)
    p = stats.points[0]
    stats.var_b[p] = stats.var_a[p].clone()  # pretend std(X_2) = std(X_1); the covariance stays
    corr = analysis.unit_correlations(stats)[p]
    factor = analysis.predicted_variance(stats, 0.3)[p] / stats.var_a[p]
    assert torch.allclose(factor, analysis.equal_std_factor(corr, 0.3))


# ---------------------------------------------------------------- statistics at corrected values
def test_value_nodes_follow_the_affine_of_an_unfused_repair():
    a, b = mlp_pair()
    d = data()
    points = correction_points(a)
    assert metrics.value_nodes(a, points) == {p: p for p in points}
    unfused = repair(interpolate(a, b, 0.5), a, b, d, 0.5, fuse=False)
    nodes = metrics.value_nodes(unfused, points)
    assert all(nodes[p] != p for p in points)
    with pytest.raises(ValueError, match="no node 'nope'"):
        metrics.value_nodes(a, ["nope"])


def test_repaired_channels_meet_their_goals_in_fused_and_unfused_mlps():
    a, b = mlp_pair()
    d = [(torch.cat([x for x, _ in data()]), torch.cat([y for _, y in data()]))]  # one batch: exact
    stats = endpoint_stats(a, b, d)
    mid = interpolate(a, b, 0.4)
    goals = stats.targets(0.4)
    for fuse in (True, False):
        fixed = repair(mid, a, b, d, 0.4, stats=stats, fuse=fuse)
        errors = analysis.goal_errors(metrics.point_statistics(fixed, d, stats.points), goals)
        assert max(max(e.values()) for e in errors.values()) < 1e-5  # REPAIR's epsilon: ~5e-7
    before = analysis.goal_errors(metrics.point_statistics(mid, d, stats.points), goals)
    assert max(e["std"] for e in before.values()) > 0.05  # the uncorrected midpoint is off


def test_unfused_repair_of_a_batchnorm_net_shows_its_corrected_conv_outputs():
    a, b = bn_pair()
    d = [(torch.cat([x for x, _ in data()]), torch.cat([y for _, y in data()]))]
    stats = endpoint_stats(a, b, d)
    goals = stats.targets(0.5)
    mid = interpolate(a, b, 0.5)
    unfused = repair(mid, a, b, d, 0.5, stats=stats, fuse=False)
    fused = repair(mid, a, b, d, 0.5, stats=stats)
    errors = analysis.goal_errors(metrics.point_statistics(unfused, d, stats.points), goals)
    assert max(max(e.values()) for e in errors.values()) < 1e-5  # REPAIR's epsilon: ~5e-7
    # the fused network folds the first correction into bn1: its conv1 output is the uncorrected one
    (_, var_fused), (_, var_mid) = (metrics.point_statistics(m, d, ["conv1"])["conv1"] for m in (fused, mid))
    assert torch.allclose(var_fused, var_mid)
    ratio = metrics.variance_ratio(unfused, a, b, d)
    assert all(r == pytest.approx(1.0, rel=0.2) for r in ratio.values())


def test_variance_ratios_equal_the_library_on_plain_networks():
    a, b = mlp_pair(depth=4)
    d = data()
    mid = interpolate(a, b, 0.5)
    ours, library = metrics.variance_ratio(mid, a, b, d), variance_ratio(mid, a, b, d)
    assert list(ours) == list(library)
    assert all(ours[p] == pytest.approx(library[p], rel=1e-9) for p in ours)
    assert all(r == pytest.approx(1.0) for r in metrics.variance_ratio(a, a, a, d).values())
    reused = metrics.variance_ratio(mid, a, b, d, stats=endpoint_stats(a, b, d))
    assert all(reused[p] == pytest.approx(ours[p], rel=1e-12) for p in ours)


def test_goal_errors_by_hand():
    measured = {"p": (torch.tensor([1.0, 0.0]), torch.tensor([4.0, 1.0]))}
    goals = {"p": (torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64))}
    errors = analysis.goal_errors(measured, goals)
    assert errors["p"]["mean"] == pytest.approx(1.0)  # channel 0: 1 goal std off
    assert errors["p"]["std"] == pytest.approx(1.0)  # channel 0: std 2 for a goal of 1
    with pytest.raises(ValueError, match="'q'"):
        analysis.goal_errors(measured, {"q": goals["p"]})


# ---------------------------------------------------------------- permutation invariance
def test_a_permuted_network_has_the_same_outputs_and_another_network_does_not():
    a, b = mlp_pair()
    d = data()
    spec = permutation_spec(a, d[0][0])
    shuffled = permute(a, random_permutations(spec, seed=3), spec)
    assert not torch.equal(shuffled[1].weight, a[1].weight)
    same = analysis.output_difference(a, shuffled, d)
    assert same["max_diff"] < 1e-10 * same["max_output"]
    assert analysis.output_difference(a, b, d)["max_diff"] > 1e-3
    aligned = permute(b, align(a, b, d))
    assert analysis.output_difference(b, aligned, d)["max_diff"] < 1e-10 * same["max_output"]


# ---------------------------------------------------------------- N networks
def test_ensembles_average_softmax_outputs_and_pick_the_best_single_network():
    from conftest import TinyCNN, image_data

    from repairlib.evaluation import evaluate

    torch.manual_seed(0)
    nets = [TinyCNN().double().eval() for _ in range(3)]
    data = [(x.double(), y) for x, y in image_data(n=64)]
    result = analysis.ensembles(nets, data, sizes=(1, 3))
    for net, member in zip(nets, result["members"]):
        alone = evaluate(net, data)
        assert member["accuracy"] == alone["accuracy"] and member["loss"] == pytest.approx(alone["loss"])
    assert set(result["ensemble"]) == {1, 3} and result["ensemble"][1] == result["members"][0]
    x, y = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
    with torch.no_grad():
        p = sum(torch.softmax(n(x), 1) for n in nets) / 3
    assert result["ensemble"][3]["accuracy"] == pytest.approx(float((p.argmax(1) == y).double().mean()))
    assert result["ensemble"][3]["loss"] == pytest.approx(float(-p[torch.arange(len(y)), y].log().mean()))
    best = result["best_single"][3]
    assert best["accuracy"] == max(m["accuracy"] for m in result["members"])
    assert result["members"][best["index"]]["loss"] == best["loss"] and result["best_single"][1]["index"] == 0
    with pytest.raises(ValueError, match=r"sizes must lie in 1\.\.3"):
        analysis.ensembles(nets, data, sizes=(4,))


@pytest.mark.parametrize("align", ["activation", "weight"])
def test_merge_many_each_equals_merge_many_per_correction(align):
    from conftest import TinyBN, image_data

    import repairlib

    torch.manual_seed(1)
    nets = [TinyBN(width=6).double().eval() for _ in range(3)]
    data = [(x.double(), y) for x, y in image_data()]
    corrections = ("repair", "rescale", "reset_bn", "none")
    each = analysis.merge_many_each(nets, data, corrections, weights=(0.5, 0.3, 0.2), align=align)
    assert list(each["merged"]) == list(corrections) and len(each["aligned"]) == 3
    for c in corrections:
        one = repairlib.merge_many(nets, data, weights=(0.5, 0.3, 0.2), align=align, correct=c)
        mine, theirs = each["merged"][c].state_dict(), one.state_dict()
        assert mine.keys() == theirs.keys()
        for k in mine:
            torch.testing.assert_close(mine[k], theirs[k], rtol=1e-9, atol=1e-12, msg=f"{c}: {k}")
    assert analysis.merge_many_each(nets, data, ["none"])["stats"] is None
    unfused = analysis.merge_many_each(nets, data, ["repair"], weights=(0.5, 0.3, 0.2), align=align, fuse=False)
    x = torch.cat([x for x, _ in data])
    with torch.no_grad():
        torch.testing.assert_close(unfused["merged"]["repair"](x), each["merged"]["repair"](x))
    with pytest.raises(ValueError, match="correct"):
        analysis.merge_many_each(nets, data, ["repiar"])


def test_variance_ratios_many_of_two_networks_is_variance_ratio_at_the_midpoint():
    a, b = mlp_pair(seed=3)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(40, 64, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g))
            for _ in range(3)]
    each = analysis.merge_many_each([a, b], data, ["repair", "none"], fuse=False)
    b_aligned = each["aligned"][1]
    for c in ("none", "repair"):
        ours = analysis.variance_ratios_many(each["merged"][c], each["stats"], data)
        theirs = variance_ratio(each["merged"][c], a, b_aligned, data)
        assert list(ours) == list(theirs)
        assert ours == pytest.approx(theirs, rel=1e-9)
    collapsed = analysis.variance_ratios_many(each["merged"]["none"], each["stats"], data)
    repaired = analysis.variance_ratios_many(each["merged"]["repair"], each["stats"], data, weights=(1, 1))
    assert max(collapsed.values()) < 0.9  # variance collapse
    assert all(collapsed[p] < r < 1.05 for p, r in repaired.items())  # REPAIR: near 1 (std goals averaged)
