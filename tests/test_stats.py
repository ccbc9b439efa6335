"""Pooled moments: one pass over batches gives the statistics of all samples, in float64."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

import repairlib
from repairlib import stats
from repairlib.spec import trace
from repairlib.stats import Moments, capture, channel_samples, overwritten_nodes


def rows(x):
    """[N, C, *] -> [C, all samples], the float64 reference layout."""
    return x.double().transpose(0, 1).reshape(x.shape[1], -1)


@settings(max_examples=20, deadline=None)
@given(offset=st.floats(-1e3, 1e3), scale=st.floats(1e-2, 1e2), batches=st.integers(1, 5), seed=st.integers(0, 99))
@example(offset=407.0, scale=14.0, batches=1, seed=0)  # mean^2 / var near 850: too far for raw float32 sums
@example(offset=296.0, scale=16.0, batches=1, seed=3)
@example(offset=69.0, scale=10.0, batches=3, seed=1)  # just under the raw-sums limit
def test_pooled_moments_equal_the_statistics_of_all_samples(offset, scale, batches, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [offset + scale * torch.randn(7, 3, 5, 4, generator=g) for _ in range(batches)]
    ys = [x * 0.5 + torch.randn(x.shape, generator=g) for x in xs]
    m = Moments(cross="full")
    for x, y in zip(xs, ys):
        batch_mean, batch_var = m.update_batch(x, y)
        assert torch.allclose(batch_mean, x.double().mean((0, 2, 3)), rtol=1e-5, atol=1e-5 * scale)
        assert torch.allclose(batch_var, x.double().var((0, 2, 3), unbiased=False), rtol=1e-3, atol=1e-6 * scale**2)
    X, Y = rows(torch.cat(xs)), rows(torch.cat(ys))  # [C, samples] of everything, in float64
    assert m.n == X.shape[1]
    assert torch.allclose(m.mean_x, X.mean(1), rtol=1e-6, atol=1e-5 * scale)
    assert torch.allclose(m.var_x, X.var(1, unbiased=False), rtol=1e-4)
    cov = (X - X.mean(1, keepdim=True)) @ (Y - Y.mean(1, keepdim=True)).T / X.shape[1]
    assert torch.allclose(m.cov_xy, cov, rtol=1e-4, atol=1e-4 * scale**2)


@settings(max_examples=20, deadline=None)
@given(offsets=st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=4), scale=st.floats(1e-2, 1e1),
       cross=st.sampled_from(["full", "diag"]), seed=st.integers(0, 99))
def test_batches_whose_means_drift_apart_still_pool_exactly(offsets, scale, cross, seed):
    """A batch far from the shift set by the first one is summed about its own means, then moved."""
    g = torch.Generator().manual_seed(seed)
    xs = [off + scale * torch.randn(6, 3, 4, 4, generator=g) for off in offsets]
    ys = [-0.5 * x + scale * torch.randn(x.shape, generator=g) for x in xs]
    m = Moments(cross=cross)
    for x, y in zip(xs, ys):
        m.update(x, y)
    X, Y = rows(torch.cat(xs)), rows(torch.cat(ys))
    cov = (X - X.mean(1, keepdim=True)) @ (Y - Y.mean(1, keepdim=True)).T / X.shape[1]
    cov = cov if cross == "full" else cov.diagonal()
    assert torch.allclose(m.mean_x, X.mean(1), rtol=1e-6, atol=1e-5 * scale)
    assert torch.allclose(m.var_x, X.var(1, unbiased=False), rtol=1e-4)
    assert torch.allclose(m.var_y, Y.var(1, unbiased=False), rtol=1e-4)
    assert torch.allclose(m.cov_xy, cov, rtol=1e-4, atol=1e-4 * scale**2)


def test_diag_cross_moment_is_the_diagonal_of_the_full_one():
    g = torch.Generator().manual_seed(0)
    full, diag = Moments(cross="full"), Moments(cross="diag")
    for shape in [(6, 4, 3, 3), (5, 4, 3, 3)]:
        x = torch.randn(shape, generator=g, dtype=torch.float64) + 3
        y = x + torch.randn(shape, generator=g, dtype=torch.float64)
        full.update(x, y)
        diag.update(x, y)
    assert torch.allclose(diag.cov_xy, full.cov_xy.diagonal())


def test_cross_moment_layouts_agree():
    """Spatial maps, flat features and few-samples-many-channels layouts give the same covariance."""
    g = torch.Generator().manual_seed(1)
    for shape in [(7, 3, 5, 4), (7, 12), (7, 40, 2, 2)]:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        y = 0.3 * x + torch.randn(shape, generator=g, dtype=torch.float64)
        m = Moments(cross="full")
        m.update(x, y)
        X, Y = rows(x), rows(y)
        cov = (X - X.mean(1, keepdim=True)) @ (Y - Y.mean(1, keepdim=True)).T / X.shape[1]
        assert torch.allclose(m.cov_xy, cov)


def test_moments_without_a_second_activation_refuse_cross_statistics():
    m = Moments()
    m.update(torch.randn(4, 3))
    with pytest.raises(ValueError, match="without"):
        _ = m.cov_xy
    with pytest.raises(ValueError, match="no samples"):
        _ = Moments().mean_x
    with pytest.raises(ValueError, match="every batch or on none"):
        m.update(torch.randn(4, 3), torch.randn(4, 3))


def test_channel_samples_views_every_layout_as_examples_channels_samples():
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    s = channel_samples(x)
    assert s.shape == (2, 3, 2) and s.data_ptr() == x.data_ptr()  # a view, no copy
    assert channel_samples(torch.ones(5, 6), channels=2).shape == (5, 2, 3)  # [N, C * inner]
    assert channel_samples(torch.ones(5, 6, dtype=torch.bfloat16)).dtype == torch.float32


def test_capture_copies_values_that_later_in_place_ops_overwrite():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True))
    x = torch.randn(8, 4)
    expected = net[0](x)
    (value,) = capture(net, ["_0"], channels=[None])(x)  # node "_0", the Linear output, then ReLU in place
    assert torch.equal(value[:, :, 0], expected) and (value < 0).any()


class _Graphs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.relu = nn.Linear(4, 4), nn.ReLU(inplace=True)

    def forward(self, x):
        a = self.fc(x)          # overwritten: its view is rectified in place below
        v = a.view(-1, 2, 2)
        v.relu_()
        b = self.fc(x) * 2      # safe: only read afterwards
        c = b + 1               # overwritten by add_ (fx records a += as an out-of-place add)
        c.add_(a.flatten(1))
        d = self.relu(c)        # the in-place ReLU's own output: nothing overwrites it later
        return d + b


def test_overwritten_nodes_follows_views_and_in_place_ops():
    gm = trace(_Graphs())
    names = {n.name: n for n in gm.graph.nodes}
    got = overwritten_nodes(gm, [names[k] for k in ("fc", "mul", "add", "relu")])
    assert got == {"fc", "add"}
    x = torch.randn(5, 4)
    values = capture(_Graphs(), ["fc", "mul", "add", "relu"])(x)  # a fresh model: same graph, same results
    assert all(v.shape[0] == 5 for v in values)


@pytest.mark.parametrize("offset, centred", [(0.5, False), (300.0, True)])
def test_raw_sums_only_where_the_means_are_small_against_the_spread(offset, centred):
    g = torch.Generator().manual_seed(2)
    xs = [offset + torch.randn(50, 4, 6, 6, generator=g) for _ in range(4)]
    ys = [x + 0.5 * torch.randn(x.shape, generator=g) for x in xs]
    m = Moments(cross="full")
    for x, y in zip(xs, ys):
        m.update(x, y)
    assert m.shifted == centred
    X, Y = rows(torch.cat(xs)), rows(torch.cat(ys))
    cov = (X - X.mean(1, keepdim=True)) @ (Y - Y.mean(1, keepdim=True)).T / X.shape[1]
    assert torch.allclose(m.var_x, X.var(1, unbiased=False), rtol=1e-4)
    assert torch.allclose(m.cov_xy, cov, rtol=1e-4, atol=1e-5)
    assert torch.allclose(m.mean_y, Y.mean(1), rtol=1e-6)


def test_passes_release_their_scratch_buffers():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    data = [(torch.randn(20, 4), None) for _ in range(3)]
    repairlib.align(net, net, data, stats_scope="conv")
    assert not stats._SCRATCH
