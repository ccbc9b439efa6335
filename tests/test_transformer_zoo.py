"""The small timm ViT and ConvNeXt of the book's transformer page: built from a config, trained and cached
by the zoo with their SGD recipe; ``permutation_spec(..., heads=False)``, the spec that matches attention
dimensions as independent units."""

import pytest
import torch

from repairlib import models, train, zoo
from repairlib.alignment import permute, random_permutations
from repairlib.spec import permutation_spec

pytest.importorskip("timm")

TINY = {"vit": {"arch": "vit", "embed_dim": 16, "depth": 1, "num_heads": 2, "in_channels": 1},
        "convnext": {"arch": "convnext", "width": 8, "depth": 1, "in_channels": 1}}


def images(n=4, seed=0):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", TINY)
def test_configs_build_fashion_mnist_shaped_networks(arch):
    config = models.canonical_config(TINY[arch])
    assert config["num_classes"] == 10 and config["in_channels"] == 1
    model = models.build(config).eval()
    with torch.no_grad():
        assert model(images()).shape == (4, 10)
    assert models.arch_of(model) == arch
    recipe = train.recipe_for(arch, "fashion_mnist")
    assert recipe.batch_size == 50 and recipe.schedule == "cosine"


def test_bad_vit_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        models.build({"arch": "vit", "embed_dim": 30, "num_heads": 4})
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        models.build({"arch": "convnext", "depth": 0})


def test_zoo_trains_and_caches_a_tiny_vit(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    kwargs = {"epochs": 1, "seed": 0, "train_subset": 64, "cache_dir": tmp_path}
    first = zoo.trained({"arch": "vit", "embed_dim": 16, "depth": 1, "num_heads": 2}, "fashion_mnist", **kwargs)
    assert len(list(tmp_path.glob("vit-fashion_mnist-s0-*.pt"))) == 1
    again = zoo.trained({"arch": "vit", "embed_dim": 16, "depth": 1, "num_heads": 2}, "fashion_mnist", **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), again.state_dict().values()))


def _jitter(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_heads_false_matches_attention_dimensions_as_independent_units():
    torch.manual_seed(0)
    model, x = _jitter(models.build({**TINY["vit"], "depth": 2})), images(8)
    heads, units = permutation_spec(model, x), permutation_spec(model, x, heads=False)
    assert list(heads.groups) == list(units.groups)
    structured = [g for g, grp in heads.groups.items() if grp.heads > 1]
    assert structured and heads.head_sets()
    assert all(grp.heads == 1 and grp.head_set is None for grp in units.groups.values()) and not units.head_sets()
    assert all(heads.groups[g].entries == units.groups[g].entries for g in heads.groups)
    with torch.no_grad():
        out = model(x)
        kept = permute(model, random_permutations(heads, seed=1), heads)(x)
        mixed = permute(model, random_permutations(units, seed=1), units)(x)
    scale = float(out.abs().max())
    assert float((kept - out).abs().max()) < 1e-4 * scale  # heads moved as heads: the same function
    assert float((mixed - out).abs().max()) > 1e-2 * scale  # dimensions moved across heads: another one
