"""The networks of the paper: MLP, VGG, CIFAR ResNet20/ResNet18 (BatchNorm, LayerNorm or Fixup) and
torchvision's ImageNet ResNets; beyond the paper, small timm ViTs and ConvNeXts (arch "vit", "convnext")
for 28 or 32 px images.

Every model maps images ``[B, C, H, W]`` (28 or 32 px) to logits ``[B, num_classes]``, keeps channels on
dim 1, and has no data-dependent Python control flow, so ``torch.fx.symbolic_trace`` sees every layer.
``build({"arch": ..., **kwargs})`` constructs a model from a plain dict (the form stored in checkpoints),
after :func:`check_size` has bounded it: an MLP's depth at most ``MAX_MLP_DEPTH`` and at most
``MAX_PARAMETERS`` (2e9) parameters, counted on the ``meta`` device before any memory is allocated.
"""

import inspect
import math

import torch
from torch import nn

NORMS = {"vgg": (None, "bn"), "resnet": ("bn", "ln", "fixup")}
VGG_CONFIGS = {  # channels of each 3x3 conv at width 1; "M" = 2x2 max pool
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _multiplier(value, what: str):
    """A channel multiplier: a positive int, or a positive float for networks narrower (0.5) or between
    the integer widths (1.5); raises ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number (a channel multiplier), got {value!r}")
    return value


def _channels(base: int, width) -> int:
    """Channels of a layer with ``base`` channels at width 1: ``round(base * width)``, at least 1."""
    return max(1, round(base * width))


def _check_norm(norm, family: str):
    norm = None if isinstance(norm, str) and norm.lower() == "none" else norm
    norm = norm.lower() if isinstance(norm, str) else norm
    if norm not in NORMS[family]:
        raise ValueError(f"unknown norm {norm!r} for {family}; valid: {', '.join(map(str, NORMS[family]))}")
    return norm


MLP_INITS = ("torch", "he")


class MLP(nn.Sequential):
    """Flatten, ``depth`` x [Linear, ReLU], Linear head: ``[B, *] -> [B, num_classes]``.

    ``init`` picks how the MLP is initialised, and with it how ``repairlib.train.fit`` trains it:

    * ``"torch"`` (default): PyTorch's Linear init; ``fit`` trains it with a BatchNorm after every
      hidden Linear and fuses them afterwards, which trains MLPs of any depth (the paper goes to 50).
    * ``"he"``: He (Kaiming normal, fan-in) hidden weights and zero biases; ``fit`` trains the plain
      network, as the paper's MLPs are trained (lower learning rates than Table 1's 0.2 suit it).
    """

    def __init__(self, depth=10, width=512, in_features=784, num_classes=10, init="torch"):
        depth, width = _positive_int(depth, "mlp depth"), _positive_int(width, "mlp width")
        in_features = _positive_int(in_features, "in_features")
        if init not in MLP_INITS:
            raise ValueError(f"unknown mlp init {init!r}; valid: {', '.join(MLP_INITS)}")
        layers, fan_in = [nn.Flatten()], in_features
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        super().__init__(*layers, nn.Linear(fan_in, _positive_int(num_classes, "num_classes")))
        self.init = init
        if init == "he":
            for layer in [m for m in self if isinstance(m, nn.Linear)][:-1]:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    @property
    def trains_with_batchnorm(self) -> bool:
        return self.init == "torch"


def mlp(depth=10, width=512, in_features=784, num_classes=10, init="torch") -> MLP:
    """Multi-layer perceptron with ``depth`` hidden layers of ``width`` units (``init``: see :class:`MLP`)."""
    return MLP(depth, width, in_features, num_classes, init)


class VGG(nn.Module):
    """VGG conv stack for small images, then a global average pool and one Linear head.

    Max pools use ``ceil_mode`` so 28 px inputs (MNIST-like) reach 1x1 like 32 px ones:
    28 -> 14 -> 7 -> 4 -> 2 -> 1. ``features``: ``[B, C, H, W] -> [B, 512*width, 1, 1]``.
    """

    def __init__(self, depth=11, width=1, norm=None, in_channels=3, num_classes=10):
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"unknown vgg depth {depth!r}; valid: {', '.join(map(str, VGG_CONFIGS))}")
        width, norm = _multiplier(width, "vgg width"), _check_norm(norm, "vgg")
        layers, c_in = [], _positive_int(in_channels, "in_channels")
        for item in VGG_CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            c_out = _channels(item, width)
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm is None)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's VGG
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            layers.append(conv)
            layers += [nn.BatchNorm2d(c_out)] if norm == "bn" else []
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, _positive_int(num_classes, "num_classes"))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg(depth=11, width=1, norm=None, in_channels=3, num_classes=10) -> VGG:
    """VGG11/13/16/19 with channels 64*width ... 512*width (rounded; width 0.25: 16 ... 128); ``norm`` None or "bn"."""
    return VGG(depth, width, norm, in_channels, num_classes)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d, LayerNorm over (C, H, W) with per-channel affine (GroupNorm with one group),
    or nothing (Fixup)."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


class Bias(nn.Module):
    """Fixup's scalar bias: ``x + b`` with one learned scalar (zero at init)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x + self.bias


