"""Permutation specs found from the graph, permutations, and both alignment methods."""

import copy

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from repairlib import models
from repairlib.alignment import align, permute, random_permutations
from repairlib.interpolation import interpolate
from repairlib.spec import Group, PermutationSpec, permutation_spec


class Unlisted(nn.Module):
    """A network no table lists: depthwise conv, squeeze-excite gating, GroupNorm, PReLU, LayerNorm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 12, 3, padding=1)
        self.gn = nn.GroupNorm(1, 12)
        self.act = nn.PReLU(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.gate = nn.Conv2d(12, 12, 1)
        self.proj = nn.Conv2d(12, 8, 1)
        self.ln = nn.LayerNorm(8 * 7 * 7)
        self.head = nn.Linear(8 * 7 * 7, 5)

    def forward(self, x):
        x = self.act(self.gn(self.stem(x)))
        x = x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        x = nn.functional.max_pool2d(self.dw(x) + x, 4)
        x = self.proj(x).flatten(1)
        return self.head(torch.relu(self.ln(x)))


def randomize_norm_stats(model, seed=0):
    """Give BatchNorm non-trivial running statistics and affine so permutations are visible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, (models.Bias, models.Scale)):
                for p in m.parameters():
                    p.add_(torch.rand(p.shape, generator=gen) * 0.1)
    return model.eval()


ARCHS = {
    "mlp": (lambda: models.mlp(depth=3, width=16), (1, 28, 28)),
    "vgg11": (lambda: models.vgg(11, width=1, in_channels=1), (1, 28, 28)),
    "vgg11_bn": (lambda: models.vgg(11, width=1, norm="bn", in_channels=1), (1, 28, 28)),
    "resnet20_bn": (lambda: models.resnet20(width=1, in_channels=1), (1, 28, 28)),
    "resnet20_ln": (lambda: models.resnet20(width=1, norm="ln", in_channels=1), (1, 28, 28)),
    "resnet20_fixup": (lambda: models.resnet20(width=1, norm="fixup", in_channels=1), (1, 28, 28)),
    "resnet18": (lambda: models.resnet18(width=1), (3, 16, 16)),
    "tv_resnet18": (lambda: torchvision.models.resnet18(num_classes=7), (3, 32, 32)),
    "tv_resnet50": (lambda: torchvision.models.resnet50(num_classes=7), (3, 32, 32)),
    "tv_vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=7), (3, 32, 32)),
    "unlisted": (Unlisted, (1, 28, 28)),
}


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    out = {}
    for name, (make, shape) in ARCHS.items():
        model = randomize_norm_stats(make())
        x = torch.randn(4, *shape)
        out[name] = (model, x, permutation_spec(model, x))
    return out


@pytest.mark.parametrize("name", list(ARCHS))
def test_random_permutation_keeps_outputs(built, name):
    model, x, spec = built[name]
    assert spec.groups, "every listed network has hidden units to permute"
    perms = random_permutations(spec, seed=1)
    moved = sum(int((p != torch.arange(len(p))).any()) for p in perms.values())
    assert moved == len(perms)
    before = copy.deepcopy(model.state_dict())
    permuted = permute(model, perms, spec)
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), model(x), rtol=1e-4, atol=1e-4)
    # the weights did change, and the input model did not
    changed = [k for k, v in permuted.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(["mlp", "resnet20_bn", "resnet20_fixup", "unlisted"]))
def test_permutation_property(built, seed, name):
    model, x, spec = built[name]
    permuted = permute(model, random_permutations(spec, seed), spec)
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), model(x), rtol=1e-4, atol=1e-4)


def test_every_weight_of_hidden_layers_is_covered(built):
    """Nothing that indexes hidden units is missed: only the input and output layers stay unpermuted."""
    model, _, spec = built["resnet20_bn"]
    covered = {k for g in spec.groups.values() for k, *_ in g.entries}
    missed = [k for k in model.state_dict() if k not in covered and not k.endswith("num_batches_tracked")]
    assert missed == ["fc.bias"]
    residual = [g for g in spec.groups.values() if g.residual]
    assert [g.size for g in residual] == [16, 32, 64]  # one permutation per residual stage
    assert sum(not g.residual for g in spec.groups.values()) == 9  # one per block's inner conv


