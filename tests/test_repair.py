"""REPAIR (paper section 4): correction points, endpoint statistics, both variants, fusion, reset_bn."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyBN, TinyCNN, TinyResNet, image_data, pair
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from repairlib import models
from repairlib.batchnorm import reset_bn
from repairlib.correction import repair
from repairlib.endpoints import endpoint_stats, measure
from repairlib.fusion import ChannelAffine, channel_affine
from repairlib.interpolation import interpolate
from repairlib.points import correction_points

os.environ.setdefault("TQDM_DISABLE", "1")
FAST = settings(max_examples=3, deadline=None)



def one_batch(data):
    return [(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))]


def channel_moments(model, data, names):
    """{name: (mean [C], std [C])} of graph nodes, pooled over all samples (via repair.measure)."""
    (m,) = measure([model], data, names)
    return {p: (m[p].mean_x, m[p].var_x.sqrt()) for p in names}


def hooked_outputs(model, data, module):
    """All outputs of one submodule over the data, as [samples, C] float64 (independent of repairlib)."""
    got = []
    handle = module.register_forward_hook(lambda mod, i, o: got.append(o.detach()))
    with torch.no_grad():
        for x, _ in data:
            model(x.to(next(model.parameters()).dtype))
    handle.remove()
    out = torch.cat(got).double()
    return out.movedim(1, -1).reshape(-1, out.shape[1])


def outputs(model, data):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x.to(next(model.parameters()).dtype)) for x, _ in data])


# ---------------------------------------------------------------- correction points
def test_points_conv_scope_excludes_the_classifier():
    mlp = models.mlp(depth=3, width=16, in_features=64, num_classes=3)
    linears = [n for n, m in mlp.named_modules() if isinstance(m, nn.Linear)]
    assert len(correction_points(mlp, "conv")) == len(linears) - 1 == 3
    assert correction_points(TinyCNN(), "conv") == ["conv1", "conv2", "conv3"]


def test_points_all_scope_adds_block_outputs_only_for_equal_shape_adds():
    x = image_data()[0][0]
    pts = correction_points(TinyResNet(), "all", x)
    assert pts[:3] == ["stem", "conv_a", "relu_1"]  # x + conv_a(x) -> relu: the block output is the relu
    assert pts[3:] == ["conv_b", "add_1"]  # torch.add with no activation after it; '+ scalar' is no point
    assert correction_points(TinyResNet(), "conv") == ["stem", "conv_a", "conv_b"]
    with pytest.raises(ValueError, match="example"):
        correction_points(TinyResNet(), "all")


def test_points_of_the_project_resnet20():
    net = models.resnet20(width=1, in_channels=1)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    blocks = len(net.layers)
    assert len(correction_points(net, "conv")) == len(convs)
    assert len(correction_points(net, "all", torch.randn(2, 1, 8, 8))) == len(convs) + blocks


# ---------------------------------------------------------------- endpoint statistics
def test_endpoint_stats_are_pooled_over_all_samples_in_float64():
    a, b = pair(TinyCNN)
    data = image_data(n=70, batch=32)  # unequal batches: 32, 32, 6
    stats = endpoint_stats(a, b, data)
    xa, xb = hooked_outputs(a, data, a.conv2), hooked_outputs(b, data, b.conv2)
    torch.testing.assert_close(stats.mean_a["conv2"], xa.mean(0))
    torch.testing.assert_close(stats.var_a["conv2"], xa.var(0, unbiased=False))
    torch.testing.assert_close(stats.var_b["conv2"], xb.var(0, unbiased=False))
    cov = ((xa - xa.mean(0)) * (xb - xb.mean(0))).mean(0)
    torch.testing.assert_close(stats.cov_ab["conv2"], cov)
    assert stats.points == ["conv1", "conv2", "conv3"]


def test_endpoint_stats_measure_once_for_a_whole_curve():
    a, b = pair(TinyCNN)
    data = image_data()
    stats = endpoint_stats(a, b, data)
    passes = []

    class Counting(list):
        def __iter__(self):
            passes.append(1)
            return super().__iter__()

    for alpha in (0.25, 0.75):
        repair(interpolate(a, b, alpha), a, b, Counting(data), alpha, stats=stats)
    assert len(passes) == 2  # one pass of the interpolated net per alpha, none for the endpoints
    closed = repair(interpolate(a, b, 0.5), a, b, None, 0.5, variant="closed_form", stats=stats)
    assert isinstance(closed, TinyCNN)


# ---------------------------------------------------------------- the exact variant hits its goals
@FAST
@given(alpha=st.floats(0.0, 1.0))
def test_exact_repair_meets_the_goals_of_eqs_3_and_4(alpha):
    a, b = pair(TinyCNN)
    data = image_data(n=240, batch=80)
    fixed = repair(interpolate(a, b, alpha), a, b, data, alpha)
    assert isinstance(fixed, TinyCNN)  # fused back into the original architecture
    got = channel_moments(fixed, data, ["conv1", "conv2", "conv3"])
    for layer, tol in (("conv1", 1e-4), ("conv2", 1e-2), ("conv3", 1e-2)):
        xa, xb = hooked_outputs(a, data, getattr(a, layer)), hooked_outputs(b, data, getattr(b, layer))
        goal_mean = (1 - alpha) * xa.mean(0) + alpha * xb.mean(0)
        goal_std = (1 - alpha) * xa.std(0, unbiased=False) + alpha * xb.std(0, unbiased=False)
        mean, std = got[layer]
        torch.testing.assert_close(std, goal_std, rtol=tol, atol=0)
        torch.testing.assert_close(mean, goal_mean, rtol=0, atol=tol * goal_std.max().item())


def test_exact_repair_is_exact_at_every_depth_with_one_batch():
    a, b = pair(lambda: models.mlp(depth=5, width=12, in_features=64, num_classes=3))
    data = one_batch(image_data(n=200))
    stats = endpoint_stats(a, b, data)
    fixed = repair(interpolate(a, b, 0.3), a, b, data, 0.3, stats=stats)
    got = channel_moments(fixed, data, stats.points)
    for p, (mean, std) in stats.targets(0.3).items():
        torch.testing.assert_close(got[p][1], std, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got[p][0], mean, rtol=0, atol=1e-6)


def randomise_batchnorms(model, seed):
    """Non-trivial running statistics and affine parameters in every BatchNorm (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def test_exact_repair_through_absorbed_batchnorms_is_exact_at_every_depth():
    """The renormalising pass applies a following BatchNorm itself; the second point must still see
    the corrected, batch-normalised first layer (else its goals would be missed). The corrections are
    folded into the BatchNorms, so the goals are checked there: BN(y) = w (y - m) / s + b per channel."""
    a, b = (randomise_batchnorms(m, seed) for m, seed in zip(pair(TinyBN), (3, 4)))
    data = one_batch(image_data(n=120))
    stats = endpoint_stats(a, b, data)
    assert stats.points == ["conv1", "conv2"]
    mid = interpolate(a, b, 0.4)
    fixed = repair(mid, a, b, data, 0.4, stats=stats)
    assert isinstance(fixed, TinyBN)
    got = channel_moments(fixed, data, ["bn1", "bn2"])
    for (p, (mean, std)), bn in zip(stats.targets(0.4).items(), ("bn1", "bn2")):
        norm = getattr(mid, bn)  # the interpolated BatchNorm, before the fold
        w, s = norm.weight.detach(), (norm.running_var + norm.eps).sqrt()
        goal_mean, goal_std = w * (mean - norm.running_mean) / s + norm.bias.detach(), w.abs() * std / s
        torch.testing.assert_close(got[bn][1], goal_std, rtol=1e-5, atol=1e-9)  # REL_EPS: 5e-7
        torch.testing.assert_close(got[bn][0], goal_mean, rtol=0, atol=1e-5 * goal_std.max().item())


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 7), (4, 3, 5, 6), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_affine_is_scale_times_x_plus_shift(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype)
    scale, shift = torch.randn(3, generator=g, dtype=dtype), torch.randn(3, generator=g, dtype=dtype)
    view = [1, 3] + [1] * (len(shape) - 2)
    expected = x * scale.view(view) + shift.view(view)
    torch.testing.assert_close(channel_affine(x, scale, shift), expected)
    torch.testing.assert_close(ChannelAffine(scale, shift)(x), expected)
    with pytest.raises(ValueError, match="channel affine"):
        channel_affine(x.reshape(-1), scale, shift)


