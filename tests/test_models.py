"""Model constructors: shapes, fx-traceability, parameter counts, Fixup, and bad-input errors."""

import pytest
import torch
import torch.fx
from torch import nn

from repairlib import models

SMALL_IMAGE_CONFIGS = [
    {"arch": "mlp", "depth": 3, "width": 32},
    *({"arch": "vgg", "depth": d} for d in (11, 13, 16, 19)),
    {"arch": "vgg", "depth": 11, "norm": "bn"},
    *({"arch": "resnet20", "norm": n} for n in ("bn", "ln", "fixup")),
    {"arch": "resnet20", "width": 2, "norm": "ln"},
    {"arch": "resnet18"},
]


def _input_args(config, channels, size):
    return {"in_features": channels * size * size} if config["arch"] == "mlp" else {"in_channels": channels}


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("config", SMALL_IMAGE_CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_forward_shape_and_fx_trace(config, channels, size):
    torch.manual_seed(0)
    model = models.build({**config, **_input_args(config, channels, size), "num_classes": 7}).eval()
    x = torch.randn(3, channels, size, size)
    out = model(x)
    assert out.shape == (3, 7)
    traced = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(x), out)


@pytest.mark.parametrize("arch", ["tv_resnet18", "tv_resnet50"])
def test_torchvision_resnets_are_used_as_they_are(arch):
    import torchvision

    model = models.build({"arch": arch, "num_classes": 5}).eval()
    reference = getattr(torchvision.models, arch.removeprefix("tv_"))(num_classes=5)
    assert type(model) is type(reference)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))
    grey = models.build({"arch": arch, "in_channels": 1, "num_classes": 5}).eval()  # Fashion-MNIST at cpu scale
    assert type(grey) is type(reference) and grey.conv1.weight.shape == (64, 1, 7, 7)
    assert {k: v.shape for k, v in grey.state_dict().items() if k != "conv1.weight"} == {
        k: v.shape for k, v in reference.state_dict().items() if k != "conv1.weight"}
    assert grey(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    with pytest.raises(ValueError, match="in_channels"):
        models.build({"arch": arch, "in_channels": 0})


def test_channels_stay_on_dim_1():
    """Every conv / linear output carries its channels on dim 1 (what alignment and REPAIR rely on)."""
    model = models.build({"arch": "resnet20", "in_channels": 1}).eval()
    seen = []

    def check(module, _inputs, output):
        width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        seen.append(output.shape[1] == width)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(check)
    model(torch.randn(2, 1, 28, 28))
    assert len(seen) == 19 + 2 + 1 and all(seen)  # 19 convs... + 2 shortcut convs + the head


def test_parameter_counts():
    r20 = _n_params(models.resnet20())
    assert 0.26e6 < r20 < 0.28e6  # the paper's "ResNet20" at width 1
    assert 3.8 < _n_params(models.resnet20(width=2)) / r20 < 4.1  # parameters grow with width squared
    assert 11.0e6 < _n_params(models.resnet18()) < 11.3e6
    assert 9.0e6 < _n_params(models.vgg(11)) < 9.5e6
    depth, width = 10, 512
    assert _n_params(models.mlp(depth, width)) == (784 * width + width) + (depth - 1) * (width**2 + width) + (
        width * 10 + 10)


def test_resnet20_final_block_has_64_times_width_channels():
    for width in (1, 4):
        model = models.resnet20(width=width)
        assert model.fc.in_features == 64 * width
        assert model.conv1.out_channels == 16 * width


def test_fractional_widths_round_the_channels():
    half = models.resnet20(width=0.5)
    assert half.conv1.out_channels == 8 and half.fc.in_features == 32
    narrow = models.vgg(19, width=0.25, in_channels=1)
    convs = [m.out_channels for m in narrow.features if isinstance(m, nn.Conv2d)]
    assert convs[0] == 16 and convs[-1] == 128 and len(convs) == 16
    assert models.canonical_config({"arch": "vgg", "width": 0.25})["width"] == 0.25


def test_vgg_channels_scale_with_width():
    model = models.vgg(11, width=2, in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512, 512, 1024, 1024, 1024, 1024]
    assert all(c.bias is not None for c in convs)
    assert all(c.bias is None for c in models.vgg(11, norm="bn").modules() if isinstance(c, nn.Conv2d))


def test_fixup_has_no_norm_layers_and_fixup_init():
    model = models.resnet20(norm="fixup")
    norms = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    assert not any(isinstance(m, norms) for m in model.modules())
    assert all(block.conv2.weight.abs().sum() == 0 for block in model.layers)  # last conv of each branch
    assert model.fc.weight.abs().sum() == 0
    scalars = [m for m in model.modules() if isinstance(m, (models.Bias, models.Scale))]
    assert len(scalars) == 9 * 5 + 2 and all(p.numel() == 1 for m in scalars for p in m.parameters())
    # branch weights scaled by L^(-1/(2m-2)) = 9^(-1/2) relative to He (fan_out) init
    w = model.layers[4].conv1.weight
    he_std = (2.0 / (w.shape[0] * 9)) ** 0.5
    assert abs(w.std().item() / (he_std / 3.0) - 1) < 0.1
    out = model(torch.randn(4, 3, 32, 32))
    assert torch.equal(out, torch.zeros_like(out))  # zero classifier at init


def test_layernorm_variant_normalises_over_chw_with_per_channel_affine():
    model = models.resnet20(norm="ln")
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 1 and m.weight.shape == (m.num_channels,) for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_canonical_config_fills_defaults_and_normalises_norm():
    assert models.canonical_config({"arch": "resnet20"}) == models.canonical_config(
        {"arch": "resnet20", "width": 1, "norm": "BN", "in_channels": 3, "num_classes": 10})
    assert models.canonical_config({"arch": "vgg", "norm": "none"})["norm"] is None


@pytest.mark.parametrize("config, match", [
    ({"arch": "transformer"}, "unknown arch 'transformer'; valid: mlp, vgg, resnet20"),
    ({"arch": "mlp", "depth": 0}, "depth must be a positive integer, got 0"),
    ({"arch": "mlp", "width": -3}, "width must be a positive integer, got -3"),
    ({"arch": "resnet20", "width": 0}, "resnet width must be a positive number"),
    ({"arch": "resnet18", "width": float("nan")}, "width must be a positive number"),
    ({"arch": "resnet18", "width": "2"}, "width must be a positive number"),
    ({"arch": "vgg", "depth": 12}, "unknown vgg depth 12; valid: 11, 13, 16, 19"),
    ({"arch": "vgg", "width": 0}, "width must be a positive number"),
    ({"arch": "resnet20", "norm": "group"}, "unknown norm 'group' for resnet; valid: bn, ln, fixup"),
    ({"arch": "vgg", "norm": "ln"}, "unknown norm 'ln' for vgg; valid: None, bn"),
    ({"arch": "resnet20", "depth": 20}, "resnet20 takes no argument 'depth'"),
    ({"width": 2}, "'arch' key"),
])
def test_bad_configs_raise_value_error_naming_the_value(config, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(")):
        models.build(config)


def test_arch_of_names_each_family():
    assert models.arch_of(models.mlp(2, 8)) == "mlp"
    assert models.arch_of(models.vgg(11)) == "vgg"
    assert models.arch_of(models.resnet20()) == "resnet20"
    assert models.arch_of(models.resnet18()) == "resnet18"
    with pytest.raises(ValueError, match="Conv2d"):
        models.arch_of(nn.Conv2d(1, 1, 1))