def test_residual_stream_is_one_group_in_torchvision_resnet50(built):
    _, _, spec = built["tv_resnet50"]
    stream = [n for n, g in spec.groups.items() if g.residual]
    assert len(stream) == 4
    keys = {k for k, *_ in spec.groups[stream[0]].entries}
    assert {"layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
            "layer1.2.bn3.weight", "layer2.0.conv1.weight", "layer2.0.downsample.0.weight"} <= keys
    # the stem feeds a 1x1 downsampling shortcut, so it is a group of its own, not part of the stream
    assert not spec.groups["conv1"].residual and ("bn1.running_var", 0, 1, 0) in spec.groups["conv1"].entries
    assert ("fc.weight", 1, 1, 0) in spec.groups[stream[-1]].entries


def test_flatten_into_linear_uses_inner_blocks(built):
    _, _, spec = built["unlisted"]
    (name,) = [n for n, g in spec.groups.items() if ("head.weight", 1, 49, 0) in g.entries]
    assert spec.groups[name].size == 8


def test_unknown_op_names_the_graph_node():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), 1))

    with pytest.raises(ValueError, match="cumsum"):
        permutation_spec(Odd(), torch.randn(2, 4))


def test_concat_keeps_channels_fixed():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 5), nn.Linear(8, 2)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    spec = permutation_spec(Cat(), torch.randn(2, 4))
    assert spec.groups == {}


@pytest.mark.parametrize("name", ["mlp", "resnet20_bn", "resnet20_ln", "vgg11_bn", "unlisted"])
@pytest.mark.parametrize("method", ["activation", "weight"])
def test_align_recovers_a_random_permutation(built, name, method):
    model, _, spec = built[name]
    gen = torch.Generator().manual_seed(3)
    shape = ARCHS[name][1]
    data = [(torch.randn(64, *shape, generator=gen), torch.zeros(64)) for _ in range(2)]
    true = random_permutations(spec, seed=7)
    shuffled = permute(model, true, spec)
    found = align(model, shuffled, data, method=method)
    assert set(found) == set(spec.groups)
    exact = True
    for g in found:
        wrong = (true[g][found[g]] != torch.arange(len(found[g]))).nonzero().flatten()
        if method == "weight" or len(wrong) == 0:
            assert len(wrong) == 0, g
            continue
        # activation matching may only swap dead units: they correlate with nothing
        exact = False
        corr = found.correlations[g]
        assert corr[wrong].abs().max() == 0, g
    if exact:  # aligning the shuffled copy back gives the original weights
        back = permute(shuffled, found)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(back.state_dict()[k], v)


def test_activation_matching_correlations_are_one_for_identical_units(built):
    model, _, spec = built["mlp"]
    data = [(torch.randn(128, 1, 28, 28), torch.zeros(128))]
    found = align(model, permute(model, random_permutations(spec, 2), spec), data)
    for g, corr in found.correlations.items():
        matched = corr[torch.arange(len(found[g])), found[g]]
        live = matched != 0  # a dead unit (never active on this data) correlates with nothing
        assert live.float().mean() > 0.5
        torch.testing.assert_close(matched[live], torch.ones(int(live.sum()), dtype=matched.dtype),
                                   atol=1e-4, rtol=0)


def test_dead_units_give_no_nan():
    model = models.mlp(depth=2, width=8)
    with torch.no_grad():
        model[1].bias[:3] = -1e3  # three units never fire
    data = [(torch.randn(32, 1, 28, 28), torch.zeros(32))]
    found = align(model, copy.deepcopy(model), data)
    for c in found.correlations.values():
        assert torch.isfinite(c).all()


def test_align_rejects_different_architectures():
    a, b = models.mlp(depth=2, width=8), models.mlp(depth=2, width=9)
    with pytest.raises(ValueError, match=r"0\.weight|1\.weight"):
        align(a, b, [(torch.randn(4, 1, 28, 28), None)])
    with pytest.raises(ValueError, match="method"):
        align(a, a, [(torch.randn(4, 1, 28, 28), None)], method="magic")