def test_closed_form_equals_exact_on_the_first_layer():
    a, b = pair(TinyCNN)
    data = image_data()
    stats = endpoint_stats(a, b, data)
    mid = interpolate(a, b, 0.4)
    exact = repair(mid, a, b, data, 0.4, stats=stats)
    closed = repair(mid, a, b, data, 0.4, variant="closed_form", stats=stats)
    torch.testing.assert_close(exact.conv1.weight, closed.conv1.weight)
    torch.testing.assert_close(exact.conv1.bias, closed.conv1.bias)
    assert not torch.allclose(exact.conv3.weight, closed.conv3.weight)  # deeper: approximate


def test_closed_form_restores_the_variance_that_eq_5_predicts():
    a, b = pair(TinyCNN)
    data = image_data()
    stats = endpoint_stats(a, b, data)
    mid = interpolate(a, b, 0.5)
    before = channel_moments(mid, data, ["conv1"])["conv1"][1] ** 2
    predicted = (stats.var_a["conv1"] + stats.var_b["conv1"] + 2 * stats.cov_ab["conv1"]) / 4
    torch.testing.assert_close(before, predicted)
    assert (before < (stats.var_a["conv1"] + stats.var_b["conv1"]) / 2).all()  # variance collapse


# ---------------------------------------------------------------- fusion
@pytest.mark.parametrize("make, scope", [(TinyCNN, "conv"), (TinyBN, "conv"), (TinyResNet, "all"),
                                         (TinyResNet, "conv")])
