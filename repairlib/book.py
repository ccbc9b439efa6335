"""The companion book: scale profiles, provenance, results table and the papermill runner.

Every notebook in ``notebooks/`` starts with a cell tagged ``parameters``::

    profile = os.environ.get("REPAIR_PROFILE", "cpu")
    epochs = None            # any override, None = the profile's value

and reads its experiment grid with ``cfg = settings(profile, "5.1", epochs=epochs)``. ``python -m repairlib
book --profile cpu`` executes every notebook with papermill (which replaces the parameters), writes the
executed copies to ``book/executed/<profile>/`` and builds the book with ``jupyter-book build .``.

Profiles (DESIGN.md, "Scale profiles"):

- ``smoke``: every code path in seconds on 2 CPU cores; the numbers mean nothing (nbval in the tests).
- ``cpu``: real Fashion-MNIST experiments; the whole book (8 notebooks, empty checkpoint zoo) in about
  20 minutes on 2 CPU cores. The book's pages are executed at this profile.
- ``paper``: the paper's data sets, widths and Table 1 epochs, for a GPU with the data at hand.
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
}
SECTIONS = tuple(NOTEBOOKS)

ROOT = Path(__file__).resolve().parents[1]  # the repository (an editable install); see book_root()


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
               "device": None},
    "quickstart": {"dataset": FM, "model": {"arch": "mlp", "depth": 10, "width": 16}, "epochs": 1,
                   "train_subset": 256},
    "3": {
        "mlp_dataset": FM, "mlp": {"arch": "mlp", "depth": 10, "width": 16}, "mlp_epochs": 1,
        "mlp_train_subset": 256,
        "conv_dataset": FM, "conv": RESNET20_BN, "conv_epochs": 1, "conv_train_subset": 128, "alpha": 0.5,
        "conv_batch_size": None, "conv_lr": None,
    },
    "4": {
        "mlp_dataset": FM, "mlp": {"arch": "mlp", "depth": 10, "width": 16}, "mlp_epochs": 1,
        "mlp_train_subset": 256, "depths": (2, 4), "depth_width": 16,
        "conv_dataset": FM, "conv": RESNET20_BN, "conv_epochs": 1, "conv_train_subset": 128,
        "conv_batch_size": None, "conv_lr": None, "conv_alphas": (0.0, 0.5, 1.0),
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
        "vgg_batch_size": None, "vgg_lr": None,
    },
    "5.4": {"dataset": FM, "model": RESNET20_BN, "epochs": 1, "train_subset": 128, "batch_size": None, "lr": None,
            "major": 0.8},
    "C": {
        "mlp_dataset": FM, "mlp": {"arch": "mlp", "depth": 10, "width": 16}, "mlp_epochs": 1,
        "mlp_train_subset": 256,
        "conv_dataset": FM, "conv": RESNET20_BN, "conv_epochs": 1, "conv_train_subset": 128,
        "conv_batch_size": None, "conv_lr": None, "conv_alphas": (0.0, 0.5, 1.0),
    },
}

# cpu: the sections share checkpoints wherever the paper's grids overlap (same config, data set,
# epochs, subset and seed -> one zoo entry): the 10x512 MLP pair (quickstart, 3, 4, 5.3, C) and the
# ResNet20 BN pairs (3, 4, 5.1, 5.3, C). Rough cold training cost on 2 quiet cores: MLP pair (all 60k
# images, 3 epochs: endpoints ~85%) ~2 min, depth sweep ~1 min, ResNet20 BN pair ~1 min, LayerNorm and
# Fixup pairs (8 epochs each) ~5 min, VGG11/13 ~2 min, tv ResNet18 ~1 min, split data ~1 min.
CPU_MLP = {"mlp_dataset": FM, "mlp": MLP10, "mlp_epochs": 3, "mlp_train_subset": None}
ALPHAS11 = tuple(i / 10 for i in range(11))
CPU_RESNET20 = {"epochs": 2, "train_subset": 4000, "batch_size": 100, "lr": 0.08}  # sections 5.1-5.4
# sections 3, 4, C: the same ResNet20 pair as 5.1-5.4 (one zoo entry per seed)
# Statistics and test images per measurement. Each merged network costs a pass over both, so these set
# the warm build's time (<= 3 minutes). 500 images give every conv channel 24k-392k samples; the test
# accuracies they give carry a standard error of about 2 points.
CPU_EXAMPLES = {"stats_examples": 500, "eval_examples": 500}
CPU_CONV = {"conv_dataset": FM, "conv": RESNET20_BN, **{f"conv_{k}": v for k, v in CPU_RESNET20.items()}}
CPU = {
    "common": {"seeds": (0, 1), "stats_examples": 1000, "eval_examples": 1000,
               "alphas": (0.0, 0.25, 0.5, 0.75, 1.0), "device": None},
    "quickstart": {"dataset": FM, "model": MLP10, "epochs": CPU_MLP["mlp_epochs"],
                   "train_subset": CPU_MLP["mlp_train_subset"], "alphas": ALPHAS11},
    "3": {**CPU_MLP, **CPU_CONV, "alpha": 0.5, **CPU_EXAMPLES},
    "4": {**CPU_MLP, "depths": (2, 4, 6, 8, 12, 16, 24), "depth_width": 64, **CPU_CONV, "alphas": ALPHAS11,
          "conv_alphas": (0.0, 0.25, 0.5, 0.75, 1.0),  # conv curves cost a pass per alpha: fewer points
          **CPU_EXAMPLES},
    # 5.1-5.4: ResNets train 80 SGD steps of 100 images (4,000 images x 2 epochs, lr scaled to the batch):
    # about 70% test accuracy on Fashion-MNIST; with Table 1's batch of 500 the same images give 16 steps
    # and 15-45%. Width x2 costs ~4x width x1, so the ResNet20 width sweeps run at the paper profile only.
    # LayerNorm and Fixup ResNet20s learn far slower than BatchNorm ones: 80 steps leave them at 15-35%,
    # and at lr 0.08 Fixup diverges. They get 320 steps at lr 0.04 (LayerNorm, about 68% test accuracy)
    # and 0.02 (Fixup, which diverged at 0.04 for one seed; about 52%).
    "5.1": {"dataset": FM, "norms": ("bn", "ln", "fixup"), "widths": (1,), "curve_width": 1, **CPU_RESNET20,
            "norm_recipes": {"ln": {"epochs": 8, "lr": 0.04}, "fixup": {"epochs": 8, "lr": 0.02}}, **CPU_EXAMPLES},
    "5.2": {"dataset": FM, "models": ({"arch": "tv_resnet18"},), "epochs": 2, "train_subset": 4000,
            "batch_size": 100, "lr": 0.1, "scopes": ("conv", "all"), **CPU_EXAMPLES},
    "5.3": {
        "datasets": (FM,), "mlp_depth": 10, "mlp_widths": (32, 64, 128, 256, 512),
        "mlp_epochs": CPU_MLP["mlp_epochs"], "mlp_train_subset": CPU_MLP["mlp_train_subset"],
        "resnet_widths": (1,), "resnet_norm": "bn", **{f"resnet_{k}": v for k, v in CPU_RESNET20.items()},
        "vgg_dataset": FM, "vgg_depths": (11, 13), "vgg_width": 1, "vgg_epochs": 2, "vgg_train_subset": 2000,
        "vgg_batch_size": 100, "vgg_lr": 0.04, **CPU_EXAMPLES,
    },
    "5.4": {"dataset": FM, "model": RESNET20_BN, **CPU_RESNET20, "major": 0.8, "alphas": ALPHAS11, **CPU_EXAMPLES},
    "C": {**CPU_MLP, **CPU_CONV, "alphas": ALPHAS11, "conv_alphas": (0.0, 0.25, 0.5, 0.75, 1.0), **CPU_EXAMPLES},
}

# paper: data sets, widths and Table 1 epochs (MLP 100, VGG 100, ResNet20 200, ResNet50/ImageNet 300).
PAPER = {
    "common": {"seeds": (0, 1), "stats_examples": 5000, "eval_examples": None,
               "alphas": tuple(i / 20 for i in range(21)), "device": None},
    "quickstart": {"dataset": "mnist", "model": MLP10, "epochs": 100, "train_subset": None},
    "3": {  # Fig. 2: 35-layer MLP on MNIST, VGG11 on CIFAR-10 (ResNet50 on ImageNet lives in 5.2)
        "mlp_dataset": "mnist", "mlp": {"arch": "mlp", "depth": 35, "width": 512}, "mlp_epochs": 100,
        "mlp_train_subset": None,
        "conv_dataset": "cifar10", "conv": {"arch": "vgg", "depth": 11, "width": 1}, "conv_epochs": 100,
        "conv_train_subset": None, "conv_batch_size": None, "conv_lr": None, "alpha": 0.5,
    },
    "4": {  # Fig. 3: ResNet18 on CIFAR-10 (channel stats, curves); MLP depth sweep 2..50 on MNIST
        "mlp_dataset": "mnist", "mlp": MLP10, "mlp_epochs": 100, "mlp_train_subset": None,
        "depths": (2, 4, 6, 8, 10, 15, 20, 27, 35, 50), "depth_width": 512,
        "conv_dataset": "cifar10", "conv": {"arch": "resnet18", "width": 1, "norm": "bn"}, "conv_epochs": 200,
        "conv_train_subset": None, "conv_batch_size": None, "conv_lr": None,
        "conv_alphas": tuple(i / 20 for i in range(21)),
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
        "vgg_train_subset": None, "vgg_batch_size": None, "vgg_lr": None,
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
}

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
    return result



def trained_pair(cfg: dict, family: str, config: dict | None = None) -> list:
    """The two networks of ``family`` (e.g. "mlp", "conv") that a section's settings ``cfg`` describe, one
    per seed in ``cfg["seeds"]``, from the checkpoint zoo: ``config`` (default ``cfg[family]``) trained on
    ``cfg["<family>_dataset"]`` with its ``_epochs``, ``_train_subset``, ``_batch_size`` and ``_lr``."""
    from repairlib import zoo

    config = config or cfg[family]
    return [zoo.trained(config, cfg[f"{family}_dataset"], epochs=cfg[f"{family}_epochs"], seed=seed,
                        train_subset=cfg[f"{family}_train_subset"], batch_size=cfg.get(f"{family}_batch_size"),
                        lr=cfg.get(f"{family}_lr"), device=cfg["device"])
            for seed in cfg["seeds"]]


def describe(config: dict) -> str:
    """A model config in one line: ``{"arch": "mlp", "depth": 10}`` -> "mlp depth=10"."""
    return " ".join([config["arch"]] + [f"{k}={v}" for k, v in config.items() if k != "arch"])

# --------------------------------------------------------------------------------------------------
# Provenance: what every executed page states at its end.
# --------------------------------------------------------------------------------------------------

def git_commit(root: Path = ROOT) -> str:
    """Short commit hash of ``root`` (``+dirty`` when tracked files differ), or "unknown" outside git."""
    try:
        def git(*a):
            return subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!book/executed",
                    ":!book/results")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device=None) -> str:
    """A readable name of the device the experiments run on, e.g. "cuda (NVIDIA H100)" or "cpu (2 cores)"."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    if device == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''}, {os.cpu_count()} cores)"
    return device


