"""``repairlib.merge`` is the step-by-step path in one call, and every statistics pass depends only on
its inputs: a shuffling loader iterated before, or a generator, gives the same network."""

import pytest
import torch
from conftest import TinyBN, TinyResNet, image_data, pair

import repairlib
from repairlib import data


def same(m1, m2) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def shuffling_loader(n=96, batch=24, augment="flip+translate"):
    """A repairlib TensorLoader that reshuffles and re-augments on every pass (as training data does)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (n,), generator=g)
    return data.TensorLoader(images, labels, torch.arange(n), (0.5,), (0.25,), batch, augment, shuffle=True)


def float_pair(make):
    a, b = pair(make, double=False)
    return a, b


def test_merge_equals_the_steps():
    a, b = pair(TinyBN)
    d = image_data()
    perms = repairlib.align(a, b, d)
    b2 = repairlib.permute(b, perms)
    steps = repairlib.repair(repairlib.interpolate(a, b2, 0.3), a, b2, d, 0.3)
    merged = repairlib.merge(a, b, d, 0.3)
    assert type(merged) is TinyBN
    x = d[0][0].double()
    torch.testing.assert_close(merged(x), steps(x))


@pytest.mark.parametrize("correct", ["repair", "closed_form", "reset_bn", "none"])
@pytest.mark.parametrize("align", ["activation", "weight", "none"])
def test_merge_runs_every_combination_and_leaves_the_inputs(align, correct):
    a, b = pair(TinyBN)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    merged = repairlib.merge(a, b, image_data(), align=align, correct=correct)
    assert torch.isfinite(merged(image_data()[0][0].double())).all()
    for m, state in zip((a, b), before):
        assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def test_merge_bad_choices_name_the_option():
    a, b = pair(TinyBN)
    for kwargs, name in (({"align": "cca"}, "align"), ({"correct": "rescales"}, "correct"),
                         ({"scope": "every"}, "scope")):
        with pytest.raises(ValueError, match=name):
            repairlib.merge(a, b, image_data(), **kwargs)
    with pytest.raises(ValueError, match="alpha"):
        repairlib.merge(a, b, image_data(), 1.5)


STATISTICS_CALLS = {
    "align": lambda a, b, d: repairlib.align(a, b, d, stats_scope="conv"),
    "merge": lambda a, b, d: repairlib.merge(a, b, d),
    "merge_all": lambda a, b, d: repairlib.merge(a, b, d, scope="all"),
    "repair": lambda a, b, d: repairlib.repair(repairlib.interpolate(a, b, 0.5), a, b, d, 0.5),
    "barrier": lambda a, b, d: repairlib.barrier(a, b, d, alphas=[0.5], correct="repair"),
    "variance_ratio": lambda a, b, d: repairlib.variance_ratio(repairlib.interpolate(a, b, 0.5), a, b, d),
    "reset_bn": lambda a, b, d: repairlib.reset_bn(repairlib.interpolate(a, b, 0.5), d),
    "endpoint_stats": lambda a, b, d: repairlib.endpoint_stats(a, b, d),
}


def _comparable(result):
    """A result as a flat list of tensors and numbers, to compare bit for bit."""
    if isinstance(result, torch.nn.Module):
        return [result.state_dict()[k] for k in sorted(result.state_dict())]
    if isinstance(result, repairlib.alignment.Alignment):
        return [result[g] for g in sorted(result)] + _comparable(result.endpoint_stats)
    if isinstance(result, repairlib.endpoints.EndpointStats):
        return [getattr(result, f)[p] for f in ("mean_a", "var_a", "mean_b", "var_b") for p in result.points]
    if isinstance(result, dict):
        return [result[k] for k in sorted(result) if k != "endpoints"]
    raise TypeError(type(result))


def _equal(x, y) -> bool:
    if isinstance(x, torch.Tensor):
        return torch.equal(x, y)
    return x == y


@pytest.mark.parametrize("name", sorted(STATISTICS_CALLS))
def test_statistics_do_not_depend_on_earlier_passes(name):
    a, b = float_pair(TinyResNet if name == "merge_all" else TinyBN)
    loader = shuffling_loader()
    first = _comparable(STATISTICS_CALLS[name](a, b, loader))
    for _ in range(3):  # a training loop would have moved the loader on by three epochs
        list(loader)
    second = _comparable(STATISTICS_CALLS[name](a, b, loader))
    assert len(first) == len(second) and all(_equal(x, y) for x, y in zip(first, second))


@pytest.mark.parametrize("name", ["align", "merge", "repair", "barrier", "reset_bn"])
def test_a_generator_is_read_once_and_used_whole(name):
    a, b = float_pair(TinyBN)
    batches = image_data()
    from_list = _comparable(STATISTICS_CALLS[name](a, b, batches))
    from_generator = _comparable(STATISTICS_CALLS[name](a, b, (batch for batch in batches)))
    assert all(_equal(x, y) for x, y in zip(from_list, from_generator))


def test_an_exhausted_generator_is_an_error():
    a, b = float_pair(TinyBN)
    empty = (batch for batch in [])
    with pytest.raises(ValueError, match="no batches"):
        repairlib.merge(a, b, empty)


def test_a_shuffling_torch_dataloader_is_replayed_in_one_order():
    a, b = float_pair(TinyBN)
    x = torch.cat([x for x, _ in image_data()]).float()
    y = torch.zeros(len(x), dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=20, shuffle=True)
    first = repairlib.merge(a, b, loader)
    list(loader)
    assert same(first, repairlib.merge(a, b, loader))


def test_fixed_order_leaves_the_training_loader_alone():
    loader = shuffling_loader()
    fixed = loader.fixed_order()
    assert torch.equal(torch.cat([x for x, _ in fixed]), torch.cat([x for x, _ in fixed]))
    first, second = (torch.cat([x for x, _ in loader]) for _ in range(2))
    assert not torch.equal(first, second), "the training loader still reshuffles every epoch"
    assert loader.epoch == 2
