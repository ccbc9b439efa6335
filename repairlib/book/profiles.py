"""Scale profiles (smoke, cpu, paper) and each section's settings, read by the notebooks."""

from __future__ import annotations

import copy

PROFILES = ("smoke", "cpu", "paper")

# section id -> notebook file stem (notebooks/<stem>.ipynb), in reading order
NOTEBOOKS = {
    "quickstart": "00_quickstart",
    "3": "03_variance_collapse",
    "4": "04_repair",
    "5.1": "05_1_normalization",
    "5.2": "05_2_imagenet_resnets",
    "5.3": "05_3_width_depth",
    "5.4": "05_4_split_data",
    "C": "C_no_alignment",
    "many": "D_merge_many",
    "transformers": "E_transformers",
}
SECTIONS = tuple(NOTEBOOKS)

# --------------------------------------------------------------------------------------------------
# Scale profiles: one dict per profile, {"common": {...}, section: {...}}; a section's settings are
# common | section. Model entries are repairlib.models.build() configs; "<family>_dataset",
# "<family>_epochs" and "<family>_train_subset" go with "<family>" (e.g. "mlp", "conv"). Every profile
# has the same keys per section (tested). Retune freely: the notebooks read their scale from here only.
# --------------------------------------------------------------------------------------------------

FM = "fashion_mnist"
MLP10 = {"arch": "mlp", "depth": 10, "width": 512}  # the paper's 10-layer MLP (sections 4, 5.3)
RESNET20_BN = {"arch": "resnet20", "width": 1, "norm": "bn"}

SMOKE = {
    "common": {"seeds": (0, 1), "stats_examples": 128, "eval_examples": 128, "alphas": (0.0, 0.5, 1.0),
               "device": None, "train_bf16": False, "recipe_overrides": {}},
    "quickstart": {"dataset": FM, "model": {"arch": "mlp", "depth": 10, "width": 16}, "epochs": 1,
                   "train_subset": 256},
    "3": {
        "mlp_dataset": FM, "mlp": {"arch": "mlp", "depth": 10, "width": 16}, "mlp_epochs": 1,
        "mlp_train_subset": 256,
        "conv_dataset": FM, "conv": RESNET20_BN, "conv_epochs": 1, "conv_train_subset": 128, "alpha": 0.5,
        "conv_batch_size": None, "conv_lr": None, "depths": (2, 4), "depth_width": 16,
    },
    "4": {
        "mlp_dataset": FM, "mlp": {"arch": "mlp", "depth": 10, "width": 16}, "mlp_epochs": 1,
        "mlp_train_subset": 256, "depths": (2, 4), "depth_width": 16,
        "conv_dataset": FM, "conv": RESNET20_BN, "conv_epochs": 1, "conv_train_subset": 128,
        "conv_batch_size": None, "conv_lr": None, "conv_alphas": (0.0, 0.5, 1.0), "conv_widths": (0.5, 1),
    },
    "5.1": {"dataset": FM, "norms": ("bn", "ln", "fixup"), "widths": (1,), "curve_width": 1, "epochs": 1,
            "train_subset": 128, "batch_size": None, "lr": None, "norm_recipes": {}, "alphas": (0.5,)},
    "5.2": {"dataset": FM, "models": ({"arch": "tv_resnet18"},), "epochs": 1, "train_subset": 128,
            "batch_size": None, "lr": None, "scopes": ("conv", "all"), "alphas": (0.5,)},
    "5.3": {
        "datasets": (FM,), "mlp_depth": 10, "mlp_widths": (8, 16), "mlp_epochs": 1, "mlp_train_subset": 256,
        "resnet_widths": (1,), "resnet_norm": "bn", "resnet_epochs": 1, "resnet_train_subset": 128,
        "resnet_batch_size": None, "resnet_lr": None,
        "vgg_dataset": FM, "vgg_depths": (11,), "vgg_width": 1, "vgg_epochs": 1, "vgg_train_subset": 128,
        "vgg_batch_size": None, "vgg_lr": None, "vgg_grad_clip": None, "vgg_narrow_width": 0.5,
    },
    "5.4": {"dataset": FM, "model": RESNET20_BN, "epochs": 1, "train_subset": 128, "batch_size": None, "lr": None,
            "major": 0.8},
    "C": {
        "mlp_dataset": FM, "mlp": {"arch": "mlp", "depth": 10, "width": 16}, "mlp_epochs": 1,
        "mlp_train_subset": 256,
        "conv_dataset": FM, "conv": RESNET20_BN, "conv_epochs": 1, "conv_train_subset": 128,
        "conv_batch_size": None, "conv_lr": None, "conv_alphas": (0.0, 0.5, 1.0),
    },
    "many": {  # merging N networks: N in sizes (seeds 0..max(sizes)-1), then a pair per architecture. A tiny
        # MLP stands in for the VGG16 here: a VGG16 weight matching alone takes over a minute on one core
        "sizes": (2, 3), "seeds": (0, 1, 2), "mlp_dataset": FM, "mlp": {"arch": "mlp", "depth": 10, "width": 16},
        "mlp_epochs": 1, "mlp_train_subset": 256,
        "conv_dataset": FM, "conv": RESNET20_BN, "conv_epochs": 1, "conv_train_subset": 128,
        "conv_batch_size": None, "conv_lr": None,
        "vgg_dataset": FM, "vgg": {"arch": "mlp", "depth": 3, "width": 16}, "vgg_epochs": 1, "vgg_train_subset": 256,
        "vgg_batch_size": None, "vgg_lr": None, "panel_examples": 128, "panel_stats_examples": 128,
    },
    "transformers": {  # beyond the paper: a ViT pair and a ConvNeXt pair (repairlib.models.vit / convnext)
        "vit_dataset": FM, "vit": {"arch": "vit", "embed_dim": 16, "depth": 1, "num_heads": 2}, "vit_epochs": 1,
        "vit_train_subset": 128, "vit_batch_size": None, "vit_lr": None,
        "convnext_dataset": FM, "convnext": {"arch": "convnext", "width": 8, "depth": 1}, "convnext_epochs": 1,
        "convnext_train_subset": 128, "convnext_batch_size": None, "convnext_lr": None,
    },
}