def _datasets(params: dict) -> str:
    found = []
    for key, value in params.items():
        if key == "dataset" or key.endswith("_dataset") or key == "datasets":
            for name in ([value] if isinstance(value, str) else list(value or [])):
                if name not in found:
                    found.append(name)
    return ", ".join(found) or "unknown"


def provenance(profile: str, params: dict, start: float | None = None) -> dict:
    """Where a page's numbers come from: profile, data set, device, seeds, commit, date, wall time, versions.

    ``params`` is the section's :func:`settings` dict; ``start`` a ``time.time()`` taken at the top of
    the notebook (wall time is ``None`` without it).
    """
    import torch

    from repairlib import __version__

    return {
        "profile": check_profile(profile),
        "dataset": _datasets(params),
        "device": device_name(params.get("device")),
        "seeds": list(params.get("seeds", [])),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_time_s": None if start is None else round(time.time() - start, 1),
        "torch": torch.__version__,
        "repairlib": __version__,
        "python": platform.python_version(),
    }


def provenance_markdown(info: dict) -> str:
    rows = "\n".join(f"| {k.replace('_', ' ')} | {v} |" for k, v in info.items())
    return "**Provenance of this page**\n\n| what | value |\n|---|---|\n" + rows + "\n"


def show_provenance(profile: str, params: dict, start: float | None = None) -> None:
    """Display the provenance table: the last cell of every notebook, ``show_provenance(profile, cfg, start)``.

    Rendered as a Markdown table in Jupyter and in the book; printed as text elsewhere. Returns nothing
    (so the cell shows the table only); :func:`provenance` gives the dict.
    """
    info = provenance(profile, params, start)
    text = provenance_markdown(info)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is None:
            raise ImportError
        display(Markdown(text))
    except ImportError:
        print(text)


