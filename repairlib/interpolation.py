"""Linear interpolation of two networks in weight space (paper section 2.1), and the weighted average of N."""

import math

import torch
from torch import nn

from repairlib.plumbing import check_alpha, check_same_architecture, copy_model


@torch.no_grad()
def interpolate(model_a: nn.Module, model_b: nn.Module, alpha: float, extrapolate: bool = False) -> nn.Module:
    """A new network with theta_alpha = (1 - alpha) * theta_a + alpha * theta_b (paper Eq. before Eq. 1).

    Every floating parameter and buffer (BatchNorm running statistics included) is lerped; integer
    buffers such as ``num_batches_tracked`` are taken from ``model_a``. Neither input is modified.
    ``model_b`` should already be aligned to ``model_a`` (see :func:`repairlib.align`).
    """
    alpha = check_alpha(alpha, extrapolate)
    check_same_architecture(model_a, model_b)
    merged = copy_model(model_a)
    sb = model_b.state_dict()
    for name, t in merged.state_dict().items():
        if t.is_floating_point():
            t.copy_(torch.lerp(t, sb[name].to(t.device, t.dtype), alpha))
    return merged


# ---------------------------------------------------------------- N networks
def check_weights(weights, n: int) -> list:
    """``weights`` (default: uniform) as ``n`` non-negative floats summing to 1, else one ``ValueError``."""
    if weights is None:
        return [1.0 / n] * n
    try:
        weights = [float(w) for w in weights]
    except (TypeError, ValueError) as err:
        raise ValueError(f"weights must be {n} numbers, got {weights!r}") from err
    if len(weights) != n:
        raise ValueError(f"weights must have one entry per network: {len(weights)} weights for {n} networks")
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights must be finite and non-negative, got {weights}")
    total = sum(weights)
    if not total > 0:
        raise ValueError(f"weights must sum to a positive number, got {weights} (sum {total})")
    return [w / total for w in weights]


@torch.no_grad()
def weighted_average(states: list, weights: list) -> dict:
    """``theta = sum_i w_i theta_i / sum_i w_i`` of every floating tensor of N state dicts (new tensors);
    other entries (``num_batches_tracked``) from ``states[0]``. ``weights``: non-negative, positive sum.

    Computed as running lerps, ``theta <- lerp(theta, theta_i, w_i / (w_0 + ... + w_i))``, so two states
    with weights ``(1 - alpha, alpha)`` give exactly :func:`interpolate`'s ``lerp(theta_a, theta_b, alpha)``.
    """
    if len(states) != len(weights) or not states:
        raise ValueError(f"{len(weights)} weights for {len(states)} state dicts")
    out = {k: t.clone() for k, t in states[0].items()}
    total = float(weights[0])
    for state, w in zip(states[1:], weights[1:]):
        total += float(w)
        if total == 0:  # no mass yet: theta_0 stands in until a network with weight comes
            continue
        for name, t in out.items():
            if t.is_floating_point():
                t.copy_(torch.lerp(t, state[name].to(t.device, t.dtype), float(w) / total))
    return out


def average(models: list, weights=None) -> nn.Module:
    """A new network with ``theta = sum_i w_i theta_i`` (:func:`weighted_average`; ``weights``
    normalised to sum 1, default uniform), a copy of ``models[0]`` otherwise; no input is modified.
    The networks should already share one unit order (:func:`repairlib.merge_many` aligns them)."""
    if len(models) < 1:
        raise ValueError("average needs at least one network")
    for m in models[1:]:
        check_same_architecture(models[0], m)
    weights = check_weights(weights, len(models))
    merged = copy_model(models[0])
    merged.load_state_dict(weighted_average([m.state_dict() for m in models], weights))
    return merged
