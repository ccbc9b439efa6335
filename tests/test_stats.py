"""Pooled moments: one pass over batches gives the statistics of all samples, in float64."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repairlib.stats import Moments, capture, channel_rows


@settings(max_examples=20, deadline=None)
@given(offset=st.floats(-1e3, 1e3), scale=st.floats(1e-2, 1e2), batches=st.integers(1, 5), seed=st.integers(0, 99))
def test_pooled_moments_equal_the_statistics_of_all_samples(offset, scale, batches, seed):
    g = torch.Generator().manual_seed(seed)
    xs = [offset + scale * torch.randn(7, 3, 5, 4, generator=g) for _ in range(batches)]
    ys = [x * 0.5 + torch.randn(x.shape, generator=g) for x in xs]
    m = Moments(cross="full")
    for x, y in zip(xs, ys):
        batch_mean, batch_var = m.update(channel_rows(x), channel_rows(y))
        assert torch.allclose(batch_mean, x.double().mean((0, 2, 3)), rtol=1e-5, atol=1e-5 * scale)
        assert torch.allclose(batch_var, x.double().var((0, 2, 3), unbiased=False), rtol=1e-3, atol=1e-6 * scale**2)
    X = channel_rows(torch.cat(xs)).double()  # [C, samples] of everything, the float64 reference
    Y = channel_rows(torch.cat(ys)).double()
    assert m.n == X.shape[1]
    assert torch.allclose(m.mean_x, X.mean(1), rtol=1e-6, atol=1e-5 * scale)
    assert torch.allclose(m.var_x, X.var(1, unbiased=False), rtol=1e-4)
    cov = (X - X.mean(1, keepdim=True)) @ (Y - Y.mean(1, keepdim=True)).T / X.shape[1]
    assert torch.allclose(m.cov_xy, cov, rtol=1e-4, atol=1e-4 * scale**2)


def test_channel_rows_is_a_copy_with_one_row_per_channel():
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    rows = channel_rows(x)
    assert rows.tolist() == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    single = torch.ones(1, 4, 1)  # here the reshape alone would be a view of x
    rows = channel_rows(single)
    single.zero_()
    assert rows.sum() == 4
    assert channel_rows(torch.ones(5, 6), channels=2).shape == (2, 15)  # [N, C * inner] -> C rows


def test_capture_rows_survive_later_in_place_ops():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(inplace=True))
    x = torch.randn(8, 4)
    expected = channel_rows(net[0](x))
    (rows,) = capture(net, ["0"], rows=[None])(x)  # node "_0", the Linear output, then ReLU in place
    assert torch.equal(rows, expected) and (rows < 0).any()
