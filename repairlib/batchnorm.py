"""BatchNorm statistics reset: the one implementation (training's recalibration, the "reset_bn" correction)."""

import torch
from torch import nn

from repairlib.plumbing import as_input, batches, eval_mode, reusable


def tracked_batchnorms(model: nn.Module) -> dict:
    """``name -> module`` of every BatchNorm1d/2d/3d of ``model`` that keeps running statistics."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


@torch.no_grad()
def reset_bn(model: nn.Module, data, max_examples: int | None = None) -> nn.Module:
    """Recompute every BatchNorm's running statistics on ``data``, in place; returns ``model``.

    The semantics of ``torch.optim.swa_utils.update_bn``, with a fixed data order: every
    BatchNorm1d/2d/3d that tracks statistics is reset and re-estimated as a cumulative average
    (momentum None) in one pass over ``data`` (at most ``max_examples`` inputs, whole batches), with
    only the BatchNorm layers in train mode; modes and momenta are restored. The statistics are only
    reset once the first batch has arrived, so bad data leaves them as they were.
    """
    bns = list(tracked_batchnorms(model).values())
    if not bns:
        return model
    momenta = [bn.momentum for bn in bns]
    seen = 0
    with eval_mode(model):
        try:
            for i, (x, _) in enumerate(batches(reusable(data))):
                if i == 0:
                    for bn in bns:
                        bn.reset_running_stats()
                        bn.momentum = None
                        bn.train()
                model(as_input(x, model))
                seen += len(x)
                if max_examples is not None and seen >= max_examples:
                    break
        finally:
            for bn, momentum in zip(bns, momenta):
                bn.momentum = momentum
    return model
