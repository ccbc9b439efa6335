"""Accuracy and cross-entropy of a classifier over a data set."""

import torch
import torch.nn.functional as F
from torch import nn

from repairlib import evalcache
from repairlib.plumbing import as_input, batches, eval_mode, fixed_order, reusable


def evaluate(model: nn.Module, data) -> dict:
    """``{"accuracy": fraction correct in [0, 1], "loss": mean cross-entropy}`` over ``data``.

    ``data`` yields ``(inputs, targets int64 [B])``; logits ``[B, classes]``, the loss summed in
    float64. Batches are moved to the model's device; the model runs in eval mode, its modes are
    restored afterwards. With ``$REPAIR_EVAL_CACHE`` set, a result computed before for the same
    network and data is read from that cache (:mod:`repairlib.evalcache`).
    """
    return evalcache.memoised("evaluate", model, reusable(data), _evaluate)


@torch.no_grad()
def _evaluate(model: nn.Module, data) -> dict:
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


def per_example_logits(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """``{"correct": bool [N], "loss": float64 [N]}`` of precomputed ``logits [N, classes]``:

        correct_i = [argmax_c logits_ic == y_i],    loss_i = -log softmax(logits_i)_{y_i}

    their means are :func:`evaluate`'s accuracy and loss (e.g. of a logit ensemble, of shifted logits).
    """
    if logits.ndim != 2 or len(logits) != len(targets) or len(targets) == 0:
        raise ValueError(f"need logits [N, classes] and N targets, got {tuple(logits.shape)} and {len(targets)}")
    targets = targets.to(logits.device)
    return {"correct": (logits.argmax(1) == targets).cpu(),
            "loss": F.cross_entropy(logits.double(), targets, reduction="none").cpu()}


def per_example(model: nn.Module, data) -> dict:
    """``{"correct": bool [N], "loss": float64 [N]}`` of ``model`` on every example of ``data``, in order.

    The per-example form of :func:`evaluate` (same batches, same eval mode): ``correct.double().mean()``
    is its accuracy and ``loss.mean()`` its loss; a bootstrap over test images resamples these
    (:mod:`repairlib.book.evidence`). Tensors on the CPU. Cached like :func:`evaluate`.
    """
    return evalcache.memoised("per_example", model, reusable(data), _per_example)


@torch.no_grad()
def _per_example(model: nn.Module, data) -> dict:
    correct, loss = [], []
    with eval_mode(model):
        for x, y in batches(fixed_order(data), chunk=True):
            if y is None:
                raise ValueError("per_example needs (inputs, targets) batches")
            one = per_example_logits(model(as_input(x, model)), y)
            correct.append(one["correct"])
            loss.append(one["loss"])
    return {"correct": torch.cat(correct), "loss": torch.cat(loss)}