# --------------------------------------------------------------------------------------------------
# Results: the paper's numbers, ours from book/results/<section>_<profile>.json, one Markdown table.
# --------------------------------------------------------------------------------------------------

# (key, setting, section, paper before REPAIR, paper after REPAIR, paper endpoints): DESIGN.md's
# "Numbers to compare against" and the other numbers of the paper's text.
REFERENCE = (
    ("resnet18_cifar10", "ResNet18, CIFAR-10, midpoint accuracy (Fig. 3 middle)", "4",
     "66.0%", "94.1%", "95.5%"),
    ("resnet18_cifar10_barrier", "ResNet18, CIFAR-10, barrier reduction (abstract)", "4", "", "90%", ""),
    ("mlp10_mnist", "MLP 10 layers, MNIST (authors' notebook)", "4",
     "81.18%", "95.46% exact, 94.83% closed form", ""),
    ("mlp_depth_sweep", "MLP depth sweep, MNIST: deepest midpoint >90% (Fig. 3 right)", "4",
     "6 layers", "27 layers", ""),
    ("variance_ratio", "Var(X_0.5) / Var(X_1) of aligned units, corr about 0.4 (Sec. 3.2)", "3",
     "about 0.7", "", ""),
    ("resnet20x8_bn", "ResNet20 x8 BatchNorm, CIFAR-10 (Sec. 5.1)", "5.1", "32.3%", "94.4%", "93.6%"),
    ("resnet20x8_ln", "ResNet20 x8 LayerNorm, CIFAR-10 (Sec. 5.1)", "5.1", "90.3%", "93.2%", "92.4%"),
    ("resnet20_bn_vs_ln", "ResNet20 BN / LN midpoint (Fig. 4 right)", "5.1",
     "34.7% / 88.4%", "92.0% / 92.0%", ""),
    ("resnet20x4_bn_reset", "ResNet20 x4 BN, CIFAR-10, BN reset (authors' notebook)", "5.1",
     "11.69%", "90.31%", "95.42 / 95.12%"),
    ("resnet20x16_loss_barrier", "Loss barrier, ResNet20 x16 BN and LN (Sec. 5.1)", "5.1", "", "< 0.05", ""),
    ("resnet50_imagenet", "ResNet50, ImageNet, midpoint accuracy (Fig. 5 left)", "5.2",
     "< 1%", "53.2% conv only, 56.5% full", "about 76.6%"),
    ("resnet50_imagenet_barrier", "ResNet50, ImageNet, barrier (Sec. 5.2; 74% reduction)", "5.2",
     "76%", "23.4% conv only, 20.1% full", ""),
    ("resnet18_resnet50x2_imagenet", "ResNet18 / ResNet50x2, ImageNet midpoint (Fig. 5 right)", "5.2",
     "< 1%", "41.1% / 64.2%", ""),
    ("resnet50x2_imagenet_barrier", "ResNet50x2, ImageNet, barrier (Sec. 5.2)", "5.2", "", "12.9%", ""),
    ("vgg11_cifar10", "VGG11 x1 no norm, CIFAR-10 (authors' notebook)", "5.3",
     "67.3%", "84.9% (closed form 84.3%)", "89.4 / 89.8%"),
    ("cifar100_split_loss", "CIFAR-100 split data, best test loss (Sec. 5.4)", "5.4",
     "1.73 (Ainsworth et al.)", "1.30 at alpha = 0.3", ""),
)
REFERENCE_KEYS = tuple(row[0] for row in REFERENCE)
RESULTS_BEGIN = "<!-- BEGIN results-table: generated by repairlib.book.write_results_page(), do not edit -->"
RESULTS_END = "<!-- END results-table -->"