def test_permute_rejects_bad_permutations(built):
    model, _, spec = built["mlp"]
    g = next(iter(spec.groups))
    with pytest.raises(ValueError, match="not a permutation"):
        permute(model, {g: torch.zeros(16, dtype=torch.long)}, spec)
    with pytest.raises(ValueError, match="unknown permutation group"):
        permute(model, {"nope": torch.arange(3)}, spec)
    with pytest.raises(ValueError, match="spec"):
        permute(model, {g: torch.arange(16)})


def test_hand_written_spec_with_hook_probes():
    """A spec written by hand; probes are submodule names captured with forward hooks."""
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    spec = PermutationSpec(groups={"hidden": Group(6, [("0.weight", 0, 1), ("0.bias", 0, 1), ("2.weight", 1, 1)],
                                                   probes=["1"])})
    true = {"hidden": torch.tensor([5, 3, 1, 0, 2, 4])}
    data = [(torch.randn(200, 3), None)]
    found = align(model, permute(model, true, spec), data, spec=spec)
    assert torch.equal(true["hidden"][found["hidden"]], torch.arange(6))


def test_align_does_not_modify_inputs(built):
    model, _, _ = built["resnet20_bn"]
    other = randomize_norm_stats(models.resnet20(width=1, in_channels=1), seed=5)
    before_a, before_b = copy.deepcopy(model.state_dict()), copy.deepcopy(other.state_dict())
    model.train()
    align(model, other, [(torch.randn(16, 1, 28, 28), None)])
    assert model.training and not other.training
    for ref, m in ((before_a, model), (before_b, other)):
        for k, v in m.state_dict().items():
            assert torch.equal(v, ref[k]), k
    model.eval()


def test_alignment_lowers_the_weight_distance():
    """Two differently initialised nets: weight matching brings B's weights closer to A's."""
    torch.manual_seed(0)
    a, b = models.mlp(depth=2, width=32), models.mlp(depth=2, width=32)
    found = align(a, b, [(torch.randn(8, 1, 28, 28), None)], method="weight")
    b2 = permute(b, found)

    def dist(m):
        return sum(float((p - q).pow(2).sum()) for p, q in zip(a.parameters(), m.parameters()))

    assert dist(b2) < dist(b)
    mid = interpolate(a, b2, 0.5)
    assert all(torch.isfinite(p).all() for p in mid.parameters())


@pytest.mark.parametrize("scope", ["conv", "all"])
def test_endpoint_stats_from_the_alignment_pass_equal_a_separate_pass(scope):
    """REPAIR's statistics gathered while aligning (B's permuted afterwards) equal measuring aligned B."""
    from repairlib.endpoints import endpoint_stats

    torch.manual_seed(0)
    a = randomize_norm_stats(models.resnet20(width=1, in_channels=1), seed=1)
    b = randomize_norm_stats(models.resnet20(width=1, in_channels=1), seed=2)
    data = [(torch.randn(32, 1, 28, 28), None) for _ in range(2)]
    found = align(a, b, data, stats_scope=scope)
    shared = found.endpoint_stats
    separate = endpoint_stats(a, permute(b, found), data, scope)
    assert shared.points == separate.points and len(shared.points) > 5
    for field in ("mean_a", "var_a", "mean_b", "var_b", "cov_ab"):
        for p in shared.points:
            torch.testing.assert_close(getattr(shared, field)[p], getattr(separate, field)[p],
                                       rtol=1e-4, atol=1e-6, msg=f"{field} {p}")


