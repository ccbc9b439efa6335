"""REPAIR's statistics from ``align`` follow B's permutation on every point, the [N, T, D] token
features of a transformer included: they equal the statistics measured afresh on A and aligned B, also
where another axis of the value is permuted (an MLP-Mixer's token MLP). And activation matching measures
token features where they are, on the last axis of [N, T, D]."""

import pytest
import torch
from test_architectures import randomize_constant_tensors
from test_transformers import hand, images, jitter, timm_vit, torchvision_vit

from repairlib.alignment import align, late_points, permute, random_permutations
from repairlib.correction import closed_form_affines, repair
from repairlib.endpoints import endpoint_stats
from repairlib.interpolation import interpolate
from repairlib.models import resnet20
from repairlib.pipeline import merge
from repairlib.points import correction_points
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


# ---------------------------------------------------------------- permuted non-channel axes
def small_mixer(seed, patch_size):
    """timm's MLP-Mixer at 32 px, 2 blocks of width 64, random weights (``T = (32 / patch_size)^2`` tokens)."""
    from timm.models.mlp_mixer import MlpMixer

    torch.manual_seed(seed)
    model = MlpMixer(img_size=32, patch_size=patch_size, num_classes=10, num_blocks=2, embed_dim=64).eval()
    return jitter(randomize_constant_tensors(model, seed), seed)


def outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("patch_size", [4, 8])  # T = D = 64 tokens, and T = 16 != D
@pytest.mark.parametrize("scope", ["conv", "all"])
def test_mixer_cross_moments_are_those_of_the_aligned_pair(patch_size, scope):
    """The token MLP's points ([N, D, hidden] after fc1, [N, D, T] after fc2) lie along the permuted
    residual stream D: align's statistics there are measured on the aligned pair, so the closed form
    through align (and through merge, i.e. align_many) is the closed form of freshly measured statistics;
    and the means and variances of ``stats_cov=False`` equal the fresh ones."""
    a, b = small_mixer(0, patch_size), small_mixer(1, patch_size)
    x = images(192, seed=7)
    data = [(chunk, None) for chunk in x.chunk(3)]
    spec = permutation_spec(a, x[:8])
    points = correction_points(a, scope, x)
    assert {p for p in points if "mlp_tokens_fc" in p} == set(late_points(spec, points))
    found = align(a, b, data, spec=spec, stats_scope=scope)
    aligned = permute(b, found, spec)
    fresh = endpoint_stats(a, aligned, data, scope)
    assert found.endpoint_stats.points == fresh.points == points
    for p in points:
        assert torch.allclose(found.endpoint_stats.cov_ab[p], fresh.cov_ab[p], rtol=1e-5, atol=1e-7), p
    moved, goal = closed_form_affines(found.endpoint_stats, 0.5), closed_form_affines(fresh, 0.5)
    for p in points:
        assert all(torch.allclose(u, v, rtol=1e-5, atol=1e-6) for u, v in zip(moved[p], goal[p])), p
    middle = interpolate(a, aligned, 0.5)
    want = outputs(repair(middle, a, aligned, data, 0.5, "closed_form", scope, stats=fresh), x[:32])
    for got in (repair(middle, a, aligned, data, 0.5, "closed_form", scope, stats=found.endpoint_stats),
                merge(a, b, data, correct="closed_form", scope=scope)):
        assert torch.allclose(outputs(got, x[:32]), want, rtol=1e-4, atol=1e-5 * want.abs().max())
    plain = align(a, b, data, spec=spec, stats_scope=scope, stats_cov=False).endpoint_stats
    for p in points:
        assert torch.allclose(plain.mean_b[p], fresh.mean_b[p], atol=1e-5), p
        assert torch.allclose(plain.var_b[p], fresh.var_b[p], rtol=1e-4, atol=1e-7), p


@pytest.mark.parametrize("scope", ["conv", "all"])
def test_convolutional_points_need_no_second_pass(scope):
    """ResNet-20's points have no permuted axis besides their channels (pixels are positions): none is
    measured again after alignment, and ViT's neither (its mixed nodes are attention's per-head views)."""
    x = images(8)
    for model in (resnet20(1).eval(), jitter(timm_vit())):
        spec = permutation_spec(model, x)
        assert late_points(spec, correction_points(model, scope, x)) == [], type(model).__name__