@pytest.mark.parametrize("variant", ["exact", "closed_form"])
def test_fused_network_equals_the_unfused_correction(make, scope, variant):
    a, b = pair(make)
    data = image_data()
    stats = endpoint_stats(a, b, data, scope)
    mid = interpolate(a, b, 0.5)
    fused = repair(mid, a, b, data, 0.5, variant, scope, stats=stats)
    unfused = repair(mid, a, b, data, 0.5, variant, scope, stats=stats, fuse=False)
    affines = [m for m in unfused.modules() if isinstance(m, ChannelAffine)]
    assert len(affines) == len(stats.points)
    torch.testing.assert_close(outputs(fused, data), outputs(unfused, data))
    assert not torch.allclose(outputs(fused, data), outputs(mid, data))
    inserted = [m for m in fused.modules() if isinstance(m, ChannelAffine)]
    if scope == "conv":
        assert type(fused) is make and not inserted
    else:  # only the residual-stream points are not folded
        assert len(inserted) == 2


def test_bn_fold_keeps_state_dict_keys_and_running_statistics():
    a, b = pair(TinyBN)
    mid = interpolate(a, b, 0.5)
    fixed = repair(mid, a, b, image_data(), 0.5)
    assert fixed.state_dict().keys() == mid.state_dict().keys()
    assert fixed.conv1.bias is None
    torch.testing.assert_close(fixed.bn1.running_var, mid.bn1.running_var)
    assert not torch.allclose(fixed.bn1.weight, mid.bn1.weight)


