"""Linear interpolation of two networks in weight space (paper section 2.1)."""

import copy

import torch
from torch import nn


def check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter or buffer whose name or shape differs."""
    sa, sb = model_a.state_dict(), model_b.state_dict()
    for name in sa.keys() | sb.keys():
        if name not in sa or name not in sb:
            where = "first" if name in sa else "second"
            raise ValueError(f"networks differ in architecture: {name!r} exists only in the {where} network")
    for name, ta in sa.items():
        tb = sb[name]
        if ta.shape != tb.shape:
            raise ValueError(
                f"networks differ in shape at {name!r}: {tuple(ta.shape)} vs {tuple(tb.shape)}"
            )


def check_finite(model: nn.Module, what: str = "network") -> None:
    """Raise ``ValueError`` if any floating parameter or buffer holds NaN or Inf."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{what} has NaN or Inf values in {name!r}")


def check_alpha(alpha: float, extrapolate: bool = False) -> float:
    alpha = float(alpha)
    if not extrapolate and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha} (pass extrapolate=True to go beyond)")
    return alpha


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
