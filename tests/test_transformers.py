"""Transformers: attention heads permuted as heads, REPAIR on the features of [N, T, D] tokens.

Tiny networks (embedding 24-32, 2 blocks, 32 px images), random weights: timm's ViT (fused qkv,
``scaled_dot_product_attention``), torchvision's ViT (``nn.MultiheadAttention``) and two hand-written
attentions (separate q/k/v through ``view``/``transpose``/``scaled_dot_product_attention``; a fused
qkv ``chunk`` with ``q @ k^T``). torch's own ``nn.TransformerEncoder``/``DecoderLayer``/``Transformer``
(width 16, traced along their slow path) and ``nn.MultiheadAttention`` with ``kdim``/``vdim`` on tokens
``[N, 5, 6]``.
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
from repairlib.spec import Group, PermutationSpec, channel_axes, compose_heads, permutation_spec, trace
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


# ---------------------------------------------------------------- torch's own transformer modules
class TokenEncoder(nn.Module):
    """Tokens ``[N, T, 6]`` -> Linear -> ``nn.TransformerEncoder`` (2 layers, width 16, 4 heads, a final
    LayerNorm) -> mean over tokens -> Linear ``[N, 3]``; sequence first inside unless ``batch_first``.
    ``masked``: a causal mask ``[T, T]`` and a float key padding mask ``[N, T]`` (the last token hidden)."""

    def __init__(self, norm_first=False, activation="relu", batch_first=True, masked=False):
        super().__init__()
        self.batch_first, self.masked = batch_first, masked
        self.embed, self.head = nn.Linear(6, 16), nn.Linear(16, 3)
        layer = nn.TransformerEncoderLayer(16, 4, 32, activation=activation, batch_first=batch_first,
                                           norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)

    def forward(self, x):
        h = self.embed(x) if self.batch_first else self.embed(x).transpose(0, 1)
        if self.masked:
            padding = F.pad(x[:, 1:, 0] * 0, (0, 1), value=float("-inf"))  # zeros, -inf for the last token
            causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
            h = self.enc(h, mask=causal, src_key_padding_mask=padding)
        else:
            h = self.enc(h)
        return self.head(h.mean(1 if self.batch_first else 0))


class TokenDecoder(nn.Module):
    """``nn.TransformerDecoderLayer`` (GELU, causal self-attention) on ``tgt = Linear(x)`` with ``memory =
    Linear(x[:, :3])``, 3 positions of another projection; -> mean -> Linear ``[N, 3]``. (Not an
    ``nn.GELU()`` module: torch's ``TransformerDecoderLayer.__setstate__`` gives a deep copy ``F.relu``.)"""

    def __init__(self, norm_first=False):
        super().__init__()
        self.tgt, self.memory, self.head = nn.Linear(6, 16), nn.Linear(6, 16), nn.Linear(16, 3)
        self.dec = nn.TransformerDecoderLayer(16, 4, 32, activation="gelu", batch_first=True, norm_first=norm_first)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.head(self.dec(self.tgt(x), self.memory(x[:, :3]), tgt_mask=mask).mean(1))


class TokenTransformer(nn.Module):
    """``nn.Transformer`` (1 encoder and 2 decoder layers, width 16) on ``src = Linear(x)``, ``tgt =
    Linear(x)`` with a causal target mask; -> mean -> Linear ``[N, 3]``."""

    def __init__(self):
        super().__init__()
        self.src, self.tgt, self.head = nn.Linear(6, 16), nn.Linear(6, 16), nn.Linear(16, 3)
        self.transformer = nn.Transformer(16, 4, 1, 2, 32, batch_first=True)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.head(self.transformer(self.src(x), self.tgt(x), tgt_mask=mask, tgt_is_causal=True).mean(1))


class CrossAttention(nn.Module):
    """``nn.MultiheadAttention(16, 4, kdim, vdim)``: queries ``Linear(x)`` (width 16) attend to keys and
    values of widths ``kdim`` / ``vdim`` from the first 3 positions (one projection when they agree);
    query + attention -> mean -> Linear ``[N, 3]``."""

    def __init__(self, kdim=10, vdim=10, batch_first=True, add_bias_kv=False):
        super().__init__()
        self.batch_first, self.shared = batch_first, kdim == vdim
        self.query, self.keys, self.head = nn.Linear(6, 16), nn.Linear(6, kdim), nn.Linear(16, 3)
        self.values = None if self.shared else nn.Linear(6, vdim)
        self.attn = nn.MultiheadAttention(16, 4, kdim=kdim, vdim=vdim, batch_first=batch_first,
                                          add_bias_kv=add_bias_kv)

    def forward(self, x):
        q, k = self.query(x), self.keys(x[:, :3])
        v = k if self.shared else self.values(x[:, :3])
        if not self.batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        a = self.attn(q, k, v)[0]
        return self.head((q + a).mean(1 if self.batch_first else 0))


def _seeded(make):
    def build(seed=0):
        torch.manual_seed(seed)
        return jitter(make(), seed).eval()
    return build


TORCH_TRANSFORMERS = {
    f"encoder_{'pre' if nf else 'post'}_{act}_{'batch' if bf else 'seq'}_first":
        _seeded(lambda nf=nf, act=act, bf=bf: TokenEncoder(nf, act, bf))
    for nf in (True, False) for act in ("relu", "gelu") for bf in (True, False)
}
TORCH_TRANSFORMERS |= {
    "encoder_masked": _seeded(lambda: TokenEncoder(masked=True)),
    "encoder_masked_seq_first": _seeded(lambda: TokenEncoder(norm_first=True, batch_first=False, masked=True)),
    "decoder_layer": _seeded(TokenDecoder), "decoder_layer_pre": _seeded(lambda: TokenDecoder(norm_first=True)),
    "transformer": _seeded(TokenTransformer),
    "cross_kdim": _seeded(lambda: CrossAttention(10, 10, batch_first=False, add_bias_kv=True)),
    "cross_kdim_vdim": _seeded(lambda: CrossAttention(10, 12)),
}


def tokens(n=4, seed=0):
    return torch.randn(n, 5, 6, generator=torch.Generator().manual_seed(seed))


def relative_change(a, b):
    return float(((a - b).abs().max() / a.abs().max()).detach())


@pytest.mark.parametrize("name", TORCH_TRANSFORMERS)
def test_torch_transformer_graph_computes_the_module(name):
    model, x = TORCH_TRANSFORMERS[name](), tokens()
    gm = trace(model)
    modules = dict(model.named_modules())
    assert all(modules[n.target] is gm.get_submodule(n.target) for n in gm.graph.nodes if n.op == "call_module")
    assert not any(isinstance(gm.get_submodule(n.target), (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
                   for n in gm.graph.nodes if n.op == "call_module")  # traced into, down to their layers
    for grad in (True, False):  # without grad (eval, batch first) torch may take its fast path
        with torch.set_grad_enabled(grad):
            assert relative_change(model(x), gm(x)) < 1e-5


def test_a_torch_layer_as_the_root_is_traced_along_its_slow_path():
    torch.manual_seed(0)
    layer, x = jitter(nn.TransformerEncoderLayer(16, 4, 32, norm_first=True)).eval(), torch.randn(5, 2, 16)
    gm = trace(layer)
    assert type(layer) is nn.TransformerEncoderLayer and gm.get_submodule("linear1") is layer.linear1
    assert relative_change(layer(x), gm(x)) < 1e-5
    spec = permutation_spec(layer, x)  # input and output (the residual stream) fixed; MLP and heads free
    assert "linear1" in spec.groups and sum(g.heads == 4 for g in spec.groups.values()) == 2


@pytest.mark.parametrize("name", TORCH_TRANSFORMERS)
def test_torch_transformer_symmetries_are_found_and_undone(name):
    model, x = TORCH_TRANSFORMERS[name](), tokens()
    spec = permutation_spec(model, x)  # verified inside
    state = model.state_dict()
    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    heads = [g for g in spec.groups.values() if g.heads > 1]
    assert len(heads) == 2 * len(attentions) and len(spec.head_sets()) == len(attentions)
    assert all(g.heads == 4 and g.within for g in heads)
    for key in (k for k in state if k.endswith("linear1.weight")):  # every MLP: a group with probes
        group = spec.groups[key.removesuffix(".weight")]
        assert group.size == 32 and group.probes, key
    norms = [k for k in state if k.rsplit(".", 2)[-2].startswith("norm") and k.endswith("weight")]
    stream = {g for g, grp in spec.groups.items() for k, axis, _, _ in grp.entries if k in norms}
    assert len(stream) == (1 if norms else 0) and all(spec.groups[g].residual for g in stream)  # one stream
    true = random_permutations(spec, seed=1)
    shuffled = permute(model, true, spec)
    with torch.no_grad():
        assert relative_change(model(x), shuffled(x)) < 1e-4
    found = align(model, shuffled, [(x, None)], method="weight", spec=spec, max_iter=30)
    wrong = [g for g in found if not torch.equal(true[g][found[g]], torch.arange(len(found[g])))]
    assert not wrong, f"weight matching misses {wrong}"


@pytest.mark.parametrize("kdim, vdim", [(10, 10), (10, 12)])
def test_separate_projections_of_kdim_vdim_attention(kdim, vdim):
    model, x = _seeded(lambda: CrossAttention(kdim, vdim, add_bias_kv=True))(), tokens()
    spec = permutation_spec(model, x)
    by_name = {(k, axis, start): g for g, grp in spec.groups.items() for k, axis, _, start in grp.entries}
    qk, vo = by_name[("attn.q_proj_weight", 0, 0)], by_name[("attn.v_proj_weight", 0, 0)]
    assert {by_name[("attn.k_proj_weight", 0, 0)], by_name[("attn.in_proj_bias", 0, 0)],
            by_name[("attn.in_proj_bias", 0, 16)], by_name[("attn.bias_k", 2, 0)]} == {qk}
    assert {by_name[("attn.in_proj_bias", 0, 32)], by_name[("attn.out_proj.weight", 1, 0)],
            by_name[("attn.bias_v", 2, 0)]} == {vo}
    assert spec.groups[qk].head_set == spec.groups[vo].head_set is not None
    assert by_name[("attn.k_proj_weight", 1, 0)] == by_name[("keys.weight", 0, 0)]  # the key input's own width
    values = "keys" if kdim == vdim else "values"
    assert by_name[("attn.v_proj_weight", 1, 0)] == by_name[(f"{values}.weight", 0, 0)]
    assert by_name[("attn.q_proj_weight", 1, 0)] == by_name[("query.weight", 0, 0)]


@pytest.mark.parametrize("name", ["encoder_post_relu_seq_first", "encoder_pre_gelu_batch_first", "encoder_masked",
                                  "decoder_layer", "transformer", "cross_kdim_vdim"])
def test_torch_transformer_merge_gives_a_network_of_the_same_class(name):
    make = TORCH_TRANSFORMERS[name]
    a, b, data = make(0), make(1), [(tokens(32, seed=3), None)]
    for out in (merge(a, b, data), repair(interpolate(a, b, 0.5), a, b, data, 0.5)):
        assert type(out) is type(a)
        make(2).load_state_dict(out.state_dict(), strict=True)
        with torch.no_grad():
            assert torch.isfinite(out(data[0][0])).all()


def test_a_copied_decoder_layer_keeps_its_module_activation():
    """torch's deepcopy of a TransformerDecoderLayer whose activation is a module sets ``F.relu`` as an
    instance attribute that hides the module; the library's copies (permute, interpolate, repair) keep it."""
    from repairlib.plumbing import copy_model

    torch.manual_seed(0)
    layer = torch.nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation=torch.nn.GELU())
    layer.eval()
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    copied = copy_model(layer)
    assert isinstance(copied.activation, torch.nn.GELU)
    with torch.no_grad():
        torch.testing.assert_close(copied(x, memory), layer(x, memory))
