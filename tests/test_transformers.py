"""Transformers: attention heads permuted as heads, REPAIR on the features of [N, T, D] tokens.

Tiny networks (embedding 24-32, 2 blocks, 32 px images), random weights: timm's ViT (fused qkv,
``scaled_dot_product_attention``), torchvision's ViT (``nn.MultiheadAttention``) and two hand-written
attentions (separate q/k/v through ``view``/``transpose``/``scaled_dot_product_attention``; a fused
qkv ``chunk`` with ``q @ k^T``).
"""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from repairlib.alignment import align, permute, random_permutations, solve_groups, solve_unit
from repairlib.correction import repair
from repairlib.endpoints import endpoint_stats
from repairlib.interpolation import interpolate
from repairlib.pipeline import merge
from repairlib.points import correction_points
from repairlib.spec import Group, PermutationSpec, channel_axes, compose_heads, permutation_spec
from repairlib.stats import Moments, capture

timm = pytest.importorskip("timm")


class HandAttention(nn.Module):
    """One pre-norm attention block on 4 x 4 patches: separate q/k/v projections and
    ``scaled_dot_product_attention``, or (``fused``) one qkv projection cut by ``chunk`` and attention
    written out as ``softmax(q k^T / sqrt(d)) v``."""

    def __init__(self, dim=24, heads=3, fused=False):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj, self.norm, self.head = nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # [B, T, D]
        b, t, d = x.shape
        y = self.norm(x)
        q, k, v = self.qkv(y).chunk(3, dim=-1) if self.fused else (self.q(y), self.k(y), self.v(y))
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        if self.fused:
            a = (q * (d // self.heads) ** -0.5 @ k.transpose(-2, -1)).softmax(-1) @ v
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).contiguous().view(b, t, d))
        return self.head(x.mean(1))


def timm_vit(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                             depth=2, embed_dim=32, num_heads=4).eval()


def torchvision_vit(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                hidden_dim=32, mlp_dim=64, num_classes=10).eval()


def hand(seed=0, fused=False):
    torch.manual_seed(seed)
    return HandAttention(fused=fused).eval()


NETWORKS = {"timm_vit": (timm_vit, 4, 2), "torchvision_vit": (torchvision_vit, 4, 2),
            "hand_sdpa": (hand, 3, 1), "hand_fused_matmul": (lambda seed=0: hand(seed, fused=True), 3, 1)}