class Scale(nn.Module):
    """Fixup's scalar multiplier: ``x * s`` with one learned scalar (one at init)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class BasicBlock(nn.Module):
    """relu(branch(x) + shortcut(x)); branch = conv3x3-norm-relu-conv3x3-norm.

    With norm "fixup" the norms are replaced by scalar biases before each conv and activation and a
    scalar multiplier at the end of the branch (Zhang et al., 2019). The shortcut is the identity, or a
    1x1 conv (+norm) when the stride or channel count changes. ``[B, c_in, H, W] -> [B, c_out, H/s, W/s]``.
    """

    def __init__(self, c_in, c_out, stride, norm):
        super().__init__()
        fixup = norm == "fixup"
        affine = Bias if fixup else nn.Identity
        self.bias1a, self.bias1b, self.bias2a, self.bias2b = affine(), affine(), affine(), affine()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.norm1 = _norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm_layer(norm, c_out)
        self.scale = Scale() if fixup else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm_layer(norm, c_out))

    def forward(self, x):
        x = self.bias1a(x)
        out = self.relu(self.bias1b(self.norm1(self.conv1(x))))
        out = self.bias2b(self.scale(self.norm2(self.conv2(self.bias2a(out)))))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (no max pool), stages of BasicBlocks, global pool, Linear head.

    ``stages`` = [(channels at width 1, blocks, stride), ...]; ``[B, C, H, W] -> [B, num_classes]``.
    """

    def __init__(self, stages, width=1, norm="bn", in_channels=3, num_classes=10):
        super().__init__()
        width, norm = _multiplier(width, "resnet width"), _check_norm(norm, "resnet")
        c = _channels(stages[0][0], width)
        self.conv1 = nn.Conv2d(_positive_int(in_channels, "in_channels"), c, 3, padding=1, bias=False)
        self.norm1 = _norm_layer(norm, c)
        self.bias1 = Bias() if norm == "fixup" else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        blocks = []
        for channels, count, stride in stages:
            for i in range(count):
                blocks.append(BasicBlock(c, _channels(channels, width), stride if i == 0 else 1, norm))
                c = _channels(channels, width)
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bias2 = Bias() if norm == "fixup" else nn.Identity()
        self.fc = nn.Linear(c, _positive_int(num_classes, "num_classes"))
        if norm == "fixup":
            self._fixup_init(len(blocks))

    @torch.no_grad()
    def _fixup_init(self, num_branches: int, m: int = 2):
        """Fixup: zero the classifier and the last conv of each branch, He-init the first branch conv
        scaled by L^(-1/(2m-2)) (L residual branches of m layers each), and He-init every other conv
        (stem, 1x1 shortcuts): Fixup's "standard method" for the rest. PyTorch's default conv init has
        1/6 of He's variance, and without normalisation the shrinking signal stalls short runs."""
        nn.init.kaiming_normal_(self.conv1.weight, nonlinearity="relu")
        for block in self.layers:
            if isinstance(block.shortcut, nn.Sequential):
                nn.init.kaiming_normal_(block.shortcut[0].weight, nonlinearity="relu")
            nn.init.kaiming_normal_(block.conv1.weight, mode="fan_out", nonlinearity="relu")
            block.conv1.weight.mul_(num_branches ** (-1.0 / (2 * m - 2)))
            nn.init.zeros_(block.conv2.weight)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        x = self.relu(self.bias1(self.norm1(self.conv1(x))))
        x = torch.flatten(self.pool(self.layers(x)), 1)
        return self.fc(self.bias2(x))