def book_root() -> Path:
    """The book's root (the directory holding ``_config.yml``): the repository, else the working dir."""
    return ROOT if (ROOT / "_config.yml").exists() else Path.cwd()


def results_dir() -> Path:
    return Path(os.environ.get("REPAIR_RESULTS") or book_root() / "book" / "results")


def save_results(section: str, profile: str, params: dict, rows: dict, start: float | None = None,
                 directory=None) -> Path | None:
    """Write a notebook's measured numbers to ``<results dir>/<section>_<profile>.json``.

    ``rows`` maps a key of :data:`REFERENCE` to ``{"before": str, "after": str, "endpoints": str,
    "note": str}`` (any subset; "note" says how our setting differs, e.g. "ResNet20 x2, 2 epochs").
    Smoke numbers mean nothing: at the smoke profile nothing is written unless ``directory`` or
    ``$REPAIR_RESULTS`` names a place, and ``None`` is returned.
    """
    section, profile = check_section(section), check_profile(profile)
    unknown = sorted(set(rows) - set(REFERENCE_KEYS))
    if unknown:
        raise ValueError(f"unknown result key(s) {unknown}; valid keys: {', '.join(REFERENCE_KEYS)}")
    if directory is None and profile == "smoke" and not os.environ.get("REPAIR_RESULTS"):
        return None
    directory = Path(directory) if directory is not None else results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{section}_{profile}.json"
    record = {"section": section, "profile": profile, "provenance": provenance(profile, params, start),
              "rows": {k: {f: str(v) for f, v in row.items()} for k, row in rows.items()}}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_results(directory=None, profiles=("cpu", "paper")) -> list:
    """Every results record of ``profiles`` in ``directory`` (default ``book/results``), by file name."""
    directory = Path(directory) if directory is not None else results_dir()
    records = []
    names = {f"{section}_{profile}.json" for section in SECTIONS for profile in PROFILES}
    for path in sorted(p for p in directory.glob("*.json") if p.name in names):
        try:
            record = json.loads(path.read_text())
            ok = isinstance(record.get("rows"), dict) and record.get("profile") in PROFILES
        except (json.JSONDecodeError, AttributeError):
            ok = False
        if not ok:
            raise ValueError(f"{path} is not a results record (see repairlib.book.save_results)")
        if record["profile"] in profiles:
            records.append(record)
    return records


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ") if text not in (None, "") else "–"