def jitter(model, seed=0):
    """Weights off their initialisation (trunc-normal ViT weights make attention nearly uniform)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def images(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NETWORKS)
def test_attention_heads_are_groups_moved_as_heads(name):
    make, heads, blocks = NETWORKS[name]
    model, x = jitter(make()), images()
    spec = permutation_spec(model, x)  # verified inside, heads moved together per head set
    head_groups = {g: grp for g, grp in spec.groups.items() if grp.heads > 1}
    sets = spec.head_sets()
    assert len(head_groups) == 2 * blocks and len(sets) == blocks  # q/k and v/out per block, one sigma each
    assert all(grp.heads == heads and grp.within for grp in head_groups.values())
    assert all(len(members) == 2 for members in sets.values())
    for members in sets.values():  # the q/k group holds two slices of the projection rows, v/o one plus out_proj
        entries = sorted(len(head_groups[m].entries) for m in members)
        assert entries in ([3, 4], [4, 4], [3, 3])
    true = random_permutations(spec, seed=1)
    moved = [g for g in head_groups if not torch.equal(true[g].view(heads, -1)[:, 0] // (true[g].numel() // heads),
                                                       torch.arange(heads))]
    assert moved, "the random permutations move whole heads"
    shuffled = permute(model, true, spec)
    with torch.no_grad():
        change = float((model(x) - shuffled(x)).abs().max() / model(x).abs().max())
    assert change < 1e-5


@pytest.mark.parametrize("name", NETWORKS)
def test_weight_matching_undoes_head_permutations_exactly(name):
    model, x = jitter(NETWORKS[name][0]()), images()
    spec = permutation_spec(model, x)
    true = random_permutations(spec, seed=2)
    found = align(model, permute(model, true, spec), [(x, None)], method="weight", spec=spec)
    assert all(torch.equal(true[g][found[g]], torch.arange(len(found[g]))) for g in spec.groups)


def test_a_permutation_that_splits_heads_is_refused():
    model, x = jitter(timm_vit()), images()
    spec = permutation_spec(model, x)
    g = next(g for g, grp in spec.groups.items() if grp.heads > 1)
    perms = {g: torch.arange(spec.groups[g].size).roll(1)}  # moves one dim into the next head
    with pytest.raises(ValueError, match="whole attention heads"):
        permute(model, perms, spec)


def test_block_solver_finds_the_planted_head_structured_permutation():
    gen = torch.Generator().manual_seed(0)
    heads, d = 5, 4
    sigma = torch.randperm(heads, generator=gen)
    taus = [torch.stack([torch.randperm(d, generator=gen) for _ in range(heads)]) for _ in range(2)]
    planted = {g: compose_heads(sigma, t) for g, t in zip("ab", taus)}
    spec = PermutationSpec({g: Group(heads * d, [(f"{g}.weight", 0, 1)], heads=heads, head_set="a") for g in "ab"})
    scores = {}
    for g, perm in planted.items():
        noise = 0.1 * torch.rand(heads * d, heads * d, generator=gen)
        scores[g] = noise.index_put((torch.arange(heads * d), perm), torch.ones(heads * d))
    found = solve_unit(spec, ["a", "b"], scores)
    assert all(torch.equal(found[g], planted[g]) for g in "ab")
    with pytest.raises(ValueError, match="no probe"):
        solve_groups(spec, {})  # no scores and no states to weight-match with


@pytest.mark.parametrize("make", [timm_vit, torchvision_vit])
def test_activation_matching_weight_matches_groups_without_probes(make):
    model, data = jitter(make()), [(images(64, seed=3), None)]
    spec = permutation_spec(model, data[0][0])
    unprobed = [g for g, grp in spec.groups.items() if not grp.probes]
    assert unprobed and any(spec.groups[g].heads > 1 for g in unprobed)
    true = random_permutations(spec, seed=4)
    found = align(model, permute(model, true, spec), data, method="activation", spec=spec)
    assert set(found) == set(spec.groups)
    assert all(torch.equal(true[g][found[g]], torch.arange(len(found[g]))) for g in spec.groups)


@pytest.mark.parametrize("make", [timm_vit, torchvision_vit])
@pytest.mark.parametrize("scope", ["conv", "all"])
def test_exact_repair_meets_its_goals_on_token_features(make, scope):
    """Eqs. 3-4 per feature of [N, T, D] (the last axis), pooled over all N * T positions: exact on one
    statistics batch (several batches renormalise batch by batch, so they meet the goals approximately)."""
    a, b, data = jitter(make(0), 0), jitter(make(1), 1), [(images(48, seed=5), None)]
    x = data[0][0]
    points, axes = correction_points(a, scope, x), channel_axes(a, x)
    tokens = [p for p in points if axes[p] == 2]
    assert tokens and all(axes[p] in (1, 2) for p in points)  # the patch conv's map [N, D, h, w]: dim 1
    assert (scope == "all") == any(p.startswith("add") for p in points)  # the residual stream
    stats = endpoint_stats(a, b, data, scope)
    assert all(len(stats.mean_a[p]) == 32 or len(stats.mean_a[p]) in (64, 128) for p in points)
    fixed = repair(interpolate(a, b, 0.5), a, b, data, 0.5, scope=scope, stats=stats, fuse=False)
    values = capture(fixed, [f"repair_{p}" for p in points])(x)
    goals = stats.targets(0.5)
    for p, value in zip(points, values):
        m = Moments(axis=axes[p])
        m.update(value)
        mean, std = goals[p]
        assert torch.allclose(m.mean_x, mean, atol=1e-5 * float(std.max())), p
        assert torch.allclose(m.var_x.sqrt(), std, rtol=1e-4), p


@pytest.mark.parametrize("make", [timm_vit, torchvision_vit])
def test_merge_gives_a_network_of_the_same_class(make):
    a, b, data = jitter(make(0), 0), jitter(make(1), 1), [(images(32, seed=6), None)]
    merged = merge(a, b, data)
    assert type(merged) is type(a)
    fresh = make(2)
    fresh.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        out = merged(data[0][0])
    assert torch.isfinite(out).all() and out.shape == (32, 10)
    fused, unfused = (repair(interpolate(a, b, 0.5), a, b, data, 0.5, fuse=f) for f in (True, False))
    with torch.no_grad():
        assert torch.allclose(fused(data[0][0]), unfused(data[0][0]), atol=1e-4)