# cpu: the sections share checkpoints wherever the paper's grids overlap (same config, data set,
# epochs, subset and seed -> one zoo entry): the 10x512 MLP pair (quickstart, 3, 4, 5.3, C) and the
# ResNet20 BatchNorm networks (3, 4, 5.1, 5.3, C, many). Every network trains on all 60,000 training
# images, under bf16 autocast on CPUs with AMX or AVX512-BF16. Measured cold training cost: benchmarks/README.md
# (bench_book).
# the 10x512 MLP: six epochs (batch 2,000), 88.8% test accuracy in 116 CPU s on an AVX2 CPU (train_recipes.py)
CPU_MLP = {"mlp_dataset": FM, "mlp": MLP10, "mlp_epochs": 6, "mlp_train_subset": None}
ALPHAS11 = tuple(i / 10 for i in range(11))
# ResNet20s: three epochs of all 60,000 images, batch 100 (1,800 SGD steps), no augmentation, label smoothing
# 0.1: 92.7% test accuracy for a BatchNorm x1 (fp32, 887 CPU s on an AVX2 CPU; under bf16 autocast on an
# AVX512-BF16 CPU 92.4-92.5% over four seeds, benchmarks/README.md "bf16 and channels_last"), Fixup 91.5%,
# LayerNorm 89.4% (benchmarks/train_recipes.py).
# Sections 3, 4, 5.1-5.4, C and many share them.
CPU_RESNET20 = {"epochs": 3, "train_subset": None, "batch_size": 100, "lr": 0.08}
# sections 3, 4, C: the same ResNet20 pair as 5.1-5.4 (one zoo entry per seed)
# Statistics and test images per measurement. Each merged network costs a pass over both (the evaluation
# cache keeps the test passes of a warm build). 500 images give every conv channel 24k-392k samples; all
# 10,000 test images give an accuracy a standard error of about 0.3 points (each page's box shows the
# bootstrap interval).
CPU_EXAMPLES = {"stats_examples": 500, "eval_examples": None}
CPU_DEPTHS = {"depths": (2, 4, 6, 8, 12, 16, 24), "depth_width": 64}  # MLP depth sweep of pages 3 and 4
CPU_CONV = {"conv_dataset": FM, "conv": RESNET20_BN, **{f"conv_{k}": v for k, v in CPU_RESNET20.items()}}
CPU_VIT = {"arch": "vit", "embed_dim": 48, "depth": 3, "num_heads": 4, "mlp_ratio": 2, "patch_size": 7}
CPU_CONVNEXT = {"arch": "convnext", "width": 16, "depth": 1}
CPU = {
    # train_bf16 "auto": the networks train under bf16 autocast where the device has it in hardware (train.
    # native_bf16: AMX or AVX512-BF16 CPUs, Ampere+ GPUs), in fp32 elsewhere. On an AMX CPU it halved the
    # training time at the same accuracy (benchmarks/train_recipes.py: ResNet20 1 epoch 82.9% in 108 CPU s
    # against 83.6% in 195 s in fp32; the 10x512 MLP 83.4% against 83.3%); on an AVX512-BF16 EPYC a ResNet20
    # x1 SGD step with channels_last is 1.82x faster than fp32, an MLP step 4.1x (bench_precision.py); on an
    # AVX2-only CPU bf16 is emulated and several times slower than fp32. The zoo keys record which one a
    # network got.
    # recipe_overrides: every network of the profile trains without augmentation and with label smoothing
    # 0.1 (benchmarks/README.md, "Training recipes"): in a run of a few epochs augmentation costs accuracy
    # (a ResNet20 x1, one epoch: 83.6% with Table 1's, 88.6% without, 89.8% with smoothing too).
    "common": {"seeds": (0, 1), "stats_examples": 1000, "eval_examples": None,
               "alphas": (0.0, 0.25, 0.5, 0.75, 1.0), "device": None, "train_bf16": "auto",
               "recipe_overrides": {"augment": "", "label_smoothing": 0.1}},
    "quickstart": {"dataset": FM, "model": MLP10, "epochs": CPU_MLP["mlp_epochs"],
                   "train_subset": CPU_MLP["mlp_train_subset"], "alphas": ALPHAS11},
    # 3's cause test of Fig. 2 left reads the last-layer collapse of 4's depth-sweep MLPs (one zoo entry each)
    "3": {**CPU_MLP, **CPU_CONV, "alpha": 0.5, **CPU_DEPTHS, **CPU_EXAMPLES},
    "4": {**CPU_MLP, **CPU_DEPTHS, **CPU_CONV, "conv_widths": (0.25, 0.5, 1), "alphas": ALPHAS11,
          "conv_alphas": (0.0, 0.25, 0.5, 0.75, 1.0),  # conv curves cost a pass per alpha: fewer points
          **CPU_EXAMPLES},
    # 5.1 and 5.3: widths x0.25, x0.5, x1 (4/8/16 to 16/32/64 channels; a x2 step costs 2.15x a x1's, a
    # x0.25 0.42x, benchmarks/README.md), shared by the two sections. LayerNorm and Fixup ResNet20s train at the BatchNorm lr 0.08 with their gradient norm
    # clipped at 1: without the clip Fixup diverges at 0.08, and at 0.02 one Fixup x0.25 seed of four
    # collapsed to chance after a gradient spike (8.9%); with it that seed reaches 60.1%, a Fixup x1 75.5%
    # (70.7% at lr 0.02 unclipped) and a LayerNorm x1 75.2% (73.7% at lr 0.04), seed 0, 2026-12-01.
    "5.1": {"dataset": FM, "norms": ("bn", "ln", "fixup"), "widths": (0.25, 0.5, 1), "curve_width": 1, **CPU_RESNET20,
            "norm_recipes": {"ln": {"grad_clip": 1.0}, "fixup": {"grad_clip": 1.0}}, **CPU_EXAMPLES},
    # torchvision ResNet18 and ResNet50, one epoch of all 60,000 images at batch 100, lr 0.015. Seed 0,
    # bf16, one thread, 2026-12-03: ResNet50 83.4% (loss 0.50) in 303 CPU s at lr 0.015, 81.5% at 0.03,
    # 73.3% at 0.1, 70.0% at 0.2; ResNet18 88.5% in 112 s at lr 0.03, 87.3% at 0.1 (88.2% in two epochs).
    # The ResNet50 is the page's main network (the paper's Fig. 2 right, 5 left, 9, 11 left).
    # Statistics from 2,500 training images: at 28 px a ResNet50's layer4 maps are 1x1, so its 2,048-unit
    # groups see one sample per image, and activation matching needs more samples than units to fix a
    # permutation (alignment.undetermined_groups; 500 images left 3-6 layer4 groups undetermined).
    "5.2": {"dataset": FM, "models": ({"arch": "tv_resnet18"}, {"arch": "tv_resnet50"}), "epochs": 1,
            "train_subset": None, "batch_size": 100, "lr": 0.015, "scopes": ("conv", "all"), **CPU_EXAMPLES,
            "stats_examples": 2500},
    "5.3": {
        "datasets": (FM,), "mlp_depth": 10, "mlp_widths": (32, 64, 128, 256, 512),
        "mlp_epochs": CPU_MLP["mlp_epochs"], "mlp_train_subset": CPU_MLP["mlp_train_subset"],
        "resnet_widths": (0.25, 0.5, 1), "resnet_norm": "bn", **{f"resnet_{k}": v for k, v in CPU_RESNET20.items()},
        # VGGs at a quarter width (16-128 channels), one epoch of all 60,000 images: a VGG11 x1 (64-512)
        # costs ~16x the CPU time, so all four depths fit only narrow. These VGGs have no normalisation:
        # unclipped, a gradient spike in the first ~50 steps left some seeds dead at chance (at lr 0.04 a
        # VGG16 and a VGG19 of four seeds, at 0.02 still a VGG16); with the gradient norm clipped at 1
        # that VGG16 seed reaches 81.0% at lr 0.04 (measured 2026-12-01).
        "vgg_dataset": FM, "vgg_depths": (11, 13, 16, 19), "vgg_width": 0.25, "vgg_epochs": 1,
        "vgg_train_subset": None, "vgg_batch_size": 100, "vgg_lr": 0.04, "vgg_grad_clip": 1.0,
        "vgg_narrow_width": 0.125,  # the cause test of Fig. 6 right: VGGs at half the sweep's width
        **CPU_EXAMPLES,
    },
    "5.4": {"dataset": FM, "model": RESNET20_BN, **CPU_RESNET20, "major": 0.8, "alphas": ALPHAS11, **CPU_EXAMPLES},
    "C": {**CPU_MLP, **CPU_CONV, "alphas": ALPHAS11, "conv_alphas": (0.0, 0.25, 0.5, 0.75, 1.0), **CPU_EXAMPLES},
    # merging N networks: the MLPs and ResNet20s of the other sections (seeds 0-7, so seeds 0 and 1 are
    # shared), the N-sweep evaluated on all 10,000 test images. The correction panel's VGG16 (width 1, the
    # narrowest models.vgg builds) is trained like 5.3's VGGs and measured on fewer images: a VGG16 pass
    # costs ~7 ResNet20 passes and its weight matching ~1 minute.
    "many": {"sizes": (2, 4, 8), "seeds": tuple(range(8)), **CPU_MLP, **CPU_CONV, "stats_examples": 500,
             "eval_examples": None, "vgg_dataset": FM, "vgg": {"arch": "vgg", "depth": 16, "width": 1},
             "vgg_epochs": 2, "vgg_train_subset": 2000, "vgg_batch_size": 100, "vgg_lr": 0.04,
             "panel_examples": None, "panel_stats_examples": 250},
    # beyond the paper: two small timm ViTs (embedding 48, 3 blocks of 4 heads, 7 px patches) and two ConvNeXts
    # (16-128 channels, one block per stage), SGD recipes of repairlib.train ("vit", "convnext")
    "transformers": {
        "vit_dataset": FM, "vit": CPU_VIT, "vit_epochs": 4, "vit_train_subset": 8000, "vit_batch_size": None,
        "vit_lr": None, "convnext_dataset": FM, "convnext": CPU_CONVNEXT, "convnext_epochs": 2,
        "convnext_train_subset": 6000, "convnext_batch_size": None, "convnext_lr": None,
        "stats_examples": 500, "eval_examples": None,
        # their own recipes (no augmentation already), without label smoothing: with it one ConvNeXt of the
        # four (seed 0) stayed at chance (10.0% test accuracy; 71.0% without, 2026-12-02)
        "recipe_overrides": {},
    },
}

