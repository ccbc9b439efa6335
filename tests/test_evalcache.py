"""The evaluation cache: a hit is what the computation gave, and anything that changes the outputs misses."""

import os

import pytest
import torch
from torch import nn

from repairlib import evalcache, evaluation


class Scaled(nn.Module):
    """A module whose output depends on a plain attribute and a non-persistent buffer."""

    def __init__(self):
        super().__init__()
        self.scale = 1.0
        self.register_buffer("shift", torch.zeros(3), persistent=False)

    def forward(self, x):
        return x * self.scale + self.shift


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), Scaled())


def _data(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


@pytest.fixture
def computed(monkeypatch, tmp_path):
    """The cache in ``tmp_path``; counts the real computations of evaluate and per_example."""
    monkeypatch.setenv(evalcache.ENV, str(tmp_path))
    calls = []
    for name in ("_evaluate", "_per_example"):
        real = getattr(evaluation, name)
        monkeypatch.setattr(evaluation, name, lambda m, d, real=real, name=name: calls.append(name) or real(m, d))
    return calls


def test_a_hit_returns_what_the_computation_gave(computed, monkeypatch):
    net, data = _net(), _data()
    first, again = evaluation.per_example(net, data), evaluation.per_example(net, data)
    summary, summary_again = evaluation.evaluate(net, data), evaluation.evaluate(net, data)
    assert computed == ["_per_example", "_evaluate"]  # each computed once, then read back
    assert torch.equal(first["correct"], again["correct"]) and torch.equal(first["loss"], again["loss"])
    assert summary == summary_again
    monkeypatch.setenv(evalcache.ENV, "")  # no cache: computed afresh, the same values
    fresh = evaluation.per_example(net, data)
    assert torch.equal(fresh["loss"], first["loss"]) and evaluation.evaluate(net, data) == summary
    assert computed[2:] == ["_per_example", "_evaluate"]


def test_anything_that_changes_the_outputs_misses(computed):
    data = _data()
    base = evaluation.per_example(_net(), data)
    changes = {
        "one weight bit": lambda n: n[0].weight.data.view(-1).view(torch.int32)[0].add_(1),
        "a plain attribute": lambda n: setattr(n[3], "scale", 2.0),
        "a non-persistent buffer": lambda n: n[3].shift.add_(1.0),
        "the module structure": lambda n: n.insert(2, nn.Identity()),
        "a float64 copy": lambda n: n.double(),
    }
    for what, change in changes.items():
        net = _net()
        change(net)
        before = len(computed)
        out = evaluation.per_example(net, data)
        assert len(computed) == before + 1, f"{what} hit the cache"
        if what not in ("one weight bit", "the module structure", "a float64 copy"):
            assert not torch.equal(out["loss"], base["loss"]), what
    before = len(computed)
    evaluation.per_example(_net(), _data(seed=1))
    evaluation.per_example(_net(), data[:2])
    assert len(computed) == before + 2  # other data, less data


def test_a_network_with_hooks_is_never_cached(computed):
    net, data = _net(), _data()
    net[1].register_forward_hook(lambda module, inputs, output: output * 0)
    evaluation.evaluate(net, data)
    evaluation.evaluate(net, data)
    assert computed == ["_evaluate", "_evaluate"]
    assert not any(evalcache.directory().rglob("*.pt"))


def test_an_unreadable_entry_is_recomputed_and_replaced(computed, tmp_path):
    net, data = _net(), _data()
    expected = evaluation.evaluate(net, data)
    (entry,) = tmp_path.rglob("*.pt")
    entry.write_bytes(b"not a checkpoint")
    assert evaluation.evaluate(net, data) == expected
    assert computed == ["_evaluate", "_evaluate"]
    assert evalcache.load(entry) == expected  # replaced by a good one
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_generator_is_read_once_and_cached_like_a_list(computed):
    net, data = _net(), _data()
    assert evaluation.evaluate(net, iter(data)) == evaluation.evaluate(net, data)
    assert computed == ["_evaluate"]


def test_the_book_runner_caches_evaluations_beside_the_zoo_unless_told_not_to(monkeypatch, tmp_path):
    from repairlib.book import runner

    monkeypatch.setenv("REPAIR_ZOO", str(tmp_path / "zoo"))
    monkeypatch.delenv(evalcache.ENV, raising=False)
    with runner.kernel_environment():
        assert evalcache.directory() == tmp_path / "zoo" / "evaluations"
    assert evalcache.ENV not in os.environ  # restored
    monkeypatch.setenv(evalcache.ENV, "")
    with runner.kernel_environment():
        assert evalcache.directory() is None
