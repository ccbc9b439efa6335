"""Training with the paper's recipes (Table 1): SGD with momentum 0.9, per-step learning-rate schedules.

================  =====  ==================  ============  ========================
arch              batch  lr schedule (peak)  weight decay  augmentation
================  =====  ==================  ============  ========================
mlp               2000   linear 0.2          0             translate
vgg               500    cosine 0.08         5e-4          flip+translate
resnet20/18       500    cosine 0.4          1e-4          flip+translate+cutout
tv_resnet (IN)    512    linear 0.5          1e-4          flip+random-resized-crop
vit               50     cosine 0.1          5e-5          none
convnext          50     cosine 0.02         5e-5          none
================  =====  ==================  ============  ========================

The last row is not the paper's: the small timm ViTs and ConvNeXts of the book's transformer page
(``repairlib.models.vit`` / ``convnext``) are usually trained with AdamW, but this trainer is SGD only;
SGD with momentum, a 10% warm-up, a small batch and no augmentation (runs of a few hundred steps)
trains them on a few thousand Fashion-MNIST images in minutes on two CPU cores, to well below their
accuracy under AdamW (the book's transformer page reports the test accuracy reached).

On MNIST and SVHN flip and cutout are dropped (appendix B.1). Every schedule starts with a linear
warm-up over the first 5% of the steps, then decays to zero at the last step of the run.

Two additions to the paper's recipe make short and deep runs work:

* Deep MLPs (the paper goes to 50 hidden layers) are trained with a batch norm after every hidden
  Linear (as in the authors' release), which is then fused into that Linear (``torch.nn.utils.fusion.fuse_linear_bn_eval``), so the
  trained model is a plain MLP of the original architecture. An MLP built with ``init="he"`` is
  trained as it is instead (the paper's plain MLPs; see ``repairlib.models.MLP``).
* After training, BatchNorm running statistics are re-estimated on up to 5,000 un-augmented training
  examples with the final weights ("precise BN"), so short runs do not leave stale running averages.
"""

import contextlib
import itertools
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm.auto import tqdm

from repairlib import data, distributed
from repairlib.batchnorm import reset_bn
from repairlib.models import MLP, arch_of
from repairlib.plumbing import default_device


@dataclass(frozen=True)
class Recipe:
    """One column of Table 1. ``schedule`` is "linear" or "cosine"; ``warmup`` a fraction of all steps;
    ``grad_clip`` a maximum L2 norm of all gradients together per step (``clip_grad_norm_``), None (the
    paper's recipes) for none. ``ema``: the decay ``d`` of an exponential moving average of the weights
    after every SGD step, ``W_ema <- d W_ema + (1 - d) W`` (torch's ``get_ema_multi_avg_fn``), which the
    network ends with (its BatchNorm statistics then re-estimated); None (the paper's recipes) for none."""

    batch_size: int
    lr: float
    schedule: str
    weight_decay: float
    augment: str
    momentum: float = 0.9
    warmup: float = 0.05
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    ema: float | None = None


_RESNET = Recipe(500, 0.4, "cosine", 1e-4, "flip+translate+cutout")
RECIPES = {
    "mlp": Recipe(2000, 0.2, "linear", 0.0, "translate"),
    "vgg": Recipe(500, 0.08, "cosine", 5e-4, "flip+translate"),
    "resnet20": _RESNET,
    "resnet18": _RESNET,
    # ImageNet (torchvision ResNets): the ImageNet loader applies RandomResizedCrop + flip when augmenting
    "tv_resnet": Recipe(512, 0.5, "linear", 1e-4, "flip+translate"),
    # beyond the paper: small timm ViTs and ConvNeXts (models.vit / models.convnext), SGD in place of AdamW
    "vit": Recipe(50, 0.1, "cosine", 5e-5, "", warmup=0.1),
    "convnext": Recipe(50, 0.02, "cosine", 5e-5, "", warmup=0.1),  # at lr 0.1 it does not learn
}
NO_FLIP_OR_CUTOUT = ("mnist", "svhn")  # appendix B.1: digits must not be mirrored or cut out
CALIBRATION_EXAMPLES = 5000