# paper: data sets, widths and Table 1 epochs (MLP 100, VGG 100, ResNet20 200, ResNet50/ImageNet 300).
PAPER = {
    "common": {"seeds": (0, 1), "stats_examples": 5000, "eval_examples": None,
               "alphas": tuple(i / 20 for i in range(21)), "device": None, "train_bf16": False,
               "recipe_overrides": {}},
    "quickstart": {"dataset": "mnist", "model": MLP10, "epochs": 100, "train_subset": None},
    "3": {  # Fig. 2: 35-layer MLP on MNIST, VGG11 on CIFAR-10 (ResNet50 on ImageNet lives in 5.2)
        "mlp_dataset": "mnist", "mlp": {"arch": "mlp", "depth": 35, "width": 512}, "mlp_epochs": 100,
        "mlp_train_subset": None,
        "conv_dataset": "cifar10", "conv": {"arch": "vgg", "depth": 11, "width": 1}, "conv_epochs": 100,
        "conv_train_subset": None, "conv_batch_size": None, "conv_lr": None, "alpha": 0.5,
        "depths": (2, 4, 6, 8, 10, 15, 20, 27, 35, 50), "depth_width": 512,  # 4's sweep: Fig. 3 right
    },
    "4": {  # Fig. 3: ResNet18 on CIFAR-10 (channel stats, curves); MLP depth sweep 2..50 on MNIST
        "mlp_dataset": "mnist", "mlp": MLP10, "mlp_epochs": 100, "mlp_train_subset": None,
        "depths": (2, 4, 6, 8, 10, 15, 20, 27, 35, 50), "depth_width": 512,
        "conv_dataset": "cifar10", "conv": {"arch": "resnet18", "width": 1, "norm": "bn"}, "conv_epochs": 200,
        "conv_train_subset": None, "conv_batch_size": None, "conv_lr": None,
        "conv_alphas": tuple(i / 20 for i in range(21)), "conv_widths": (0.5, 1),
    },
    "5.1": {"dataset": "cifar10", "norms": ("bn", "ln", "fixup"), "widths": (1, 2, 4, 8, 16), "curve_width": 8,
            "epochs": 200, "train_subset": None, "batch_size": None, "lr": None, "norm_recipes": {}},
    "5.2": {"dataset": "imagenet", "models": ({"arch": "tv_resnet18"}, {"arch": "tv_resnet50"}), "epochs": 300,
            "train_subset": None, "batch_size": None, "lr": None, "scopes": ("conv", "all"), "alphas": ALPHAS11},
    "5.3": {
        "datasets": ("mnist", "fashion_mnist", "svhn", "cifar10"), "mlp_depth": 10,
        "mlp_widths": (32, 64, 128, 256, 512, 1024, 2048), "mlp_epochs": 100, "mlp_train_subset": None,
        "resnet_widths": (1, 2, 4, 8, 16), "resnet_norm": "bn", "resnet_epochs": 200, "resnet_train_subset": None,
        "resnet_batch_size": None, "resnet_lr": None,
        "vgg_dataset": "cifar10", "vgg_depths": (11, 13, 16, 19), "vgg_width": 1, "vgg_epochs": 100,
        "vgg_train_subset": None, "vgg_batch_size": None, "vgg_lr": None, "vgg_grad_clip": None, "vgg_narrow_width": 0.5,
    },
    "5.4": {  # Ainsworth et al.'s split: 80% of classes 0-49 + 20% of 50-99, and the reverse
        "dataset": "cifar100", "model": {"arch": "resnet20", "width": 4, "norm": "bn"}, "epochs": 200,
        "train_subset": None, "batch_size": None, "lr": None, "major": 0.8,
    },
    "C": {
        "mlp_dataset": "mnist", "mlp": MLP10, "mlp_epochs": 100, "mlp_train_subset": None,
        "conv_dataset": "cifar10", "conv": {"arch": "resnet20", "width": 4, "norm": "bn"}, "conv_epochs": 200,
        "conv_train_subset": None, "conv_batch_size": None, "conv_lr": None,
        "conv_alphas": tuple(i / 20 for i in range(21)),
    },
    "many": {  # the MLP and ResNet20 x4 of appendix C; VGG16 on CIFAR-10 as in the rescale follow-up
        "sizes": (2, 4, 8), "seeds": tuple(range(8)), "mlp_dataset": "mnist", "mlp": MLP10, "mlp_epochs": 100,
        "mlp_train_subset": None,
        "conv_dataset": "cifar10", "conv": {"arch": "resnet20", "width": 4, "norm": "bn"}, "conv_epochs": 200,
        "conv_train_subset": None, "conv_batch_size": None, "conv_lr": None,
        "vgg_dataset": "cifar10", "vgg": {"arch": "vgg", "depth": 16, "width": 1}, "vgg_epochs": 100,
        "vgg_train_subset": None, "vgg_batch_size": None, "vgg_lr": None, "panel_examples": None,
        "panel_stats_examples": 5000,
    },
    "transformers": {  # beyond the paper (not run by the book): wider ViTs and ConvNeXts on all of CIFAR-10
        "vit_dataset": "cifar10",
        "vit": {"arch": "vit", "embed_dim": 192, "depth": 6, "num_heads": 6, "mlp_ratio": 4, "patch_size": 4,
                "image_size": 32},
        "vit_epochs": 100, "vit_train_subset": None, "vit_batch_size": None, "vit_lr": None,
        "convnext_dataset": "cifar10", "convnext": {"arch": "convnext", "width": 48, "depth": 2},
        "convnext_epochs": 100, "convnext_train_subset": None, "convnext_batch_size": None, "convnext_lr": None,
    },
}

