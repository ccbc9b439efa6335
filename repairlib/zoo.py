"""Trained networks, trained once and reused everywhere: a content-addressed checkpoint cache.

``trained(config, dataset, epochs=...)`` returns the cached network whose *whole* training
description (architecture and its arguments, data set, subset, split part, recipe, seed, epochs and
``TRAIN_CODE_VERSION``) hashes to the same key, and trains and caches it otherwise. A checkpoint is
one file ``{"format", "config", "state_dict", "meta"}``, so :func:`load` rebuilds the network from the
file alone. Writes are atomic; a corrupt or partial file is never loaded, a cached file whose stored
config or training description differs from the request is retrained (with a warning), and the
hidden temp files a killed save leaves (``.<name>*.pt.tmp``) are removed by the next save or load of
that checkpoint once they are ``STALE_TMP_SECONDS`` old.
"""

import contextlib
import copy
import datetime
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock; notebooks run side by side may train a network twice
    fcntl = None

import torch
from torch import nn

from repairlib import data, distributed
from repairlib.evaluation import evaluate
from repairlib.models import build, canonical_config, check_size
from repairlib.plumbing import default_device
from repairlib.train import Recipe, fit, recipe_for, resolve_bf16

# bump when a change to the training code should invalidate cached networks (2: Fixup's He init of stem and shortcuts)
TRAIN_CODE_VERSION = 2
FORMAT = "repairlib-checkpoint-1"
KEYS = ("format", "config", "state_dict", "meta")
STALE_TMP_SECONDS = 60  # a temp file this old beside a checkpoint is left over from a killed save


def resolve_cache_dir(path=None) -> Path:
    """Where cached networks live: ``path``, else ``$REPAIR_ZOO``, else ``~/.cache/repairlib/zoo``."""
    return Path(path or os.environ.get("REPAIR_ZOO") or Path.home() / ".cache" / "repairlib" / "zoo").expanduser()


def model_config(config: dict, dataset: str) -> dict:
    """``config`` completed with the data set's input shape and class count (explicit values must agree)."""
    if not isinstance(config, dict) or "arch" not in config:
        raise ValueError(f"a model config is a dict with an 'arch' key, got {config!r}")
    shape = data.info(dataset)
    implied = {"num_classes": shape["num_classes"]}
    if config["arch"] == "mlp":
        implied["in_features"] = shape["in_channels"] * shape["image_size"] ** 2
    else:
        implied["in_channels"] = shape["in_channels"]
    for key, value in implied.items():
        if config.get(key, value) != value:
            raise ValueError(f"config has {key}={config[key]!r} but {dataset} needs {key}={value}")
    return canonical_config({**implied, **config})


