"""REPAIR's statistics from ``align`` follow B's permutation on every point, the [N, T, D] token
features of a transformer included: they equal the statistics measured afresh on A and aligned B."""

import pytest
import torch
from test_transformers import images, jitter, timm_vit, torchvision_vit

from repairlib.alignment import align, permute
from repairlib.endpoints import endpoint_stats
from repairlib.spec import channel_axes, permutation_spec

pytest.importorskip("timm")


@pytest.mark.parametrize("make", [timm_vit, torchvision_vit])
@pytest.mark.parametrize("scope", ["conv", "all"])
def test_align_statistics_are_those_of_the_aligned_pair(make, scope):
    a, b, data = jitter(make(0), 0), jitter(make(1), 1), [(images(48, seed=7), None)]
    x = data[0][0]
    spec = permutation_spec(a, x)
    found = align(a, b, data, method="activation", spec=spec, stats_scope=scope)
    aligned = permute(b, found, spec)
    fresh = endpoint_stats(a, aligned, data, scope)
    axes = channel_axes(a, x)
    assert any(axes[p] == 2 for p in fresh.mean_b), "the scope has token features"
    for p in fresh.mean_b:
        moved = found.endpoint_stats
        assert torch.allclose(moved.mean_b[p], fresh.mean_b[p], atol=1e-5), p
        assert torch.allclose(moved.var_b[p], fresh.var_b[p], rtol=1e-4, atol=1e-7), p
        assert torch.allclose(moved.mean_a[p], fresh.mean_a[p], atol=1e-5), p