# seed_pairs: the independent pairs behind every measurement of the section pages (the paper's and the
# transformer page) and their "Does it match the paper?" boxes (repairlib.book.evidence.seed_pairs); their
# figures show the first pair.
PAIRED_SECTIONS = ("3", "4", "5.1", "5.2", "5.3", "5.4", "C", "transformers")
for _table, _pairs in ((SMOKE, ((0, 1),)), (CPU, ((0, 1), (2, 3))), (PAPER, ((0, 1), (2, 3)))):
    for _section in PAIRED_SECTIONS:
        _table[_section]["seed_pairs"] = _pairs
del _table, _pairs, _section

_PROFILE_TABLES = {"smoke": SMOKE, "cpu": CPU, "paper": PAPER}


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    return profile


def check_section(section) -> str:
    section = str(section)
    if section not in NOTEBOOKS:
        raise ValueError(f"unknown section {section!r}; valid sections: {', '.join(SECTIONS)}")
    return section


def settings(profile: str, section: str, **overrides) -> dict:
    """The experiment scale of ``section`` at ``profile``: ``common | section`` of the profile's dict.

    ``overrides`` replace single settings; an override of ``None`` keeps the profile's value (so a
    notebook passes its ``None``-defaulting parameters straight through). A name the section does not
    have is a ``ValueError`` listing the valid ones. Returns a fresh dict (safe to modify).
    """
    table = _PROFILE_TABLES[check_profile(profile)]
    section = check_section(section)
    result = copy.deepcopy({**table["common"], **table[section]})
    unknown = sorted(set(overrides) - set(result))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(map(repr, unknown))} for section {section}; "
            f"valid settings: {', '.join(sorted(result))}"
        )
    result.update({k: v for k, v in overrides.items() if v is not None})
    if profile == "smoke":
        show_smoke_banner()
    return result


