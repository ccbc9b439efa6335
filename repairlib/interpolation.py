"""Linear interpolation of two networks in weight space (paper section 2.1)."""

import copy

import torch
from torch import nn

from repairlib.plumbing import check_alpha, check_same_architecture


@torch.no_grad()
def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float, extrapolate: bool = False) -> nn.Module:
    """A new network with theta_alpha = (1 - alpha) * theta_a + alpha * theta_b (paper Eq. before Eq. 1).

    Every floating parameter and buffer (BatchNorm running statistics included) is lerped; integer
    buffers such as ``num_batches_tracked`` are taken from ``model_a``. Neither input is modified.
    ``model_b`` should already be aligned to ``model_a`` (see :func:`repairlib.align`).
    """
    alpha = check_alpha(alpha, extrapolate)
    check_same_architecture(model_a, model_b)
    merged = copy.deepcopy(model_a)
    sb = model_b.state_dict()
    for name, t in merged.state_dict().items():
        if t.is_floating_point():
            t.copy_(torch.lerp(t, sb[name].to(t.device, t.dtype), alpha))
    return merged