def test_a_bias_free_layer_with_nothing_to_fold_into_stays_unfolded():
    class NoBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(64, 10, bias=False), nn.Linear(10, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    a, b = pair(NoBias)
    data = image_data()
    with pytest.warns(UserWarning, match=r"cannot fold the correction at 1 point\(s\) 'fc1': a bias-free layer"):
        fixed = repair(interpolate(a, b, 0.5), a, b, data, 0.5)
    assert fixed.unfolded_points == ["fc1"]  # no new parameter: a ChannelAffine node instead
    assert fixed.fc1.bias is None and "fc1.bias" not in fixed.state_dict()
    assert sum(isinstance(m, ChannelAffine) for m in fixed.modules()) == 1
    unfused = repair(interpolate(a, b, 0.5), a, b, data, 0.5, fuse=False)
    torch.testing.assert_close(outputs(fixed, data), outputs(unfused, data))


def test_a_layer_called_twice_keeps_an_affine_node_per_call():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 1, 3, padding=1), nn.Linear(1, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(torch.relu(self.conv(x)))).mean((2, 3)))

    a, b = pair(Shared)
    data = image_data()
    fused = repair(interpolate(a, b, 0.5), a, b, data, 0.5)
    assert correction_points(a) == ["conv", "conv_1"]
    assert sum(isinstance(m, ChannelAffine) for m in fused.modules()) == 2
    torch.testing.assert_close(outputs(fused, data), outputs(repair(interpolate(a, b, 0.5), a, b, data, 0.5,
                                                                    fuse=False), data))