def training_description(config, dataset, *, epochs, seed=0, train_subset=None, split_part=None,
                         batch_size=None, lr=None, grad_clip=None, augment=None, label_smoothing=None,
                         ema=None, bf16=False) -> dict:
    """Everything that determines the trained weights, as plain JSON-able values: the completed model
    config, data set, epochs, seed, subset, split part (0/1 of paper 5.4's biased halves), the recipe
    (Table 1 with ``batch_size``/``lr``/``grad_clip``/``augment``/``label_smoothing``/``ema`` overrides)
    and ``TRAIN_CODE_VERSION``. The recipe lists ``grad_clip`` and ``ema`` only when they are set, so the
    keys of networks trained without them stay as they were before the options existed.

    ``bf16=True`` (bf16 autocast in training, :func:`repairlib.train.fit`) adds ``"autocast": "bf16"``;
    without it the description has no such key and trains with ``fit``'s default (fp32 on the CPU, bf16
    autocast on CUDA), so the checkpoints cached before the option existed keep their keys."""
    if not isinstance(bf16, bool):
        raise ValueError(f"bf16 must be True or False, got {bf16!r}")  # noqa: TRY004 (one error type for bad settings)
    for name, value in (("epochs", epochs), ("train_subset", train_subset), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if split_part not in (None, 0, 1):
        raise ValueError(f"split_part must be None, 0 or 1, got {split_part!r}")
    dataset = data.canonical_name(dataset)
    config = check_size(model_config(config, dataset))
    recipe = asdict(recipe_for(config["arch"], dataset, batch_size=batch_size, lr=lr, grad_clip=grad_clip,
                               augment=augment, label_smoothing=label_smoothing, ema=ema))
    for optional in ("grad_clip", "ema"):
        if recipe[optional] is None:
            del recipe[optional]
    return {"config": config, "dataset": dataset, "epochs": epochs, "seed": seed, "train_subset": train_subset,
            "split_part": split_part, "recipe": recipe, "train_code_version": TRAIN_CODE_VERSION,
            **({"autocast": "bf16"} if bf16 else {})}


def cache_key(description: dict) -> str:
    """SHA-256 of the canonical JSON of a training description."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_path(description: dict, cache_dir=None) -> Path:
    """The cache file of a training description: ``<cache>/<arch>-<dataset>-s<seed>-<key>.pt``."""
    d = description
    return resolve_cache_dir(cache_dir) / f"{d['config']['arch']}-{d['dataset']}-s{d['seed']}-{cache_key(d)[:20]}.pt"


CACHED_TEST_EXAMPLES = 2000  # test images the zoo's checkpoint meta is measured on (the full set: 5x the cost)


def train_model(description: dict, *, root=None, device=None, progress=True, test_examples=None):
    """Train what a :func:`training_description` describes and measure it on the test set
    (its first ``test_examples`` images of a fixed permutation; None = all).

    The model is built under ``torch.manual_seed(seed)``; ``split_part`` 0 or 1 trains on that
    class-biased half of the training set (the split itself is fixed, seed 0).
    Returns ``(model in eval mode, meta dict)``.
    """
    desc, device = description, default_device(device)
    dataset, seed = desc["dataset"], desc["seed"]
    indices = None
    if desc["split_part"] is not None:
        labels = data.load_tensors(dataset, "train", root)[1]
        indices = data.biased_split(labels, desc["split_part"], desc["config"]["num_classes"])
    torch.manual_seed(seed)
    model = build(desc["config"])
    stats = fit(model, dataset, epochs=desc["epochs"], seed=seed, device=device, root=root,
                train_subset=desc["train_subset"], indices=indices, recipe=Recipe(**desc["recipe"]),
                bf16=True if desc.get("autocast") == "bf16" else None, progress=progress)
    n_test = len(data.load_tensors(dataset, "test", root)[1]) if dataset != "imagenet" else None
    subset = test_examples if test_examples is not None and n_test and test_examples < n_test else None
    test = evaluate(model, data.loader(dataset, "test", batch_size=1000, root=root, device=device, subset=subset))
    meta = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "train_loss": stats["train_loss"],
            "test_examples": subset or n_test,
            "seconds": stats["seconds"], "images_per_second": stats["images_per_second"], "steps": stats["steps"],
            "dataset": dataset, "epochs": desc["epochs"], "seed": seed, "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": str(torch.__version__), "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "training": desc, "key": cache_key(desc)}
    model.repairlib_test_accuracy = meta["test_accuracy"]  # read by tagged(), as for a cached network
    return model, meta


def remove_stale_temp_files(path) -> list:
    """Remove the hidden temp files (``.<name>*.pt.tmp``) that a save killed before its rename left
    beside checkpoint ``path``, if older than ``STALE_TMP_SECONDS`` (a younger one may be a save in
    progress in another process); returns the paths removed."""
    path, removed = Path(path), []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.glob(f".{_glob_literal(path.name)}*.pt.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # removed meanwhile by another process, or not ours to remove
            pass
    return removed


def _glob_literal(name: str) -> str:
    """``name`` with glob's special characters ``*?[`` taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace``: readers see the old
    file or the complete new one, never a partial one; no temp file survives an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".pt.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a cache is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(meta: dict) -> dict:
    """``meta`` as plain JSON types (str, int, float, bool, None, list, dict), which ``weights_only``
    loading accepts; anything else is stored as its ``str``."""
    return json.loads(json.dumps(meta, default=str))


def check_writable_dir(directory, what: str) -> None:
    """``ValueError`` unless files can be written in ``directory``: a probe file is created and removed
    in it, or (where it does not exist yet) in its nearest existing ancestor, which must be a directory.
    Run before the work, so that a run fails at once, not when it saves. ``what`` names the option."""
    directory = Path(directory).expanduser().absolute()
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{what}: cannot write in {directory}: {existing} is a file, not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".repairlib-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"{what}: cannot write in {directory} ({err.strerror or type(err).__name__}); "
                         "choose a writable place") from err


def check_save_path(path, inputs=(), what: str = "checkpoint path") -> Path:
    """``path`` as a checkpoint destination, checked before any work: not a directory, not one of the
    ``inputs`` files (same file after resolving links), in a writable directory; else ``ValueError``."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name such as {path / 'model.pt'}")
    for source in map(Path, inputs):
        same = path.exists() and source.exists() and os.path.samefile(path, source)
        if same or path.resolve() == source.resolve():
            raise ValueError(f"{what} {path} is the input {source}: writing it would replace that input; "
                             "choose another file name")
    check_writable_dir(path.parent, f"{what} {path}")
    return path


def save(model: nn.Module, path, config: dict, meta=None) -> Path:
    """Write ``model`` (built from ``config``) and ``meta`` to ``path`` atomically; returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint path {path} is a directory; give a file name such as {path / 'model.pt'}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_torch_save({"format": FORMAT, "config": canonical_config(config), "state_dict": state,
                        "meta": _plain(meta or {})}, path)
    return path