def recipe_for(arch: str, dataset: str, **overrides) -> Recipe:
    """The Table 1 recipe of ``arch`` adapted to ``dataset``; ``overrides`` (e.g. lr=0.1) that are not
    None replace fields. Raises ``ValueError`` for an unknown arch or field."""
    arch = "tv_resnet" if arch.startswith("tv_resnet") else arch
    if arch not in RECIPES:
        raise ValueError(f"no training recipe for arch {arch!r}; valid: {', '.join(RECIPES)}")
    recipe = RECIPES[arch]
    if data.canonical_name(dataset) in NO_FLIP_OR_CUTOUT:
        kept = [op for op in recipe.augment.split("+") if op not in ("flip", "cutout")]
        recipe = replace(recipe, augment="+".join(kept))
    return overridden(recipe, **overrides)


def overridden(recipe: Recipe, **overrides) -> Recipe:
    """``recipe`` with the ``overrides`` that are not None; ``ValueError`` for an unknown field or a
    ``grad_clip`` that is not a positive number."""
    unknown = sorted(set(overrides) - set(asdict(recipe)))
    if unknown:
        raise ValueError(f"unknown recipe field {unknown[0]!r}; valid: {', '.join(asdict(recipe))}")
    for name, valid, what in (("grad_clip", lambda v: v > 0, "a positive number"),
                              ("ema", lambda v: 0 < v < 1, "a decay between 0 and 1 (exclusive)")):
        value = overrides.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not valid(value)):
            raise ValueError(f"{name} must be {what} or None, got {value!r}")
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def lr_factor(step: int, total: int, recipe: Recipe) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) of ``total``: linear warm-up over
    ``recipe.warmup * total`` steps, then linear or cosine decay towards 0 at ``total``."""
    warmup = max(1, round(recipe.warmup * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if recipe.schedule == "linear":
        return 1.0 - progress
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {recipe.schedule!r}; valid: linear, cosine")


class FeatureBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the batch of features ``[B, C] -> [B, C]``, the statistics and parameters of
    ``nn.BatchNorm1d(C)``, computed as a channels_last BatchNorm2d on ``[B, C, 1, 1]``: on the CPU that
    kernel runs several times faster than BatchNorm1d's on ``[B, C]``, which dominates an MLP step."""

    def forward(self, x):
        return super().forward(x[:, :, None, None].contiguous(memory_format=torch.channels_last)).flatten(1)


def with_hidden_batchnorm(model: MLP) -> nn.Sequential:
    """The network trained in place of an MLP: a batch norm after every hidden Linear.

    Shares the Linear modules with ``model``: ``[Flatten, Linear, BN, ReLU, ..., Linear, BN, ReLU, Linear]``.
    """
    layers = []
    for module in model:
        layers.append(module)
        if isinstance(module, nn.Linear) and module is not model[-1]:
            w = module.weight
            layers.append(FeatureBatchNorm(module.out_features, device=w.device, dtype=w.dtype))
    return nn.Sequential(*layers)


@torch.no_grad()
def fuse_hidden_batchnorm(trained: nn.Sequential) -> None:
    """Fold each batch norm of ``trained`` (eval mode) into the Linear before it, in place, so the shared
    Linears alone compute ``bn(linear(x))``: W' = W g / sqrt(v + eps), b' = (b - m) g / sqrt(v + eps) + beta."""
    trained.eval()
    for linear, bn in itertools.pairwise(trained):
        if isinstance(linear, nn.Linear) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
            fused = fuse_linear_bn_eval(linear, bn)
            linear.weight.copy_(fused.weight)
            linear.bias.copy_(fused.bias)


def _train_loader(dataset, recipe, *, seed, root, device, train_subset, indices, augment=True):
    """Training batches with ``drop_last`` (no tiny last batch for BatchNorm); the batch shrinks to the
    data set size when there are fewer examples than one batch."""
    kwargs = {"subset": train_subset, "augment": recipe.augment if augment else False, "root": root,
              "device": device, "shuffle": True, "seed": seed, "indices": indices, "drop_last": True}
    batches = data.loader(dataset, "train", batch_size=recipe.batch_size, **kwargs)
    n = getattr(batches, "num_examples", recipe.batch_size)
    if n < recipe.batch_size:
        batches = data.loader(dataset, "train", batch_size=n, **kwargs)
    return batches