# ---------------------------------------------------------------- token-feature probes
def planted_alignment(model, n=300, seed=3):
    """Activation matching of ``model`` against a random permutation of itself, on ``n`` random images in
    three batches: ``(spec, planted, found)``."""
    x = images(n, seed=seed)
    data = [(chunk, None) for chunk in x.chunk(3)]
    spec = permutation_spec(model, x[:8])
    planted = random_permutations(spec, seed=seed + 1)
    found = align(model, permute(model, planted, spec), data, method="activation", spec=spec)
    return spec, planted, found


def undone(planted, found, g) -> bool:
    return torch.equal(planted[g][found[g]], torch.arange(len(found[g])))


def test_token_feature_groups_are_probed_on_the_last_axis():
    """timm's ViT: the MLP hidden units, the residual stream and the value/output heads (the merged
    attention output, input of the output projection) are probed on the last axis of [N, T, D]; the
    query/key groups have no probe."""
    model = jitter(timm_vit())
    spec = permutation_spec(model, images(8))
    kinds = {"mlp": [g for g in spec.groups if g.endswith("mlp.fc1")],
             "residual": [g for g, grp in spec.groups.items() if grp.residual],
             "value/output": [g for g, grp in spec.groups.items() if grp.heads > 1 and grp.probes]}
    assert [len(v) for v in kinds.values()] == [2, 1, 2], kinds
    for g in [g for groups in kinds.values() for g in groups]:
        grp = spec.groups[g]
        assert grp.probes and any(grp.probe_axes.get(p) == 2 for p in grp.probes), g
        assert all(spec.node_groups[p] == g for p in grp.probes), g
    unprobed = [g for g, grp in spec.groups.items() if not grp.probes]
    assert len(unprobed) == 2 and all(spec.groups[g].heads == 4 for g in unprobed)  # query/key
    assert all("query/key" in n for n in spec.notes if "weight matching" in n)


@pytest.mark.parametrize("make", [timm_vit, torchvision_vit, hand])
def test_activation_matching_recovers_a_planted_permutation_of_token_features(make):
    """Every probed group (on the last axis of tokens or on dim 1) is solved from its correlations and
    undoes the planted permutation exactly; the query/key groups, weight-matched with their heads held
    where the value/output group put them, too."""
    spec, planted, found = planted_alignment(jitter(make()))
    probed = [g for g, grp in spec.groups.items() if grp.probes]
    assert any(grp.probe_axes for grp in spec.groups.values())
    assert set(found.correlations) == set(probed)
    wrong = [g for g in spec.groups if not undone(planted, found, g)]
    assert not wrong, wrong


def test_mlp_mixer_token_and_channel_mlps():
    """timm's MLP-Mixer (mixer_s16_224's widths at 32 px, 2 blocks): the channel MLP's hidden units are
    probed on the last axis of [N, T, hidden]; the token MLP's hidden units lie along the permuted
    channels ([N, D, hidden]: no sample is one position in both networks), so they stay weight-matched;
    the residual stream is probed on dim 1 of the token MLP's input [N, D, T] and on the last axis."""
    from timm.models.mlp_mixer import MlpMixer

    torch.manual_seed(0)
    model = jitter(MlpMixer(num_classes=10, img_size=32, patch_size=16, num_blocks=2, embed_dim=512).eval())
    spec, planted, found = planted_alignment(model, n=600)  # 2400 token samples for 2048 channel-MLP units
    channel = [g for g in spec.groups if "mlp_channels" in g]
    token = [g for g in spec.groups if "mlp_tokens" in g]
    (residual,) = [g for g, grp in spec.groups.items() if grp.residual]
    assert len(channel) == len(token) == 2
    assert all(set(spec.groups[g].probe_axes.values()) == {2} and spec.groups[g].probes for g in channel)
    assert not any(spec.groups[g].probes for g in token)
    axes = [spec.groups[residual].probe_axes.get(p, 1) for p in spec.groups[residual].probes]
    assert 1 in axes and 2 in axes
    wrong = [g for g in spec.groups if not undone(planted, found, g)]
    assert not wrong, wrong