def _load_error(err: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed, without torch's advice to retry with
    ``weights_only=False`` or to allowlist a global (either would run whatever code the file holds)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines or "Weights only load failed" not in lines[0]:
        return lines[0] if lines else type(err).__name__
    details = (line.split("WeightsUnpickler error:")[-1].strip() for line in lines)
    detail = next((d for d in details if d.startswith(("Unsupported", "Trying to load"))), "an unreadable pickle")
    return (f"{detail.split('. Please use')[0].rstrip('.')}: it holds something other than tensors and plain "
            "values, and repairlib never unpickles objects (weights_only=True), as that could run code")


def load_checkpoint(path) -> dict:
    """The checkpoint dict in ``path``, checked; ``ValueError`` if it is not a repairlib checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    remove_stale_temp_files(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle garbage, foreign format: all mean "not ours"
        raise ValueError(f"{path} is not a valid repairlib checkpoint: cannot be read ({_load_error(err)})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a valid repairlib checkpoint: no {FORMAT!r} marker")
    missing = [k for k in KEYS if k not in ckpt]
    if missing or not isinstance(ckpt["config"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise ValueError(f"{path} is not a valid repairlib checkpoint: missing or malformed {missing or 'config'}")
    return ckpt


class NonFiniteWarning(UserWarning):
    """A loaded checkpoint holds NaN or Inf weights."""


class NonFiniteError(ValueError):
    """A checkpoint loaded with ``nonfinite="error"`` holds NaN or Inf weights."""


def first_nonfinite(state_dict: dict):
    """``(name, count)`` of the first floating tensor holding NaN or Inf values (count: how many), or None."""
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return name, bad
    return None


NONFINITE = ("warn", "error", "ignore")


def load(path, expect_arch=None, device=None, nonfinite="warn") -> nn.Module:
    """Rebuild the network saved in ``path`` (eval mode, on ``device`` or the CPU).

    ``expect_arch`` ("resnet20", ...) raises ``ValueError`` for a checkpoint of another architecture.
    Its config is bounded (:func:`repairlib.models.check_size`) before anything is allocated. NaN or Inf
    weights: ``nonfinite="warn"`` (a :class:`NonFiniteWarning` naming the file and the first such
    tensor), ``"error"`` (:class:`NonFiniteError`, a ``ValueError``) or ``"ignore"``.
    """
    return _rebuild(load_checkpoint(path), path, expect_arch, device, nonfinite)


def _rebuild(ckpt: dict, path, expect_arch=None, device=None, nonfinite="warn") -> nn.Module:
    """The network of a checkpoint dict read from ``path`` (see :func:`load`)."""
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {', '.join(map(repr, NONFINITE))}, got {nonfinite!r}")
    arch = ckpt["config"].get("arch")
    if expect_arch is not None and arch != expect_arch:
        raise ValueError(f"{path} holds a {arch!r} network, expected {expect_arch!r}")
    try:
        config = check_size(ckpt["config"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a valid repairlib checkpoint: its config is refused "
                         f"({str(err).strip().splitlines()[0]})") from err
    _report_nonfinite(path, ckpt["state_dict"], nonfinite)
    try:
        model = build(config)
        model.load_state_dict(ckpt["state_dict"])
    except (ValueError, RuntimeError, TypeError) as err:
        reason = str(err).strip().splitlines()[0]
        raise ValueError(f"{path} is not a valid repairlib checkpoint: weights do not fit its config ({reason})") from err
    return model.to(device or "cpu").eval()


def _report_nonfinite(path, state_dict: dict, nonfinite: str) -> None:
    found = first_nonfinite(state_dict) if nonfinite != "ignore" else None
    if found is None:
        return
    message = f"{path} has NaN or Inf weights: {found[1]} value(s) in tensor {found[0]!r}"
    if nonfinite == "error":
        raise NonFiniteError(message)
    warnings.warn(message, NonFiniteWarning, stacklevel=4)


def trained(config, dataset, *, epochs, seed=0, train_subset=None, split_part=None, root=None, device=None,
            cache_dir=None, batch_size=None, lr=None, grad_clip=None, augment=None, label_smoothing=None,
            ema=None, bf16=False) -> nn.Module:
    """The network ``config`` trained on ``dataset`` for ``epochs`` with ``seed`` (eval mode, on ``device``).

    Loaded from the cache when its training description was trained before; otherwise trained now and
    cached. A corrupt cache file, or a valid one whose stored config, training description or key
    differs from the request (:func:`load_cached`), is reported with a warning and replaced. ``batch_size``,
    ``lr``, ``grad_clip`` (a maximum gradient norm), ``augment`` (``""``: none), ``label_smoothing`` and
    ``ema`` (a weight-averaging decay, :class:`repairlib.train.Recipe`) override the Table 1 recipe (e.g.
    for small subsets and short runs); ``bf16=True`` trains under bf16 autocast (faster on CPUs with AMX), ``bf16="auto"`` where ``device`` has bf16 in hardware
    (:func:`repairlib.train.native_bf16`; fp32 elsewhere). All of these are part of the cache key
    (``"auto"`` as what it picked).
    """
    bf16 = resolve_bf16(bf16, device)
    desc = training_description(config, dataset, epochs=epochs, seed=seed, train_subset=train_subset,
                                split_part=split_part, batch_size=batch_size, lr=lr, grad_clip=grad_clip,
                                augment=augment, label_smoothing=label_smoothing, ema=ema, bf16=bf16)
    path, device = checkpoint_path(desc, cache_dir), default_device(device)
    if distributed.world_size() > 1:
        return tagged(_trained_by_every_rank(desc, path, root, device), desc)
    if path.exists():
        try:
            return tagged(load_cached(path, desc, device), desc)
        except ValueError as err:
            warnings.warn(f"retraining: {err}", stacklevel=2)
    with training_lock(path):
        if path.exists():  # another process trained it while this one waited for the lock
            try:
                return tagged(load_cached(path, desc, device), desc)
            except ValueError:
                pass
        model, meta = train_model(desc, root=root, device=device, test_examples=CACHED_TEST_EXAMPLES)
        save(model, path, desc["config"], meta)
    return tagged(model, desc)


def tagged(model: nn.Module, desc: dict) -> nn.Module:
    """``model`` with its training description as the attribute ``repairlib_training`` (config, data set,
    seed, epochs, ...), which copies keep and the book's measurement records read. A network whose
    cached test accuracy (``repairlib_test_accuracy``) is below 1.5x chance did not learn: a
    :class:`ChanceWarning` says so each time it is handed out, so no page measures it silently."""
    model.repairlib_training = copy.deepcopy(desc)
    accuracy = getattr(model, "repairlib_test_accuracy", None)
    classes = desc["config"].get("num_classes")
    if accuracy is not None and classes and accuracy < 1.5 / classes:
        warnings.warn(f"{desc['config'].get('arch')} seed {desc.get('seed')} on {desc.get('dataset')} reached "
                      f"{accuracy:.1%} test accuracy, near chance ({1 / classes:.0%}): it did not train, and "
                      f"measurements of it say nothing about the method", ChanceWarning, stacklevel=3)
    return model


class ChanceWarning(UserWarning):
    """A trained network is at chance accuracy (:func:`tagged`)."""


def _trained_by_every_rank(desc: dict, path: Path, root, device) -> nn.Module:
    """:func:`trained` under torchrun: every rank loads the cached network, or all train it together
    (data parallel, :func:`repairlib.train.fit`) and rank 0 alone writes it, holding the training lock
    against other jobs. The ranks decide together, after a barrier, so none trains alone."""
    device = distributed.join(device)
    distributed.barrier()
    if path.exists():
        try:
            return load_cached(path, desc, device)
        except ValueError as err:
            warnings.warn(f"retraining: {err}", stacklevel=3)
    distributed.barrier()  # every rank has looked before rank 0 may replace the file
    with training_lock(path) if distributed.is_main() else contextlib.nullcontext():
        model, meta = train_model(desc, root=root, device=device, test_examples=CACHED_TEST_EXAMPLES)
        if distributed.is_main():
            save(model, path, desc["config"], meta)
    distributed.barrier()
    return model


def load_cached(path, description: dict, device=None) -> nn.Module:
    """The network cached at ``path`` for ``description``; ``ValueError`` when the file is not a valid
    checkpoint or its stored config, training description or key differ from the request (a file
    copied or renamed into the cache), so that the caller retrains instead of returning another network."""
    ckpt = load_checkpoint(path)
    key, meta = cache_key(description), ckpt["meta"]
    stored = {"config": _plain(ckpt["config"]), "training key": cache_key(meta.get("training")),
              "key": meta.get("key")}
    wanted = {"config": _plain(description["config"]), "training key": key, "key": key}
    for field, value in stored.items():
        if value != wanted[field]:
            raise ValueError(f"{path} does not hold the requested network: its stored {field} is {value!r}, "
                             f"the request's is {wanted[field]!r}")
    model = _rebuild(ckpt, path, device=device)
    model.repairlib_test_accuracy = meta.get("test_accuracy")
    return model


@contextlib.contextmanager
def training_lock(path: Path):
    """Hold an exclusive lock on ``<checkpoint>.lock`` while a network is trained, so notebooks that run
    side by side (``python -m repairlib book --jobs 2``) train a shared checkpoint once: the second
    waits, then loads it. The lock file is removed afterwards (a process still waiting on it then
    finds the checkpoint; at worst a network is trained twice, never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