def fit(model: nn.Module, dataset: str, *, epochs: int, seed: int = 0, device=None, root=None,
        train_subset=None, indices=None, batch_size=None, lr=None, label_smoothing=None, grad_clip=None,
        augment=None, ema=None, recipe=None, bf16=None, progress: bool = True) -> dict:
    """Train ``model`` in place on ``dataset`` with its Table 1 recipe; return
    ``dict(seconds, images_per_second, images_per_cpu_second, train_loss, steps, recipe)``.

    ``recipe``: a :class:`Recipe` or a ``RECIPES`` key (default: from the model's class); ``batch_size``,
    ``lr``, ``label_smoothing``, ``grad_clip``, ``augment`` (a :func:`repairlib.data.loader` augmentation;
    ``""`` for none) and ``ema`` (a weight-averaging decay) override it. ``seed`` fixes data order and
    augmentation, so the same initial weights and seed give identical weights on the CPU. Conv nets train in channels_last memory format (faster on
    CPU and GPU; the model is handed back contiguous) where that is safe (:func:`channels_last_is_safe`).
    ``bf16``: bf16 autocast, by default on CUDA only; ``True`` also on the CPU (faster with AMX, not the
    fp32 default; emulated and slower without, with a warning); ``"auto"`` where the device has it in
    hardware (:func:`native_bf16`).
    ``images_per_second`` (wall clock) and ``images_per_cpu_second`` (CPU time of all of this process's
    threads, less sensitive to other load on a shared machine) count the SGD steps only; ``seconds`` is
    the whole call. The model is left in eval mode on ``device``.

    Under ``torchrun --nproc_per_node=N`` the model trains with ``DistributedDataParallel``: every rank
    draws the same global batch of the recipe's size (same seed, same order and augmentation) and trains
    on its 1/N share, so the weights equal a one-process run's to float rounding (on CUDA BatchNorm is
    synchronised across ranks; on the CPU, where torch has no SyncBatchNorm, each rank normalises its
    share). Every rank ends with the same weights; write files from :func:`repairlib.distributed.is_main`.
    """
    start = time.perf_counter()
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(recipe, Recipe):
        recipe = recipe_for(recipe or arch_of(model), dataset)
    overrides = {"batch_size": batch_size, "lr": lr, "label_smoothing": label_smoothing, "grad_clip": grad_clip,
                 "augment": augment, "ema": ema}
    recipe = overridden(recipe, **overrides)
    device = distributed.join(default_device(device))
    torch.manual_seed(seed)
    batches = _train_loader(dataset, recipe, seed=seed, root=root, device=device,
                            train_subset=train_subset, indices=indices)
    amp = _autocast(device, device.type == "cuda" if bf16 is None else resolve_bf16(bf16, device))
    channels_last = channels_last_is_safe(model, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    net = with_hidden_batchnorm(model) if isinstance(model, MLP) and model.trains_with_batchnorm else model
    with _data_parallel(net, device) as parallel:
        stats = _sgd(parallel, batches, recipe, epochs, amp, channels_last, progress and distributed.is_main(),
                     desc=f"train {type(model).__name__} {dataset}")
    calibration = _train_loader(dataset, recipe, seed=seed, root=root, device=device,
                                train_subset=train_subset, indices=indices, augment=False)
    with amp:
        reset_bn(net, calibration, max_examples=CALIBRATION_EXAMPLES)
    net.eval()
    if net is not model:
        fuse_hidden_batchnorm(net)
    model.to(memory_format=torch.contiguous_format).eval()
    return {**stats, "seconds": time.perf_counter() - start, "recipe": asdict(recipe)}


@contextlib.contextmanager
def _data_parallel(net: nn.Module, device: torch.device):
    """``net`` itself in one process; under torchrun a ``DistributedDataParallel`` around it that shares
    its parameters. On CUDA its BatchNorms are swapped for ``SyncBatchNorm`` (sharing their parameters
    and running statistics) while training, and put back afterwards, so ``net`` keeps its modules."""
    if distributed.world_size() == 1:
        yield net
        return
    originals = {}
    if device.type == "cuda":
        originals = {name: m for name, m in net.named_modules()
                     if name and isinstance(m, nn.modules.batchnorm._BatchNorm)}
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # replaces the children in place
    try:
        yield nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    finally:
        for name, module in originals.items():
            parent, _, child = name.rpartition(".")
            net.get_submodule(parent).add_module(child, module)


def channels_last_is_safe(model: nn.Module, device) -> bool:
    """Whether ``fit`` trains ``model`` in channels_last memory format: every conv net, except on a CPU
    without AVX512 when the net has a strided 1x1 convolution with fewer than 8 input channels. There,
    with torch 2.14's oneDNN on an AVX2-only CPU (AMD EPYC, 1 thread), the weight gradient of such a
    convolution in channels_last corrupts the heap (the process aborts or segfaults; e.g. the 4 -> 8
    channel shortcut of a ResNet20 x0.25); in the contiguous format, or with 8 or more input channels,
    it trains normally. Its layout does not change what the network computes, only the float rounding."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return False
    device = device if isinstance(device, torch.device) else default_device(device)
    if device.type != "cpu" or torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX")):
        return True
    return not any(c.kernel_size == (1, 1) and c.stride != (1, 1) and c.in_channels < 8 for c in convs)


def native_bf16(device=None) -> bool:
    """Whether ``device`` (default: :func:`repairlib.plumbing.default_device`) computes bf16 in hardware: a
    CUDA GPU from Ampere on, or a CPU with AMX or AVX512-BF16. Elsewhere bf16 autocast is emulated: on an
    AVX2-only CPU (AMD EPYC, 2 threads) a ResNet20 x1 evaluation of 10,000 images took 206 s under bf16
    autocast against 15 s in fp32, and a one-epoch training run (1 thread) was unfinished after 520 CPU s
    where fp32 took 320 s."""
    device = device if isinstance(device, torch.device) else default_device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def resolve_bf16(bf16, device=None) -> bool:
    """``bf16`` as a bool: ``"auto"`` is :func:`native_bf16` of ``device``; True and False stay; anything
    else is a ``ValueError``."""
    if bf16 == "auto":
        return native_bf16(device)
    if not isinstance(bf16, bool):
        raise ValueError(f"bf16 must be True, False or 'auto', got {bf16!r}")  # noqa: TRY004 (one error type for settings)
    return bf16


def _autocast(device: torch.device, enabled: bool):
    """A re-enterable bf16 autocast context for ``device`` (a no-op when not ``enabled``). A GPU without
    native bf16 (before Ampere, e.g. Colab's T4) trains in fp32 instead, with a warning; a CPU without
    it trains in bf16 as asked, with a warning that this is emulated and several times slower."""
    if enabled and device.type == "cuda" and not native_bf16(device):
        warnings.warn(f"{torch.cuda.get_device_name(device)} has no native bf16: training in fp32", stacklevel=3)
        enabled = False
    if enabled and device.type == "cpu" and not native_bf16(device):
        warnings.warn("this CPU has no AMX or AVX512-BF16: bf16 autocast is emulated and several times slower "
                      "than fp32 (bf16='auto' picks fp32 here)", stacklevel=3)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _progress_disabled(progress: bool) -> bool:
    """No bar when ``progress`` is False or ``$TQDM_DISABLE`` is set to a true value (read at call time)."""
    return not progress or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false", "no")


def _sgd(net, batches, recipe, epochs, amp, channels_last, progress, desc) -> dict:
    """The training loop: ``epochs`` passes of SGD over ``batches``; returns throughput and last-epoch loss."""
    total = epochs * len(batches)
    optimizer = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, recipe))
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    average = get_ema_multi_avg_fn(recipe.ema) if recipe.ema is not None else None
    weights = [p.detach() for p in net.parameters()]  # views of the parameters, updated in place by SGD
    averaged = [w.clone() for w in weights] if average else None
    net.train()
    images, loop_start, cpu_start = 0, time.perf_counter(), time.process_time()
    bar = tqdm(total=total, desc=desc, unit="step", disable=_progress_disabled(progress))
    for _ in range(epochs):
        epoch_loss = torch.zeros((), device=next(net.parameters()).device)
        for inputs, targets in batches:
            inputs, targets = distributed.shard(inputs), distributed.shard(targets)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with amp:
                loss = criterion(net(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:  # after DDP's all-reduce: every rank clips the same gradients
                nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
            optimizer.step()
            schedule.step()
            if average:
                average(averaged, weights, None)
            epoch_loss += loss.detach().float()
            images += len(inputs)
            bar.update(1)
        train_loss = distributed.mean_over_ranks(epoch_loss.item() / max(1, len(batches)))
        bar.set_postfix(loss=f"{train_loss:.3f}")
        if not math.isfinite(train_loss):
            bar.close()
            raise FloatingPointError(f"training diverged: loss {train_loss} (try a smaller lr)")
    bar.close()
    if averaged:
        torch._foreach_copy_(weights, averaged)
    loop_seconds, cpu_seconds = time.perf_counter() - loop_start, time.process_time() - cpu_start
    images *= distributed.world_size()  # every rank trained on its share of the same global batches
    return {"images_per_second": images / loop_seconds, "images_per_cpu_second": images / max(cpu_seconds, 1e-9),
            "train_loss": train_loss, "steps": total}