def test_scope_all_on_the_project_resnet20_meets_block_output_goals():
    a, b = pair(lambda: models.resnet20(width=1, in_channels=1, num_classes=3))
    data = one_batch(image_data(n=24))
    stats = endpoint_stats(a, b, data, "all")
    mid = interpolate(a, b, 0.5)
    unfused = repair(mid, a, b, data, 0.5, scope="all", stats=stats, fuse=False)
    fused = repair(mid, a, b, data, 0.5, scope="all", stats=stats)
    torch.testing.assert_close(outputs(fused, data), outputs(unfused, data))
    block_out = stats.points[-1]  # the last block's relu
    (m,) = measure([unfused], data, [f"repair_{block_out}"])
    _, std = stats.targets(0.5)[block_out]
    torch.testing.assert_close(m[f"repair_{block_out}"].var_x.sqrt(), std, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- REPAIR vs BatchNorm reset (section 5.2)
def bn_mlp(width=32):
    """BatchNorm1d after every hidden (bias-free) layer; [B, 1, 8, 8] -> [B, 10]."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, 10))


def train_digits(seed, x, y, epochs=6):
    torch.manual_seed(seed)
    net = bn_mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(50):
            opt.zero_grad()
            F.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()
    return net.eval()


def test_conv_scope_on_a_batchnorm_net_matches_reset_bn():
    """With BatchNorm after every layer, REPAIR of the layer outputs ~ resetting BatchNorm (paper 5.2)."""
    from repairlib.alignment import align, permute

    digits = pytest.importorskip("sklearn.datasets").load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8 - 1
    y = torch.tensor(digits.target)
    train = [(x[i:i + 250], y[i:i + 250]) for i in range(0, 1000, 250)]
    a, b = train_digits(0, x[:1000], y[:1000]), train_digits(1, x[:1000], y[:1000])
    for net in (a, b):  # running statistics = the data's statistics, as after a long training
        reset_bn(net, train)
    b = permute(b, align(a, b, train))
    mid = interpolate(a, b, 0.5)
    repaired, reset = repair(mid, a, b, train, 0.5), reset_bn(copy.deepcopy(mid), train)
    assert repaired.state_dict().keys() == mid.state_dict().keys()
    test = [(x[1000:], y[1000:])]
    pred_repaired, pred_reset = outputs(repaired, test).argmax(1), outputs(reset, test).argmax(1)
    acc = [(p == y[1000:]).float().mean().item() for p in (pred_repaired, pred_reset)]
    assert abs(acc[0] - acc[1]) <= 0.005
    assert (pred_repaired == pred_reset).float().mean() >= 0.99


# ---------------------------------------------------------------- reset_bn
def test_reset_bn_covers_batchnorm1d_and_restores_modes():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()
    net[2].momentum = 0.3
    net[2].running_mean.fill_(7.0)
    net.train()
    net[4].eval()
    data = image_data(n=64, batch=32)
    reset_bn(net, data)
    pre = hooked_outputs(net.eval(), data, net[1])
    torch.testing.assert_close(net[2].running_mean, pre.mean(0))  # equal batches: average = pooled mean
    assert net[2].momentum == 0.3
    net.train()
    net[4].eval()
    reset_bn(net, data)
    assert net.training and net[2].training and not net[4].training


def test_reset_bn_on_empty_data_raises_and_keeps_the_statistics():
    net = TinyBN()
    net.bn1.running_mean.fill_(3.0)
    with pytest.raises(ValueError, match="no batches"):
        reset_bn(net, [])
    assert (net.bn1.running_mean == 3.0).all()


# ---------------------------------------------------------------- inputs untouched, bad inputs
@pytest.mark.parametrize("make", [TinyResNet, TinyBN])
@pytest.mark.parametrize("as_graph", [False, True])
def test_repair_never_modifies_its_inputs(make, as_graph):
    """Weights, buffers, train flags and (for a GraphModule input) the graph stay as they were."""
    a, b = pair(make)
    a.train()
    mid = interpolate(a, b, 0.5)
    if as_graph:
        mid = torch.fx.symbolic_trace(mid)
        code = mid.code
    before = [copy.deepcopy(m.state_dict()) for m in (mid, a, b)]
    modes = [[m.training for m in net.modules()] for net in (mid, a, b)]
    for variant in ("exact", "closed_form"):
        repair(mid, a, b, image_data(), 0.5, variant, "all")
    if as_graph:
        assert mid.code == code and len(list(mid.modules())) == len(modes[0])
    for net, state, mode in zip((mid, a, b), before, modes):
        assert net.state_dict().keys() == state.keys()
        assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
        assert [m.training for m in net.modules()] == mode


def test_bad_inputs_raise_clear_errors():
    a, b = pair(TinyCNN)
    data = image_data()
    mid = interpolate(a, b, 0.5)
    other = TinyBN().double()
    with pytest.raises(ValueError, match="differ"):
        repair(mid, a, other, data, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        repair(mid, a, b, data, 1.5)
    repair(interpolate(a, b, 1.2, extrapolate=True), a, b, data, 1.2, extrapolate=True)
    nan = copy.deepcopy(b)
    nan.conv2.weight.data[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="conv2.weight"):
        repair(mid, a, nan, data, 0.5)
    with pytest.raises(ValueError, match="no batches"):
        repair(mid, a, b, [], 0.5)
    bad_data = [(torch.full((4, 1, 8, 8), float("inf")), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match="NaN or Inf"):
        endpoint_stats(a, b, bad_data)
    with pytest.raises(ValueError, match="variant"):
        repair(mid, a, b, data, 0.5, variant="approximate")
    with pytest.raises(ValueError, match="scope"):
        repair(mid, a, b, data, 0.5, scope="everything")
    with pytest.raises(ValueError, match="scope"):
        repair(mid, a, b, data, 0.5, scope="all", stats=endpoint_stats(a, b, data))


def test_undefined_channels_keep_gain_one_and_are_counted_in_a_warning():
    from repairlib.correction import REL_EPS, goal_scale

    goal = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    var = torch.tensor([4.0, 0.0, (REL_EPS / 2) ** 2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(goal_scale(goal, var), torch.tensor([0.5, 1.0, 1.0, 1.0], dtype=torch.float64))
    assert goal_scale(goal[:1], torch.tensor([1.01 * REL_EPS ** 2], dtype=torch.float64)) <= 1 / REL_EPS
    a, b = pair(TinyCNN)
    for m in (a, b):  # channel 2 of conv1 is constant (0) in both endpoints, so in every interpolation
        m.conv1.weight.data[2] = 0
        m.conv1.bias.data[2] = 0
    with pytest.warns(UserWarning, match=r"left 1 channel\(s\) at 1 point\(s\) unscaled"):
        fixed = repair(interpolate(a, b, 0.5), a, b, image_data(), 0.5, fuse=False)
    assert torch.isfinite(fixed(image_data()[0][0].double())).all()