def resnet20(width=1, norm="bn", in_channels=3, num_classes=10) -> ResNet:
    """ResNet20: 3 stages x 3 blocks, 16/32/64 x width channels, rounded (about 0.27M parameters at width 1;
    width 0.5: 8/16/32)."""
    return ResNet([(16, 3, 1), (32, 3, 2), (64, 3, 2)], width, norm, in_channels, num_classes)


def resnet18(width=1, norm="bn", in_channels=3, num_classes=10) -> ResNet:
    """CIFAR ResNet18: 3x3 stem, 4 stages x 2 blocks, 64/128/256/512 x width channels."""
    return ResNet([(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)], width, norm, in_channels, num_classes)


def _tv_resnet(name):
    def make(in_channels=3, num_classes=10):
        import torchvision

        model = getattr(torchvision.models, name.removeprefix("tv_"))(num_classes=num_classes)
        if _positive_int(in_channels, "in_channels") != 3:  # e.g. Fashion-MNIST: only the stem's inputs change
            model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        return model

    make.__name__ = name
    make.__doc__ = (f"torchvision.models.{name.removeprefix('tv_')}(num_classes=...), unchanged except that "
                    "in_channels != 3 gives its 7x7 stem convolution that many inputs.")
    return make


def vit(embed_dim=48, depth=3, num_heads=4, mlp_ratio=2, patch_size=7, image_size=28, pool="avg", in_channels=3,
        num_classes=10) -> nn.Module:
    """A small timm ``VisionTransformer`` (pretrained=False): ``patch_size`` patches of an
    ``image_size`` px image (28 px / 7 = 4 x 4 = 16 tokens and a class token), ``depth`` pre-norm blocks
    of ``num_heads``-head attention (fused qkv) and an MLP of ``mlp_ratio * embed_dim`` GELU units,
    learned position embeddings; ``pool`` "avg" reads out the mean of the patch tokens (trains faster
    under SGD than the class token), "token" the class token. No dropout, no layer scale."""
    from timm.models.vision_transformer import VisionTransformer

    for value, what in ((embed_dim, "embed_dim"), (depth, "depth"), (num_heads, "num_heads"),
                        (mlp_ratio, "mlp_ratio"), (patch_size, "patch_size"), (image_size, "image_size")):
        _positive_int(value, what)
    if pool not in ("avg", "token"):
        raise ValueError(f"pool must be 'avg' or 'token', got {pool!r}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} is not a multiple of num_heads={num_heads}")
    return VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=_positive_int(in_channels, "in_channels"),
                             num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             mlp_ratio=mlp_ratio, global_pool=pool)


def convnext(width=16, depth=1, patch_size=1, in_channels=3, num_classes=10) -> nn.Module:
    """A small timm ``ConvNeXt`` (pretrained=False): a ``patch_size`` patchify stem and timm's four stages
    of ``depth`` blocks each (7x7 depthwise conv, channels-last LayerNorm, a 4x inverted MLP with GELU),
    stage ``i`` with ``width * 2**i`` channels and a 2x2 stride-2 downsampling before stages 2-4 (28 px,
    patch 1: 28, 14, 7 and 3 px maps; timm downsamples in stage 1 too when the stem has stride 2, so 28 px
    images admit no patch 2). Layer scale starts at 1 (``ls_init_value=1.0``; timm's 1e-6 suits
    AdamW, under SGD the blocks barely train in a short run)."""
    from timm.models.convnext import ConvNeXt

    for value, what in ((width, "width"), (depth, "depth"), (patch_size, "patch_size")):
        _positive_int(value, what)
    return ConvNeXt(in_chans=_positive_int(in_channels, "in_channels"), num_classes=num_classes,
                    depths=(depth,) * 4, dims=tuple(width * 2 ** i for i in range(4)), patch_size=patch_size,
                    ls_init_value=1.0)

