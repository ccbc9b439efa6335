"""``correct="rescale"``: REPAIR of the standard deviation only, the mean left as interpolated.

    y = scale (X - E[X]) + E[X],   scale = std goal / std(X)   (shift = (1 - scale) E[X])
"""

import torch
from conftest import TinyBN, TinyCNN, image_data, pair
from torch import nn

import repairlib
from repairlib.correction import CORRECTIONS, VARIANTS, renormalising_pass, repair
from repairlib.endpoints import endpoint_stats
from repairlib.interpolation import interpolate
from repairlib.metrics import point_statistics, value_nodes


def one_batch(data):
    return [(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))]


class OneLayer(nn.Module):
    """One conv (the only correction point: the first layer), ReLU, pooling, a classifier; [B, 1, 8, 8] -> [B, 3]."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 6, 3), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def one_layer(seed):
    torch.manual_seed(seed)
    return OneLayer().double().eval()


def test_rescale_is_a_correction_everywhere():
    assert "rescale" in CORRECTIONS and "rescale" in VARIANTS  # merge, merge_many, barrier and the CLI
    a, b = pair(TinyCNN)
    data = image_data()
    curve = repairlib.barrier(a, b, data, alphas=[0.0, 0.5], correct="rescale")
    assert all(torch.isfinite(torch.tensor(curve["loss"])))
    assert isinstance(repairlib.merge(a, b, data, correct="rescale"), TinyCNN)


def test_on_a_one_layer_net_the_mean_is_unchanged_and_the_std_meets_the_goal():
    """In the first layer E[X_alpha] = (1 - alpha) E[X_a] + alpha E[X_b]: rescaling keeps it exactly,
    with several batches too (the pooled statistics of the first layer do not depend on the batching)."""
    a, b = one_layer(0), one_layer(1)
    data = image_data(n=120, batch=40)
    stats = endpoint_stats(a, b, data)
    assert stats.points == ["conv"]
    mid = interpolate(a, b, 0.3)
    fixed = repair(mid, a, b, data, 0.3, variant="rescale", stats=stats)
    (mean, var), = point_statistics(fixed, data, ["conv"]).values()
    (mid_mean, mid_var), = point_statistics(mid, data, ["conv"]).values()
    goal_mean, goal_std = stats.targets(0.3)["conv"]
    torch.testing.assert_close(mean, mid_mean, rtol=0, atol=1e-9 * float(goal_std.max()))
    torch.testing.assert_close(mean, goal_mean, rtol=0, atol=1e-9 * float(goal_std.max()))  # linear layer
    torch.testing.assert_close(var.sqrt(), goal_std, rtol=1e-5, atol=0)
    assert ((mid_var.sqrt() / goal_std - 1).abs() > 1e-3).any()  # the std did need correcting


def test_every_channel_meets_its_std_goal_and_keeps_the_passes_mean():
    """Deeper points see the rescaled earlier layers: each channel's mean is the pass's measured E[X]
    (with one batch, E[X] at the point of the unfused network) and its std the goal, at every depth."""
    a, b = pair(TinyCNN)
    data = one_batch(image_data(n=160))
    stats = endpoint_stats(a, b, data)
    mid = interpolate(a, b, 0.5)
    goals = stats.targets(0.5)
    pass_means, _ = renormalising_pass(mid, data, {p: (None, std) for p, (_, std) in goals.items()})
    unfused = repair(mid, a, b, data, 0.5, variant="rescale", stats=stats, fuse=False)
    nodes = value_nodes(unfused, stats.points)
    raw = point_statistics(unfused, data, [nodes[p] for p in stats.points] + stats.points)
    fused = point_statistics(repair(mid, a, b, data, 0.5, variant="rescale", stats=stats), data, stats.points)
    for p, (goal_mean, goal_std) in goals.items():
        atol = 1e-7 * float(goal_std.max())
        for mean, var in (raw[nodes[p]], fused[p]):  # the corrected value, unfused and fused
            torch.testing.assert_close(var.sqrt(), goal_std, rtol=1e-5, atol=0)
            torch.testing.assert_close(mean, pass_means[p], rtol=0, atol=atol)
        torch.testing.assert_close(raw[p][0], pass_means[p], rtol=0, atol=atol)  # X itself, before its affine
    deepest = stats.points[-1]  # the mean is NOT moved to REPAIR's mean goal there
    assert ((fused[deepest][0] - goals[deepest][0]).abs() / goals[deepest][1]).max() > 1e-2


def test_rescale_through_an_absorbed_batchnorm_keeps_the_batchnorm_output_mean():
    """BN(y) = w (y - m) / s + b: rescaling the conv output about its mean keeps the BatchNorm output's
    mean in the first layer, and scales its std to |w| std goal / s."""
    a, b = pair(TinyBN)
    data = image_data()
    stats = endpoint_stats(a, b, data)
    mid = interpolate(a, b, 0.4)
    fixed = repair(mid, a, b, data, 0.4, variant="rescale", stats=stats)
    assert isinstance(fixed, TinyBN)
    (mean, var), = point_statistics(fixed, data, ["bn1"]).values()
    (mid_mean, _), = point_statistics(mid, data, ["bn1"]).values()
    norm = mid.bn1
    goal_std = norm.weight.detach().abs() * stats.targets(0.4)["conv1"][1] / (norm.running_var + norm.eps).sqrt()
    torch.testing.assert_close(mean, mid_mean, rtol=0, atol=1e-9 * float(goal_std.max()))
    torch.testing.assert_close(var.sqrt(), goal_std, rtol=1e-5, atol=0)


def test_merge_many_rescales_n_networks_to_the_weighted_std_goal():
    torch.manual_seed(3)
    nets = [one_layer(s) for s in range(3)]
    data = image_data()
    found = repairlib.pipeline.align_many(nets, data, stats_scope="conv")
    aligned = [repairlib.permute(m, p) for m, p in zip(nets, found)]
    weights = [0.2, 0.3, 0.5]
    plain = repairlib.interpolation.average(aligned, weights)
    fixed = repairlib.merge_many(nets, data, weights=weights, correct="rescale")
    (mean, var), = point_statistics(fixed, data, ["conv"]).values()
    (plain_mean, _), = point_statistics(plain, data, ["conv"]).values()
    _, goal_std = found.stats.targets(weights)["conv"]
    torch.testing.assert_close(mean, plain_mean, rtol=0, atol=1e-9 * float(goal_std.max()))
    torch.testing.assert_close(var.sqrt(), goal_std, rtol=1e-5, atol=0)
