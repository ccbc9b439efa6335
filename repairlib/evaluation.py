"""Accuracy and cross-entropy of a classifier over a data set."""

import torch
import torch.nn.functional as F
from torch import nn

from repairlib.plumbing import as_input, batches, eval_mode, fixed_order


@torch.no_grad()
def evaluate(model: nn.Module, data) -> dict:
    """``{"accuracy": fraction correct in [0, 1], "loss": mean cross-entropy}`` over ``data``.

    ``data`` yields ``(inputs, targets int64 [B])``; logits ``[B, classes]``, the loss summed in
    float64. Batches are moved to the model's device; the model runs in eval mode, its modes are
    restored afterwards.
    """
    correct, loss, n = 0, 0.0, 0
    with eval_mode(model):
        for x, y in batches(fixed_order(data), chunk=True):  # CPU image batches in CPU_CHUNK pieces: same result
            if y is None:
                raise ValueError("evaluate needs (inputs, targets) batches")
            logits = model(as_input(x, model))
            y = y.to(logits.device)
            loss += F.cross_entropy(logits.double(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    return {"accuracy": correct / n, "loss": loss / n}