ARCHS = {
    "mlp": mlp,
    "vgg": vgg,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "tv_resnet18": _tv_resnet("tv_resnet18"),
    "tv_resnet50": _tv_resnet("tv_resnet50"),
    "vit": vit,
    "convnext": convnext,
}


def canonical_config(config: dict) -> dict:
    """``config`` with every constructor default filled in, e.g. {"arch": "resnet20"} ->
    {"arch": "resnet20", "width": 1, "norm": "bn", "in_channels": 3, "num_classes": 10}.

    Raises ``ValueError`` for an unknown arch or an argument the constructor does not take.
    """
    if not isinstance(config, dict) or "arch" not in config:
        raise ValueError(f"a model config is a dict with an 'arch' key, got {config!r}")
    arch = config["arch"]
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    kwargs = {k: v for k, v in config.items() if k != "arch"}
    signature = inspect.signature(ARCHS[arch])
    unknown = sorted(set(kwargs) - set(signature.parameters))
    if unknown:
        raise ValueError(f"{arch} takes no argument {unknown[0]!r}; valid: {', '.join(signature.parameters)}")
    bound = signature.bind(**kwargs)
    bound.apply_defaults()
    if isinstance(bound.arguments.get("norm"), str):  # "none" / "BN" -> None / "bn"
        family = "resnet" if arch.startswith("resnet") else arch
        bound.arguments["norm"] = _check_norm(bound.arguments["norm"], family)
    return {"arch": arch, **bound.arguments}


MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32 weights, 5x the paper's largest network (ResNet50 x4)
MAX_MLP_DEPTH = 1000  # hidden layers (the paper goes to 50)


def _construct(config: dict) -> nn.Module:
    return ARCHS[config["arch"]](**{k: v for k, v in config.items() if k != "arch"})


def parameter_count(config: dict) -> int:
    """Parameters of the model ``config`` describes, counted on the ``meta`` device (no memory used)."""
    config = canonical_config(config)
    with torch.device("meta"):
        return sum(p.numel() for p in _construct(config).parameters())


def check_size(config: dict) -> dict:
    """``config`` made canonical, or ``ValueError`` when an MLP is deeper than :data:`MAX_MLP_DEPTH` or
    the model would have more than :data:`MAX_PARAMETERS` parameters; nothing is allocated."""
    config = canonical_config(config)
    depth = config.get("depth")
    if config["arch"] == "mlp" and isinstance(depth, int) and depth > MAX_MLP_DEPTH:
        raise ValueError(f"mlp depth={depth} is above the limit of {MAX_MLP_DEPTH} hidden layers "
                         "(repairlib.models.MAX_MLP_DEPTH)")
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        shown = ", ".join(f"{k}={config[k]}" for k in ("depth", "width") if k in config)
        raise ValueError(f"{config['arch']} with {shown} would have {count:.1e} parameters, above the limit of "
                         f"{MAX_PARAMETERS:.0e} (repairlib.models.MAX_PARAMETERS); choose a smaller width or depth")
    return config


def build(config: dict) -> nn.Module:
    """Construct the model a config dict describes: ``{"arch": "resnet20", "width": 4, "norm": "ln"}``
    (bounded by :func:`check_size` first)."""
    return _construct(check_size(config))


def arch_of(model: nn.Module) -> str:
    """The recipe family of a model built here: "mlp", "vgg", "resnet20" or "resnet18", "tv_resnet", "vit",
    "convnext"."""
    if isinstance(model, MLP):
        return "mlp"
    if isinstance(model, VGG):
        return "vgg"
    if isinstance(model, ResNet):
        return "resnet18" if len(model.layers) == 8 else "resnet20"
    if type(model).__module__.startswith("torchvision.models"):
        return "tv_resnet"
    if type(model).__module__ == "timm.models.vision_transformer":
        return "vit"
    if type(model).__module__ == "timm.models.convnext":
        return "convnext"
    raise ValueError(f"cannot tell the architecture of a {type(model).__name__}; pass recipe= explicitly")
