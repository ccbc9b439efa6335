"""evaluate, the interpolation barrier (Eq. 1) and the variance ratio of section 3.1."""

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repairlib.metrics
from repairlib import models
from repairlib.batchnorm import reset_bn
from repairlib.endpoints import endpoint_stats
from repairlib.evaluation import evaluate
from repairlib.interpolation import interpolate
from repairlib.metrics import barrier, variance_ratio

os.environ.setdefault("TQDM_DISABLE", "1")



def linear(weight):
    net = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    net.weight.data.copy_(weight)
    return net


def digits_like(n=60, features=5, classes=3, batch=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def small_mlp(seed):
    torch.manual_seed(seed)
    return models.mlp(depth=4, width=16, in_features=5, num_classes=3).eval()


# ---------------------------------------------------------------- evaluate
def test_evaluate_by_hand():
    net = linear(torch.eye(3))
    x = 2 * torch.eye(3)[[0, 1, 2, 0]]
    y = torch.tensor([0, 1, 2, 1])  # the last example is wrong
    result = evaluate(net, [(x[:3], y[:3]), (x[3:], y[3:])])  # unequal batches weigh by example
    right, wrong = math.log(1 + 2 * math.exp(-2)), math.log(math.exp(2) + 2)
    assert result["accuracy"] == 0.75
    assert result["loss"] == pytest.approx((3 * right + wrong) / 4, rel=1e-6)


def test_evaluate_splits_big_cpu_batches_without_changing_the_result():
    """On a CPU, evaluate runs a batch in chunks of CPU_CHUNK images; the metrics are those of one
    forward pass over the whole batch."""
    from repairlib.plumbing import CPU_CHUNK

    torch.manual_seed(0)
    net = models.resnet20(width=1, norm="bn", in_channels=1, num_classes=10).eval()
    x, y = torch.randn(2 * CPU_CHUNK + 7, 1, 12, 12), torch.randint(0, 10, (2 * CPU_CHUNK + 7,))
    with torch.no_grad():
        logits = net(x).double()
    result = evaluate(net, [(x, y)])
    assert result["accuracy"] == (logits.argmax(1) == y).double().mean().item()
    assert result["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_evaluate_restores_the_mode_and_rejects_bad_data():
    net = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.9)).train()
    data = digits_like()
    assert evaluate(net, data) == evaluate(net, data)  # eval mode: dropout off, deterministic
    assert net.training and net[1].training
    with pytest.raises(ValueError, match="no batches"):
        evaluate(net, [])
    with pytest.raises(ValueError, match="targets"):
        evaluate(net, [torch.randn(4, 5)])


# ---------------------------------------------------------------- barrier (Eq. 1)
def test_barrier_of_a_network_with_itself_is_zero():
    net = small_mlp(0)
    result = barrier(net, copy.deepcopy(net), digits_like(), alphas=[0, 0.3, 0.5, 1])
    assert result["barrier_loss"] == pytest.approx(0, abs=1e-12)
    assert result["barrier_accuracy"] == pytest.approx(0, abs=1e-12)
    assert len(set(result["loss"])) == 1 and result["alphas"] == [0, 0.3, 0.5, 1]
    assert result["endpoints"]["a"] == result["endpoints"]["b"]
    assert len(barrier(net, net, digits_like())["alphas"]) == 11


def test_barrier_on_a_known_curve():
    """theta_a = W, theta_b = -W: theta_alpha = (1 - 2 alpha) W, uniform logits at the midpoint."""
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    data = digits_like()
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    alphas = [0, 0.25, 0.5, 0.75, 1]
    result = barrier(linear(w), linear(-w), data, alphas=alphas)
    loss = [F.cross_entropy((1 - 2 * a) * x @ w.T, y).item() for a in alphas]
    acc = [((x @ w.T * (1 - 2 * a)).argmax(1) == y).float().mean().item() for a in alphas]
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["loss"][2] == pytest.approx(math.log(3))
    assert result["accuracy"][2] == pytest.approx((y == 0).float().mean().item())  # ties: argmax is 0
    lerp = [(1 - a) * loss[0] + a * loss[-1] for a in alphas]
    assert result["barrier_loss"] == pytest.approx(max(c - ref for c, ref in zip(loss, lerp)), rel=1e-5)
    lerp_acc = [(1 - a) * acc[0] + a * acc[-1] for a in alphas]
    assert result["barrier_accuracy"] == pytest.approx(max(ref - c for c, ref in zip(acc, lerp_acc)))


def test_barrier_with_repair_measures_endpoint_statistics_once(monkeypatch):
    a, b = small_mlp(0), small_mlp(1)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return endpoint_stats(*args, **kwargs)

    monkeypatch.setattr(repairlib.metrics, "endpoint_stats", counting)
    data = digits_like()
    plain = barrier(a, b, data, alphas=[0, 0.5, 1])
    fixed = barrier(a, b, data, alphas=[0, 0.5, 1], correct="repair", stats_data=digits_like(seed=1))
    assert len(calls) == 1
    assert fixed["loss"][1] != plain["loss"][1]
    assert fixed["endpoints"] == plain["endpoints"]
    assert fixed["loss"][0] == pytest.approx(plain["loss"][0], rel=0.05)  # REPAIR at alpha 0 ~ identity