SMOKE_BANNER = ("**Smoke profile: the numbers on this page are not results.** The smoke profile runs every code "
                "path on a few hundred images for one epoch, in seconds; accuracies, barriers and reductions "
                "(even \"-100%\") mean nothing here. Run the `cpu` profile for the book's results.")


def show_smoke_banner() -> None:
    """Display :data:`SMOKE_BANNER` when running inside a notebook kernel (nothing elsewhere)."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        return
    if get_ipython() is not None and getattr(get_ipython(), "kernel", None) is not None:
        display(Markdown(SMOKE_BANNER))


RECIPE_OVERRIDES = ("augment", "label_smoothing", "ema")


def recipe_overrides(cfg: dict, family: str | None = None) -> dict:
    """The training-recipe fields a section's settings ``cfg`` set for every network of the profile
    (``cfg["recipe_overrides"]``, a dict of :data:`RECIPE_OVERRIDES`), with ``cfg["<family>_<field>"]``
    over them where a family sets its own; keyword arguments for :func:`repairlib.zoo.trained`. A field
    outside :data:`RECIPE_OVERRIDES` is a ``ValueError``."""
    overrides = dict(cfg.get("recipe_overrides") or {})
    unknown = sorted(set(overrides) - set(RECIPE_OVERRIDES))
    if unknown:
        raise ValueError(f"recipe_overrides: unknown field(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(RECIPE_OVERRIDES)}")
    if family is not None:
        overrides.update({k: cfg[f"{family}_{k}"] for k in RECIPE_OVERRIDES if cfg.get(f"{family}_{k}") is not None})
    return overrides


def trained_pair(cfg: dict, family: str, config: dict | None = None) -> list:
    """The two networks of ``family`` (e.g. "mlp", "conv") that a section's settings ``cfg`` describe, one
    per seed in ``cfg["seeds"]``, from the checkpoint zoo: ``config`` (default ``cfg[family]``) trained on
    ``cfg["<family>_dataset"]`` with its ``_epochs``, ``_train_subset``, ``_batch_size``, ``_lr``,
    ``_grad_clip`` and :func:`recipe_overrides` (where the profile sets them), under bf16 autocast as
    ``cfg["train_bf16"]`` says (True, False or "auto")."""
    from repairlib import zoo

    config = config or cfg[family]
    return [zoo.trained(config, cfg[f"{family}_dataset"], epochs=cfg[f"{family}_epochs"], seed=seed,
                        train_subset=cfg[f"{family}_train_subset"], batch_size=cfg.get(f"{family}_batch_size"),
                        lr=cfg.get(f"{family}_lr"), grad_clip=cfg.get(f"{family}_grad_clip"),
                        **recipe_overrides(cfg, family), bf16=cfg["train_bf16"], device=cfg["device"])
            for seed in cfg["seeds"]]


def loaders(cfg: dict, family: str) -> tuple:
    """``(train, test)`` loaders of ``cfg["<family>_dataset"]``: ``cfg["stats_examples"]`` training images
    (alignment and REPAIR statistics) and ``cfg["eval_examples"]`` test images (None: all of them)."""
    from repairlib import data

    dataset = cfg[f"{family}_dataset"]
    return (data.loader(dataset, "train", subset=cfg["stats_examples"], device=cfg["device"]),
            data.loader(dataset, "test", subset=cfg["eval_examples"], device=cfg["device"]))


def aligned_pair(cfg: dict, family: str, train, config: dict | None = None) -> dict:
    """The pair of :func:`trained_pair` with B aligned to A by activation matching on ``train``:
    ``{"a", "b" (as trained), "aligned" (B permuted into A's unit order), "alignment" (the permutations),
    "stats" (REPAIR's endpoint statistics of A and aligned B, gathered in the same pass)}``."""
    import repairlib

    a, b = trained_pair(cfg, family, config)
    alignment = repairlib.align(a, b, train, stats_scope="conv")
    return {"a": a, "b": b, "aligned": repairlib.permute(b, alignment), "alignment": alignment,
            "stats": alignment.endpoint_stats}


def describe(config: dict) -> str:
    """A model config in one line: ``{"arch": "mlp", "depth": 10}`` -> "mlp depth=10"."""
    return " ".join([config["arch"]] + [f"{k}={v}" for k, v in config.items() if k != "arch"])