def test_endpoint_stats_without_covariance_serve_the_exact_variant_only():
    """stats_cov=False: the same means and variances, no Cov(X_a, X_b); exact REPAIR gives the same
    network, and the closed form (which needs the covariance) says so."""
    from repairlib.correction import repair

    torch.manual_seed(0)
    a = randomize_norm_stats(models.resnet20(width=1, in_channels=1), seed=1).eval()
    b = randomize_norm_stats(models.resnet20(width=1, in_channels=1), seed=2).eval()
    data = [(torch.randn(32, 1, 28, 28), None) for _ in range(2)]
    full, lean = align(a, b, data, stats_scope="conv"), align(a, b, data, stats_scope="conv", stats_cov=False)
    assert all(torch.equal(full[g], lean[g]) for g in full)
    assert lean.endpoint_stats.cov_ab is None and full.endpoint_stats.cov_ab is not None
    for field in ("mean_a", "var_a", "mean_b", "var_b"):
        for p in full.endpoint_stats.points:
            torch.testing.assert_close(getattr(lean.endpoint_stats, field)[p], getattr(full.endpoint_stats, field)[p],
                                       rtol=1e-6, atol=1e-9)
    b2 = permute(b, full)
    mid = interpolate(a, b2, 0.5)
    x = data[0][0]
    with torch.no_grad():
        expected = repair(mid, a, b2, data, 0.5, stats=full.endpoint_stats)(x)
        torch.testing.assert_close(repair(mid, a, b2, data, 0.5, stats=lean.endpoint_stats)(x), expected,
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="stats_cov=True"):
        repair(mid, a, b2, data, 0.5, variant="closed_form", stats=lean.endpoint_stats)


# ---------------------------------------------------------------- what the graph analysis must not get wrong
class TokenMLP(nn.Module):
    """A Linear on the last axis of ``[N, T, D]`` tokens: its units are D, never the token axis T."""

    def __init__(self, tokens, dim=12, hidden=16):
        super().__init__()
        self.tokens = tokens
        self.embed = nn.Linear(5, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):  # x: [N, T * 5]
        t = self.embed(x.view(x.shape[0], self.tokens, 5))  # [N, T, D]
        t = t + self.fc2(torch.relu(self.fc1(self.norm(t))))
        return self.head(t.mean(1))


@pytest.mark.parametrize("tokens", [12, 7])  # T == D once: shapes alone cannot tell the axes apart
def test_linear_on_tokens_permutes_the_feature_axis(tokens):
    model, x = TokenMLP(tokens), torch.randn(3, tokens * 5)
    spec = permutation_spec(model, x)
    hidden = spec.groups["fc1"]
    assert hidden.size == 16 and set(hidden.entries) == {("fc1.weight", 0, 1, 0), ("fc1.bias", 0, 1, 0), ("fc2.weight", 1, 1, 0)}
    assert hidden.probes == ["relu"] and hidden.probe_axes == {"relu": 2}  # measured on the last axis
    assert not any("weight matching" in n for n in spec.notes)
    stream = spec.groups["embed"]
    assert stream.residual and ("norm.weight", 0, 1, 0) in stream.entries and ("head.weight", 1, 1, 0) in stream.entries
    assert stream.probes == ["norm", "mean"] and stream.probe_axes == {"norm": 2}  # [N, T, D], [N, D]
    permuted = permute(model, random_permutations(spec, seed=3), spec)
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), model(x), rtol=1e-5, atol=1e-5)
    shuffled = permute(model, random_permutations(spec, seed=4), spec)
    found = align(model, shuffled, [(x, None)], method="weight")
    true = random_permutations(spec, seed=4)
    assert all(torch.equal(true[g][found[g]], torch.arange(len(found[g]))) for g in found)
    many = torch.randn(100, tokens * 5)
    found = align(model, shuffled, [(many, None)], method="activation", spec=spec)
    assert set(found.correlations) == {"fc1", "embed"}
    assert all(torch.equal(true[g][found[g]], torch.arange(len(found[g]))) for g in found)


class Tied(nn.Module):
    """One Linear called twice, and a second Linear that shares its weight: one space, not three."""

    def __init__(self):
        super().__init__()
        self.stem, self.block, self.twin = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.twin.weight = self.block.weight
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.stem(x)
        h = h + torch.relu(self.block(h))
        h = h + torch.relu(self.block(h))
        return self.head(torch.relu(self.twin(h)))