def test_barrier_reuses_given_statistics_and_endpoints(monkeypatch):
    a, b = small_mlp(0), small_mlp(1)
    data, stats_data = digits_like(), digits_like(seed=1)
    measured = barrier(a, b, data, alphas=[0.5], correct="repair", stats_data=stats_data)
    stats = endpoint_stats(a, b, stats_data)
    monkeypatch.setattr(repairlib.metrics, "endpoint_stats", lambda *args, **kwargs: pytest.fail("measured again"))
    given = barrier(a, b, data, alphas=[0.5], correct="repair", stats_data=stats_data, stats=stats)
    assert given["loss"] == [pytest.approx(measured["loss"][0])]
    fake_ends = {"a": {"accuracy": 1.0, "loss": 0.0}, "b": {"accuracy": 1.0, "loss": 0.0}}
    reused = barrier(a, b, data, alphas=[0.5], endpoints=fake_ends)  # not evaluated again: Eq. 1 uses them
    assert reused["endpoints"] is fake_ends
    assert reused["barrier_loss"] == pytest.approx(reused["loss"][0])
    assert reused["barrier_accuracy"] == pytest.approx(1.0 - reused["accuracy"][0])


def test_barrier_with_reset_bn_uses_the_statistics_data():
    torch.manual_seed(0)
    a, b = (nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval() for _ in "ab")
    data, stats_data = digits_like(), digits_like(seed=2)
    result = barrier(a, b, data, alphas=[0.5], correct="reset_bn", stats_data=stats_data)
    expected = evaluate(reset_bn(interpolate(a, b, 0.5), stats_data), data)
    assert result["loss"] == [pytest.approx(expected["loss"])]


def test_barrier_bad_inputs():
    a = small_mlp(0)
    with pytest.raises(ValueError, match="correct"):
        barrier(a, a, digits_like(), correct="renormalise")
    with pytest.raises(ValueError, match="differ"):
        barrier(a, models.mlp(depth=2, width=16, in_features=5, num_classes=3), digits_like())
    with pytest.raises(ValueError, match="alpha"):
        barrier(a, a, digits_like(), alphas=[0.5, 2.0])


# ---------------------------------------------------------------- variance collapse (section 3.1)
def test_variance_ratio_is_one_without_interpolation():
    a, b = small_mlp(0), small_mlp(1)
    data = digits_like()
    same = variance_ratio(interpolate(a, a, 0.5), a, a, data)
    assert len(same) == 4 and all(r == pytest.approx(1.0) for r in same.values())  # hidden layers only
    at_a = variance_ratio(interpolate(a, b, 0.0), a, b, data)  # alpha 0: v_a / ((v_a + v_b) / 2)
    s = endpoint_stats(a, b, data)
    assert list(at_a) == s.points
    for p in s.points:
        v_a, v_b = s.var_a[p].sum(), s.var_b[p].sum()
        assert at_a[p] == pytest.approx((v_a / ((v_a + v_b) / 2)).item())


def test_variance_collapses_at_the_midpoint_as_eq_5_predicts():
    a, b = small_mlp(0), small_mlp(1)
    data = digits_like(n=200)
    ratio = variance_ratio(interpolate(a, b, 0.5), a, b, data)
    assert all(r < 1 for r in ratio.values())
    s = endpoint_stats(a, b, data)
    first = s.points[0]
    predicted = (s.var_a[first] + s.var_b[first] + 2 * s.cov_ab[first]).sum() / 4
    assert ratio[first] == pytest.approx((predicted / ((s.var_a[first] + s.var_b[first]).sum() / 2)).item())


def test_batches_chunks_only_cpu_image_batches():
    from repairlib.plumbing import CPU_CHUNK, batches

    x, y = torch.randn(CPU_CHUNK + 30, 1, 4, 4), torch.arange(CPU_CHUNK + 30)
    pieces = list(batches([(x, y)], chunk=True))
    assert [len(p) for p, _ in pieces] == [CPU_CHUNK, 30]
    assert torch.equal(torch.cat([p for p, _ in pieces]), x) and torch.equal(torch.cat([t for _, t in pieces]), y)
    assert len(list(batches([(x, y)]))) == 1  # passes that depend on the batch see it whole
    flat = torch.randn(CPU_CHUNK + 30, 16)  # an MLP's batch: matrix products prefer big batches
    assert len(list(batches([flat], chunk=True))) == 1


def test_batchnorm_drift_is_one_for_running_statistics_of_the_same_data_and_large_when_stale():
    from repairlib.metrics import batchnorm_drift

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    data = [(3 * torch.randn(50, 1, 8, 8), torch.zeros(50, dtype=torch.long)) for _ in range(2)]
    stale = batchnorm_drift(model, data)  # running_var 1, inputs of variance ~9 x the conv's gain
    assert set(stale) == {"1", "4"} and stale["1"] > 2
    model.train()
    for bn in (model[1], model[4]):
        bn.momentum = None  # cumulative average: the running statistics of exactly these batches
    with torch.no_grad():
        for x, _ in data:
            model(x)
    fresh = batchnorm_drift(model, data)
    assert fresh["1"] == pytest.approx(1.0, rel=0.02) and model.training  # its mode restored
    assert fresh["4"] == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match="no BatchNorm"):
        batchnorm_drift(nn.Linear(3, 2), [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))])
