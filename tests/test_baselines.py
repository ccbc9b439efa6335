"""Split-data baselines (section 5.4): logit ensemble, distribution-shift correction, small helpers."""

import math

import pytest
import torch
from torch import nn

from repairlib import baselines
from repairlib.evaluation import evaluate


def linear(weight, bias=None):
    net = nn.Linear(weight.shape[1], weight.shape[0])
    net.weight.data.copy_(weight)
    net.bias.data.copy_(torch.zeros(weight.shape[0]) if bias is None else bias)
    return net.eval()


def batches_of(x, y, size=7):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def test_logit_ensemble_mixes_the_logits():
    torch.manual_seed(0)
    a, b = linear(torch.randn(4, 3)), linear(torch.randn(4, 3))
    x = torch.randn(5, 3)
    for alpha in (0.0, 0.3, 1.0):
        expected = (1 - alpha) * a(x) + alpha * b(x)
        assert torch.allclose(baselines.LogitEnsemble(a, b, alpha)(x), expected)
    with pytest.raises(ValueError, match="alpha"):
        baselines.LogitEnsemble(a, b, 1.5)


def test_ensemble_of_two_half_experts_beats_both():
    """Each network knows only its half of the classes; their mixed logits know both halves."""
    x = torch.eye(4).repeat(5, 1)
    y = torch.arange(4).repeat(5)
    a = linear(torch.diag(torch.tensor([3.0, 3.0, 0.0, 0.0])))  # right on classes 0, 1; ties on 2, 3
    b = linear(torch.diag(torch.tensor([0.0, 0.0, 3.0, 3.0])))
    data = batches_of(x, y)
    acc = [evaluate(m, data)["accuracy"] for m in (a, b, baselines.LogitEnsemble(a, b))]
    assert acc[2] == 1.0 and acc[0] < 1.0 and acc[1] < 1.0


def test_balancing_shift_balances_the_predictions():
    torch.manual_seed(0)
    logits = torch.randn(400, 6)
    logits[:, :3] += 1.5  # over-predicts classes 0..2
    classes = [0, 1, 2]
    assert baselines.prediction_share(logits, classes) > 0.8
    b = baselines.balancing_shift(logits, classes)
    assert b > 0
    shifted = logits - b * torch.tensor([1.0, 1, 1, 0, 0, 0])
    assert abs(baselines.prediction_share(shifted, classes) - 0.5) <= 1 / 400 + 1e-9
    balanced, b_again = baselines.balanced_logits(logits, classes)
    assert b_again == b and torch.equal(balanced, shifted)
    # other targets, and nothing to do when the classes are not over-predicted
    b30 = baselines.balancing_shift(logits, classes, target_share=0.3)
    assert b30 > b
    assert baselines.balancing_shift(logits, [3, 4, 5]) == 0.0


def test_shift_corrected_network_predicts_balanced_and_lowers_the_loss():
    torch.manual_seed(1)
    n, k = 600, 4
    y = torch.arange(k).repeat(n // k)
    x = nn.functional.one_hot(y, k).float() + 0.8 * torch.randn(n, k)
    biased = linear(torch.eye(k), torch.tensor([1.0, 1.0, 0.0, 0.0]))  # prior shifted towards 0, 1
    data = batches_of(x, y, 100)
    corrected = baselines.shift_corrected(biased, data, [0, 1])
    logits, targets = baselines.predict_logits(corrected, data)
    assert len(targets) == n and logits.shape == (n, k)
    assert abs(baselines.prediction_share(logits, [0, 1]) - 0.5) < 0.01
    before, after = evaluate(biased, data), evaluate(corrected, data)
    assert after["loss"] < before["loss"] and after["accuracy"] > before["accuracy"]
    assert 0.8 < -corrected.shift[0] < 1.2 and corrected.shift[2] == 0  # it finds the prior offset


def test_logit_shift_checks_the_class_count():
    shifted = baselines.LogitShift(linear(torch.eye(3)), torch.zeros(4))
    with pytest.raises(ValueError, match="3 logits"):
        shifted(torch.randn(2, 3))


def test_class_sets_are_checked():
    logits = torch.randn(10, 4)
    for bad in ([], [0, 1, 2, 3], [4], [-1]):
        with pytest.raises(ValueError, match="proper subset"):
            baselines.prediction_share(logits, bad)


def test_favoured_classes_follow_the_split_rule():
    assert baselines.favoured_classes(0, 10) == [0, 1, 2, 3, 4]
    assert baselines.favoured_classes(1, 10) == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="part"):
        baselines.favoured_classes(2, 10)


def test_group_accuracy_and_best():
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [2.0, 0, 0], [0, 0, 2.0]])
    targets = torch.tensor([0, 1, 1, 2])
    assert baselines.group_accuracy(logits, targets, [1]) == 0.5
    assert baselines.group_accuracy(logits, targets, [0, 2]) == 1.0
    assert math.isnan(baselines.group_accuracy(logits, torch.tensor([0, 0, 0, 0]), [1]))
    assert baselines.best([1.2, 0.9, 1.0], [0.0, 0.5, 1.0]) == (0.5, 0.9)
    with pytest.raises(ValueError, match="as many"):
        baselines.best([1.0], [0.0, 1.0])


def test_logit_metrics_match_evaluate_and_mix_like_the_ensemble():
    torch.manual_seed(2)
    a, b = linear(torch.randn(4, 3)), linear(torch.randn(4, 3))
    x, y = torch.randn(30, 3), torch.randint(0, 4, (30,))
    data = batches_of(x, y)
    (la, targets), (lb, _) = baselines.predict_logits(a, data), baselines.predict_logits(b, data)
    for alpha in (0.0, 0.4):
        direct = evaluate(baselines.LogitEnsemble(a, b, alpha), data)
        mixed = baselines.logit_metrics((1 - alpha) * la + alpha * lb, targets)
        assert mixed["accuracy"] == direct["accuracy"]
        assert mixed["loss"] == pytest.approx(direct["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="logits"):
        baselines.logit_metrics(la, targets[:5])