def test_weight_sharing_gives_one_group():
    model, x = Tied(), torch.randn(5, 4)
    spec = permutation_spec(model, x)
    assert list(spec.groups) == ["stem"]
    entries = set(spec.groups["stem"].entries)
    assert {("block.weight", 0, 1, 0), ("block.weight", 1, 1, 0), ("twin.weight", 0, 1, 0), ("twin.weight", 1, 1, 0),
            ("twin.bias", 0, 1, 0), ("head.weight", 1, 1, 0)} <= entries
    permuted = permute(model, random_permutations(spec, seed=1), spec)
    assert permuted.twin.weight is permuted.block.weight
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_wrong_analysis_is_caught_and_names_the_group(monkeypatch):
    """The safety net: an op table that claims cumsum is element-wise (it is not) must not give a spec."""
    import repairlib.spec as spec_module

    class Cum(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), 1))

    monkeypatch.setattr(spec_module, "_ELEMENTWISE_FUNCTIONS", spec_module._ELEMENTWISE_FUNCTIONS | {torch.cumsum})
    model, x = Cum(), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"group 'a' .*a\.weight axis 0.*graph nodes: a, .*cumsum.*hand-written"):
        permutation_spec(model, x)
    unchecked = permutation_spec(model, x, verify=False)  # the user can switch the check off
    assert list(unchecked.groups) == ["a"]


def test_verify_spec_names_a_hand_written_mistake():
    from repairlib.spec import verify_spec

    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    wrong = PermutationSpec(groups={"hidden": Group(6, [("0.weight", 0, 1), ("2.weight", 1, 1)], probes=["1"],
                                                    nodes=["_0", "_2"])})  # forgets 0.bias
    with torch.no_grad():
        model[0].bias.uniform_(-1, 1)
    with pytest.raises(ValueError, match=r"group 'hidden' \(6 units; 0\.weight axis 0, 2\.weight axis 1\).*_0, _2"):
        verify_spec(model, wrong, torch.randn(4, 3))
    verify_spec(model, permutation_spec(model, torch.randn(4, 3)), torch.randn(4, 3))