def _ours(row: dict) -> str:
    before, after, ends = row.get("before"), row.get("after"), row.get("endpoints")
    text = " → ".join(x for x in (before, after) if x)
    if ends:
        text += f" (endpoints {ends})"
    if row.get("note"):
        text += f"; {row['note']}"
    return text or "–"


def results_table(directory=None, profiles=("cpu", "paper")) -> str:
    """The results page's Markdown table: every number of the paper's text beside ours.

    One line per paper number and per profile that measured it; "pending" where none did yet. Our
    cell reads "before → after (endpoints ...)".
    """
    measured = {}
    for record in load_results(directory, profiles):
        for key, row in record["rows"].items():
            measured.setdefault(key, []).append((record["profile"], record["provenance"].get("dataset"), row))
    header = ("| Setting | Sec. | Paper: before REPAIR | Paper: after REPAIR | Paper: endpoints "
              "| Ours: before → after | Profile | Data set |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for key, setting, section, before, after, ends in REFERENCE:
        paper = f"| {_cell(setting)} | {section} | {_cell(before)} | {_cell(after)} | {_cell(ends)} "
        ours = measured.get(key) or [(None, None, None)]
        for profile, dataset, row in sorted(ours, key=lambda m: PROFILES.index(m[0]) if m[0] else 0):
            if row is None:
                lines.append(paper + "| pending | – | – |")
            else:
                lines.append(paper + f"| {_cell(_ours(row))} | {profile} | {_cell(dataset)} |")
    return "\n".join(lines) + "\n"


QUALITY_FILE = "quality_cpu.json"  # written by benchmarks/quality.py
QUALITY_BEGIN = "<!-- BEGIN quality-table: generated by repairlib.book.write_results_page(), do not edit -->"
QUALITY_END = "<!-- END quality-table -->"
QUALITY_COLUMNS = (("naive", "naive"), ("aligned", "aligned"), ("repair", "aligned + REPAIR"),
                   ("repair_closed_form", "closed form"), ("repair_all", "REPAIR, scope all"),
                   ("reset_bn", "BN reset"))


def quality_table(directory=None) -> str:
    """Markdown table of ``benchmarks/quality.py``'s record (``<results dir>/quality_cpu.json``): per
    family and seed pair, the endpoints' and the midpoints' test accuracy (loss in brackets) and REPAIR's
    cut of the aligned barrier at the midpoint and, where the record has it, of Eq. 1's barrier over
    the whole path ("–" for older records); "not measured yet" when the file is missing."""
    path = (Path(directory) if directory is not None else results_dir()) / QUALITY_FILE
    if not path.exists():
        return "Not measured yet: run `python benchmarks/quality.py`.\n"
    record = json.loads(path.read_text())

    def cell(result):
        return "–" if result is None else f"{100 * result['accuracy']:.1f}% ({result['loss']:.3f})"

    head = ["family", "seeds", "training", "endpoints", *(title for _, title in QUALITY_COLUMNS),
            "REPAIR's cut of the aligned barrier at alpha 0.5 (acc / loss)",
            "the same, Eq. 1's barrier over alpha 0.1..0.9"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in record["results"]:
        training = r.get("training", {})
        subset = training.get("train_subset")
        how = (f"{training.get('epochs')} ep. on {'all 60,000' if subset is None else f'{subset:,}'} images"
               + (f", batch {training['batch_size']}" if training.get("batch_size") else ""))
        ends = f"{cell(r['endpoint_a'])} / {cell(r['endpoint_b'])}"
        cuts = [f"{100 * r[f'reduction_accuracy{k}']:.1f}% / {100 * r[f'reduction_loss{k}']:.1f}%"
                if f"reduction_loss{k}" in r else "–" for k in ("", "_eq1")]
        row = [r["family"], f"{r['seeds'][0]}, {r['seeds'][1]}", how, ends,
               *(cell(r.get(key)) for key, _ in QUALITY_COLUMNS), *cuts]
        lines.append("| " + " | ".join(row) + " |")
    return (f"{record['dataset']}, midpoint alpha = 0.5, test set of {record['test_examples']:,} images, "
            f"REPAIR statistics from {record['stats_examples']:,} training images; {record['device']}, "
            f"{record['date'][:10]}. Accuracy, test loss in brackets.\n\n" + "\n".join(lines) + "\n")


def _replace_block(text: str, begin: str, end: str, body: str, page) -> str:
    if begin not in text or end not in text:
        raise ValueError(f"{page} has no generated-table markers ({begin!r} ... {end!r})")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + begin + "\n\n" + body + "\n" + end + tail


def write_results_page(page=None, directory=None) -> bool:
    """Regenerate the tables of ``book/results.md``: :func:`results_table` and, where the page has its
    markers, :func:`quality_table`. True if the page changed."""
    page = Path(page) if page is not None else book_root() / "book" / "results.md"
    text = page.read_text()
    new = _replace_block(text, RESULTS_BEGIN, RESULTS_END, results_table(directory), page)
    if QUALITY_BEGIN in new:
        new = _replace_block(new, QUALITY_BEGIN, QUALITY_END, quality_table(directory), page)
    if new != text:
        page.write_text(new)
    return new != text


# --------------------------------------------------------------------------------------------------
# The runner: papermill over notebooks/*.ipynb, then jupyter-book.
# --------------------------------------------------------------------------------------------------

def parse_value(text: str):
    """A ``-p NAME VALUE`` value: JSON, else a Python literal, else the string itself."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return text


def _order(path: Path):
    stems = list(NOTEBOOKS.values())
    return (stems.index(path.stem) if path.stem in stems else len(stems), path.name)


def select_notebooks(notebook_dir, only=None) -> list:
    """Notebooks to run: every ``*.ipynb`` of ``notebook_dir`` in reading order, or those of ``only``.

    ``only`` holds section ids ("3", "5.1", "quickstart", ...) or notebook stems ("04_repair").
    """
    notebook_dir = Path(notebook_dir)
    if not notebook_dir.is_dir():
        raise FileNotFoundError(f"notebook directory {notebook_dir} does not exist")
    found = sorted((p for p in notebook_dir.glob("*.ipynb") if not p.name.startswith(("_", "."))), key=_order)
    if only is None:
        if not found:
            raise FileNotFoundError(f"no notebooks (*.ipynb) in {notebook_dir}")
        return found
    chosen = []
    for name in only:
        stem = NOTEBOOKS.get(str(name), Path(str(name)).stem)
        if stem not in NOTEBOOKS.values() and not (notebook_dir / f"{stem}.ipynb").exists():
            raise ValueError(f"unknown section {name!r}; valid sections: {', '.join(SECTIONS)} "
                             f"(or a notebook name: {', '.join(p.stem for p in found) or 'none found'})")
        path = notebook_dir / f"{stem}.ipynb"
        if not path.exists():
            raise FileNotFoundError(f"section {name!r}: notebook {path} does not exist (yet)")
        if path not in chosen:
            chosen.append(path)
    return chosen


def parameter_names(path) -> list:
    """Names assigned in the notebook's cell tagged ``parameters``; ValueError if it has none."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            names = []
            for node in ast.parse(cell.source).body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                names += [t.id for t in targets if isinstance(t, ast.Name)]
            return names
    raise ValueError(f"notebook {path} has no code cell tagged 'parameters' (see repairlib.book)")


def kernel_name() -> str:
    """The installed Jupyter kernel that runs this Python (``python -m ipykernel install --user``)."""
    from jupyter_client.kernelspec import KernelSpecManager

    here = os.path.realpath(sys.executable)
    try:
        specs = KernelSpecManager().get_all_specs()
    except (OSError, ValueError, KeyError):  # a broken kernelspec directory must not stop the book
        specs = {}
    for name, spec in sorted(specs.items()):
        argv = spec.get("spec", {}).get("argv") or [""]
        exe = shutil.which(argv[0]) or argv[0]
        if spec.get("spec", {}).get("language") == "python" and os.path.realpath(exe) == here:
            return name
    return "python3"


def plan_parameters(notebooks, profile: str, overrides: dict) -> dict:
    """Per notebook, the papermill parameters: ``profile`` and the overrides it declares.

    An override that no selected notebook declares is a ``ValueError`` (a typo would otherwise be
    ignored silently); so is a notebook without a ``profile`` parameter.
    """
    check_profile(profile)
    plan, used = {}, set()
    for path in notebooks:
        names = parameter_names(path)
        if "profile" not in names:
            raise ValueError(f"notebook {path} has no 'profile' parameter in its parameters cell")
        own = {k: v for k, v in overrides.items() if k in names}
        used |= set(own)
        plan[path] = {"profile": profile, **own}
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"parameter(s) {', '.join(map(repr, unused))} are not declared by any selected "
                         f"notebook's parameters cell")
    return plan


def execute(path, out_path, parameters: dict, kernel: str, cwd) -> tuple:
    """Run one notebook with papermill; returns (ok, seconds, error line). The copy is written either way."""
    import papermill

    start = time.time()
    try:
        papermill.execute_notebook(str(path), str(out_path), parameters=parameters, kernel_name=kernel,
                                   cwd=str(cwd), progress_bar=False, log_output=False)
        return True, time.time() - start, ""
    except papermill.PapermillExecutionError as e:
        return False, time.time() - start, f"{e.ename}: {e.evalue}".strip()
    except Exception as e:  # noqa: BLE001 -- a dead kernel or an unreadable notebook: report, run the next
        return False, time.time() - start, f"{type(e).__name__}: {e}".splitlines()[0]


def previous_seconds(executed_path) -> float:
    """Wall time papermill recorded in an executed copy (``metadata.papermill.duration``); infinity
    when there is none, so that a notebook never timed counts as a long one."""
    import nbformat

    try:
        duration = nbformat.read(str(executed_path), as_version=4).metadata["papermill"]["duration"]
        return float(duration) if duration is not None else float("inf")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return float("inf")


def run_notebooks(notebooks, profile: str, overrides: dict, out_dir, cwd=None, kernel=None, log=print,
                  jobs: int = 1, earlier=None) -> list:
    """Execute ``notebooks`` into ``out_dir``, one progress line each; keeps going past failures.

    ``jobs`` > 1 runs that many notebooks side by side (each kernel then gets ``cores // jobs`` torch
    threads through ``OMP_NUM_THREADS``, unless it is set): the kernels' start-up and imports, which
    use one core, overlap with another notebook's work, and the checkpoint zoo's lock makes a network
    that two notebooks need train once; the longest notebooks (by their executed copies in ``earlier``,
    default ``out_dir``, from the previous run) start first. Returns ``[(name, seconds, ok, error)]`` in the given order.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    plan = plan_parameters(notebooks, profile, overrides)
    jobs = min(jobs, max(len(notebooks), 1))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = kernel or kernel_name()
    env = {"TQDM_DISABLE": "1"}  # the kernels inherit it: no progress bars in the executed pages
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    results = {}

    def report(path, outcome):
        ok, seconds, error = outcome
        results[path] = (path.stem, seconds, ok, error)
        log(f"[{len(results)}/{len(notebooks)}] {path.stem:<26} {seconds:8.1f} s  {'ok' if ok else 'FAILED'}"
            + (f"  ({error})" if error else ""))

    try:
        if jobs == 1:
            for path in notebooks:
                report(path, execute(path, out_dir / path.name, plan[path], kernel, cwd or path.parent))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # longest first (by the wall time of the previous executed copy), so that the run does not
            # end with one long notebook working alone on its share of the cores
            earlier = Path(earlier) if earlier is not None else out_dir
            order = sorted(notebooks, key=lambda path: -previous_seconds(earlier / path.name))
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(execute, path, out_dir / path.name, plan[path], kernel,
                                       cwd or path.parent): path for path in order}
                for future in as_completed(futures):
                    try:
                        outcome = future.result()
                    except Exception as e:  # noqa: BLE001 -- a worker died: report it, keep the others
                        outcome = (False, float("nan"), f"{type(e).__name__}: {e}".splitlines()[0])
                    report(futures[future], outcome)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return [results[path] for path in notebooks]


def build_book(root=None, path_output=None, log=print) -> bool:
    """``jupyter-book build`` of ``root`` (into ``path_output/_build`` if given); True on success."""
    root = Path(root) if root is not None else book_root()
    exe = shutil.which("jupyter-book")
    cmd = [exe] if exe else [sys.executable, "-c", "from jupyter_book.cli.main import main; main()"]
    cmd += ["build", str(root)] + (["--path-output", str(path_output)] if path_output else [])
    start = time.time()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    ok = proc.returncode == 0
    html = Path(path_output or root) / "_build" / "html" / "index.html"
    log(f"jupyter-book build: {'ok' if ok else 'FAILED'} in {time.time() - start:.1f} s -> {html}")
    if not ok:
        log((proc.stdout + proc.stderr)[-3000:])
    return ok


def executed_dir(profile: str, root=None) -> Path:
    """Where the runner writes executed copies: ``book/executed/<profile>/`` (the book's pages are the
    cpu ones; paper-profile copies are kept beside them), smoke copies under ``_build/`` (never committed)."""
    root = Path(root) if root is not None else book_root()
    check_profile(profile)
    return root / "_build" / "executed" / "smoke" if profile == "smoke" else root / "book" / "executed" / profile


def book_cli(args: argparse.Namespace) -> int:
    """``python -m repairlib book``: execute the notebooks, refresh the results table, build the book.

    Exit status 0 when every notebook and the build succeeded, 1 otherwise (all are attempted).
    """
    root = book_root()
    notebook_dir = Path(getattr(args, "notebooks", None) or root / "notebooks")
    out_dir = Path(getattr(args, "out", None) or executed_dir(args.profile, root))
    overrides = {}
    for name, value in args.parameter:
        if not name.isidentifier():
            raise ValueError(f"parameter name {name!r} is not a Python identifier")
        overrides[name] = parse_value(value)
    notebooks = select_notebooks(notebook_dir, args.only)
    print(f"book: {len(notebooks)} notebook(s) at profile {args.profile} -> {out_dir}", flush=True)
    start = time.time()
    results = run_notebooks(notebooks, args.profile, overrides, out_dir, cwd=notebook_dir,
                            kernel=getattr(args, "kernel", None), log=lambda s: print(s, flush=True),
                            jobs=getattr(args, "jobs", 1))
    failed = [name for name, _, ok, _ in results if not ok]
    print(f"book: {len(results) - len(failed)} ok, {len(failed)} failed in {time.time() - start:.0f} s"
          + (f" (failed: {', '.join(failed)})" if failed else ""), flush=True)
    built = True
    if not args.no_build:
        write_results_page()
        built = build_book(root)
    return 0 if not failed and built else 1
