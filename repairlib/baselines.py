"""Baselines of the split-data experiment (paper section 5.4, Fig. 13) and small result helpers.

Two networks trained on class-biased halves of a training set (``repairlib.data.biased_split``) are
compared, on the full test set, with:

- the *logit ensemble* (:class:`LogitEnsemble`): ``(1 - alpha) f_A(x) + alpha f_B(x)``, the mix of the
  two networks' outputs (two forward passes per input);
- the *distribution-shift correction* of one endpoint (:func:`shift_corrected`): network A was trained
  on data biased 4:1 towards the first half of the classes, so on a balanced test set it over-predicts
  them. Their logits are lowered by one common amount ``b`` (their softmax odds scaled down by
  ``exp(-b)``), chosen so that the share of test predictions falling in those classes equals their
  share of the classes (1/2): the network's predictions become balanced.

Every network here is an ``nn.Module`` returning logits ``[B, classes]``, so ``repairlib.evaluate``
measures it like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from repairlib.plumbing import as_input, batches, eval_mode, fixed_order


class LogitEnsemble(nn.Module):
    """``x -> (1 - alpha) model_a(x) + alpha model_b(x)``: logits ``[B, classes]`` mixed.

    ``alpha`` in [0, 1]; both networks must map the same inputs to the same number of classes.
    """

    def __init__(self, model_a: nn.Module, model_b: nn.Module, alpha: float = 0.5):
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.model_a, self.model_b, self.alpha = model_a, model_b, float(alpha)

    def forward(self, x):
        return (1 - self.alpha) * self.model_a(x) + self.alpha * self.model_b(x)


class LogitShift(nn.Module):
    """``x -> model(x) + shift``: a fixed ``[classes]`` vector added to the logits (a prior correction)."""

    def __init__(self, model: nn.Module, shift: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32).flatten())

    def forward(self, x):
        logits = self.model(x)
        if logits.shape[-1] != len(self.shift):
            raise ValueError(f"the network gives {logits.shape[-1]} logits but the shift has {len(self.shift)}")
        return logits + self.shift.to(logits)


@torch.no_grad()
def predict_logits(model: nn.Module, data) -> tuple:
    """``(logits float32 [N, classes], targets int64 [N])`` of ``model`` on every batch of ``data`` (CPU)."""
    logits, targets = [], []
    with eval_mode(model):
        for x, y in batches(fixed_order(data), chunk=True):
            if y is None:
                raise ValueError("predict_logits needs (inputs, targets) batches")
            logits.append(model(as_input(x, model)).float().cpu())
            targets.append(y.cpu())
    return torch.cat(logits), torch.cat(targets)


def logit_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """``{"accuracy", "loss"}`` of precomputed ``logits [N, classes]`` (what ``repairlib.evaluate`` reports
    for a network with these outputs): e.g. a logit ensemble ``(1 - a) La + a Lb`` without a forward pass."""
    if logits.ndim != 2 or len(logits) != len(targets) or len(targets) == 0:
        raise ValueError(f"need logits [N, classes] and N targets, got {tuple(logits.shape)} and {len(targets)}")
    loss = torch.nn.functional.cross_entropy(logits.double(), targets, reduction="mean")
    return {"accuracy": float((logits.argmax(1) == targets).double().mean()), "loss": float(loss)}


def _class_mask(classes, num_classes: int) -> torch.Tensor:
    """Boolean ``[num_classes]`` mask of ``classes`` (ids); ``ValueError`` for an empty or bad set."""
    ids = torch.as_tensor(list(classes), dtype=torch.long)
    if ids.numel() == 0 or ids.numel() >= num_classes or ids.min() < 0 or ids.max() >= num_classes:
        raise ValueError(f"classes must be a non-empty proper subset of 0..{num_classes - 1}, got {list(classes)}")
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[ids] = True
    return mask


def prediction_share(logits: torch.Tensor, classes) -> float:
    """Fraction of rows of ``logits [N, classes]`` whose argmax is one of ``classes``."""
    mask = _class_mask(classes, logits.shape[1])
    return float(mask[logits.argmax(1)].float().mean())


def balancing_shift(logits: torch.Tensor, classes, target_share: float | None = None, iters: int = 60) -> float:
    """The amount ``b >= 0`` to subtract from the logits of ``classes`` so that the share of argmax
    predictions in ``classes`` falls to ``target_share`` (default: their share of all classes).

    The share is non-increasing in ``b``; ``b`` is found by bisection (``iters`` halvings). Returns 0
    when the classes are not over-predicted. ``logits``: ``[N, K]``.
    """
    mask = _class_mask(classes, logits.shape[1])
    target = float(mask.float().mean()) if target_share is None else float(target_share)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target_share must be in [0, 1], got {target_share!r}")

    def share(b):
        return float(mask[(logits - b * mask).argmax(1)].float().mean())

    if share(0.0) <= target:
        return 0.0
    low, high = 0.0, float(logits.max() - logits.min()) + 1.0  # at `high` no row predicts `classes`
    for _ in range(iters):
        mid = (low + high) / 2
        low, high = (mid, high) if share(mid) > target else (low, mid)
    return high


def balanced_logits(logits: torch.Tensor, classes, target_share: float | None = None) -> tuple:
    """``(logits with those of classes lowered by b, b)``, ``b`` from :func:`balancing_shift`:
    the distribution-shift correction applied to precomputed logits ``[N, K]``."""
    b = balancing_shift(logits, classes, target_share)
    return logits - b * _class_mask(classes, logits.shape[1]).to(logits), b


def shift_corrected(model: nn.Module, data, classes, target_share: float | None = None) -> LogitShift:
    """``model`` with the logits of its over-predicted ``classes`` lowered so its predictions on
    ``data`` become balanced (:func:`balancing_shift`; Fig. 13's distribution-shift correction)."""
    logits, _ = predict_logits(model, data)
    b = balancing_shift(logits, classes, target_share)
    shift = -b * _class_mask(classes, logits.shape[1]).float()
    return LogitShift(model, shift.to(next(model.parameters()).device))


def favoured_classes(part: int, num_classes: int) -> list:
    """Classes a network trained on ``biased_split(..., part)`` saw most: the first half for part 0,
    the second for part 1 (the split rule of :func:`repairlib.data.biased_split`)."""
    if part not in (0, 1):
        raise ValueError(f"part must be 0 or 1, got {part!r}")
    half = num_classes // 2
    return list(range(half)) if part == 0 else list(range(half, num_classes))


def group_accuracy(logits: torch.Tensor, targets: torch.Tensor, classes) -> float:
    """Accuracy over the examples whose target is one of ``classes`` (``nan`` if there are none)."""
    mask = _class_mask(classes, logits.shape[1])[targets]
    if not mask.any():
        return float("nan")
    return float((logits[mask].argmax(1) == targets[mask]).float().mean())


def best(values, alphas) -> tuple:
    """``(alpha, value)`` of the smallest value (e.g. the lowest test loss along an interpolation)."""
    values, alphas = list(values), list(alphas)
    if not values or len(values) != len(alphas):
        raise ValueError(f"need as many values as alphas, got {len(values)} and {len(alphas)}")
    i = min(range(len(values)), key=values.__getitem__)
    return alphas[i], values[i]