class ShuffleNetBlock(nn.Module):
    """Channel shuffle (view, transpose, view), a channels-last LayerNorm (permute, functional
    layer_norm), a functional batch norm, a squeeze-and-excite gate and eval-mode stochastic depth."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 1)
        self.ln_weight, self.ln_bias = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))
        self.register_buffer("bn_mean", torch.randn(8) * 0.1)
        self.register_buffer("bn_var", torch.rand(8) + 0.5)
        self.se_reduce, self.se_expand = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        from torchvision.ops import stochastic_depth

        x = torch.relu(self.stem(x))
        n, c, h, w = x.shape
        shuffled = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = self.mid(shuffled).permute(0, 2, 3, 1)
        y = nn.functional.layer_norm(y, (8,), self.ln_weight, self.ln_bias).permute(0, 3, 1, 2)
        y = nn.functional.batch_norm(y, self.bn_mean, self.bn_var, training=False)
        y = y * torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        y = stochastic_depth(y, 0.2, "row", training=False) + y
        return self.head(self.out(y).mean((2, 3)))


def test_channel_shuffle_is_fixed_and_said_so_and_the_rest_is_permuted():
    model, x = ShuffleNetBlock(), torch.randn(2, 3, 8, 8)
    spec = permutation_spec(model, x)
    assert set(spec.groups) == {"mid", "se_reduce", "out"}  # the shuffled stem channels stay fixed
    assert {("ln_weight", 0, 1, 0), ("bn_var", 0, 1, 0), ("se_expand.weight", 0, 1, 0), ("out.weight", 1, 1, 0)} <= set(
        spec.groups["mid"].entries)
    assert "node 'view': split into axes of [2, 4]" in spec.summary()
    permuted = permute(model, random_permutations(spec, seed=2), spec)
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), model(x), rtol=1e-5, atol=1e-5)


def test_activation_matching_warns_when_the_data_do_not_determine_a_group():
    """Issue 13: fewer samples than units, or tied correlation rows (dead units), leave a group's assignment
    open; ONE warning names those groups. Enough data on live units gives no warning."""
    import warnings

    torch.manual_seed(0)
    model = models.mlp(depth=2, width=16)
    other = copy.deepcopy(model)
    groups = list(permutation_spec(model, torch.randn(2, 1, 28, 28)).groups)
    with pytest.warns(UserWarning, match=r"do not determine the assignment of 2 group\(s\).*8 samples for 16 units") as w:
        align(model, other, [(torch.randn(8, 1, 28, 28), None)])
    assert sum("do not determine" in str(x.message) for x in w) == 1
    assert all(repr(g) in str(w[0].message) for g in groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        align(model, other, [(torch.randn(256, 1, 28, 28), None)])
    dead = copy.deepcopy(model)
    with torch.no_grad():
        dead[1].bias[:3] = -1e3  # three units of the first group never fire: identical (zero) correlation rows
    with pytest.warns(UserWarning, match=rf"1 group\(s\): '{groups[0]}': 3 units with tied correlations"):
        align(dead, copy.deepcopy(dead), [(torch.randn(256, 1, 28, 28), None)])


class EinsumAttention(nn.Module):
    """Tokens ``[B, T, 16]``, one fused qkv Linear cut by ``chunk`` into 4 heads of 4, attention written as
    two einsums (``scores``: q k^T, ``mix``: scores v; ``listed``: the operands passed as one list)."""

    def __init__(self, scores="bhid,bhjd->bhij", mix="bhij,bhjd->bhid", listed=False, dim=16, heads=4):
        super().__init__()
        self.scores, self.mix, self.listed, self.heads = scores, mix, listed, heads
        self.embed, self.qkv = nn.Linear(6, dim), nn.Linear(dim, 3 * dim)
        self.proj, self.head = nn.Linear(dim, dim), nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = (torch.einsum(self.scores, [q, k]) if self.listed else torch.einsum(self.scores, q, k)).softmax(-1)
        y = torch.einsum(self.mix, [a, v]) if self.listed else torch.einsum(self.mix, a, v)
        return self.head((x + self.proj(y.transpose(1, 2).reshape(b, t, d))).mean(1))


@pytest.mark.parametrize(("scores", "mix", "listed"), [
    ("bhid,bhjd->bhij", "bhij,bhjd->bhid", False),
    ("... i d, ... j d", "...ij,...jd->...id", True)], ids=["plain", "ellipsis_implicit_list"])
def test_einsum_attention_heads_are_head_groups(scores, mix, listed):
    torch.manual_seed(0)
    model, x = EinsumAttention(scores, mix, listed).eval(), torch.randn(2, 5, 6)
    spec = permutation_spec(model, x)
    heads = {name: g for name, g in spec.groups.items() if g.heads > 1}
    assert len(heads) == 2 and {g.heads for g in heads.values()} == {4} and len(spec.head_sets()) == 1
    true = random_permutations(spec, seed=1)
    shuffled = permute(model, true, spec)
    with torch.no_grad():
        change = float((model(x) - shuffled(x)).abs().max() / model(x).abs().max())
    assert change < 1e-5
    found = align(model, shuffled, [(x, None)], method="weight", spec=spec)
    assert all(torch.equal(true[g][found[g]], torch.arange(len(found[g]))) for g in spec.groups)


def test_einsum_in_sublist_form_names_the_node():
    class Sublist(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.einsum(h, [0, 1], h, [0, 1], [0, 1]))

    with pytest.raises(ValueError, match=r"graph node 'einsum' \(call_function einsum\): einsum in sublist form"):
        permutation_spec(Sublist(), torch.randn(2, 4))


@pytest.mark.parametrize("kind", ["gaussian", "near rank one", "ties"])
def test_solve_assignment_finds_the_best_permutation_of_the_raw_score(kind):
    """The solver sees a doubly centred score; the permutation it returns is still one of the best for
    the score as given (the centring adds one constant to every permutation's total)."""
    from scipy.optimize import linear_sum_assignment

    from repairlib.alignment import solve_assignment

    g = torch.Generator().manual_seed(0)
    n = 60
    score = {"gaussian": lambda: torch.randn(n, n, generator=g, dtype=torch.float64),
             "near rank one": lambda: torch.rand(n, 1, generator=g, dtype=torch.float64)
             @ torch.rand(1, n, generator=g, dtype=torch.float64) * 1e3
             + 1e-3 * torch.randn(n, n, generator=g, dtype=torch.float64),
             "ties": lambda: torch.randint(0, 3, (n, n), generator=g).double()}[kind]()
    perm = solve_assignment(score)
    assert sorted(perm.tolist()) == list(range(n))
    rows, cols = linear_sum_assignment(score.numpy(), maximize=True)
    best = float(score.numpy()[rows, cols].sum())
    assert float(score[torch.arange(n), perm].sum()) == pytest.approx(best, rel=1e-12, abs=1e-9)
