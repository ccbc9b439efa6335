"""A content-addressed cache of evaluation results: a rerun of the book re-evaluates only what changed.

With ``$REPAIR_EVAL_CACHE`` set to a folder (the book's runner sets it to ``<zoo>/evaluations``),
:func:`repairlib.evaluation.evaluate` and :func:`~repairlib.evaluation.per_example` look their result
up under a key of everything it depends on, and store it after computing it:

- the network: its printed structure (a ``GraphModule`` prints its generated code), each module's
  class, the source file that defines it and its plain attributes (numbers, strings, flags), and every
  parameter and buffer (persistent or not) with its name, dtype, shape, strides and bytes;
- the data: every input and target tensor, in the order the evaluation reads them;
- the device type and the torch version.

So one changed bit of a weight, other test images or an edited model file is a miss, and a hit is
what the same computation gave before. Results computed with another number of threads can differ
from a recomputation in float rounding. A network with forward hooks is never cached (a hook changes
what it computes without showing in its modules). Writes are atomic (a temp file, then
``os.replace``); an unreadable entry is recomputed and replaced.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import pickle
from pathlib import Path

import torch
from torch import nn

ENV = "REPAIR_EVAL_CACHE"
_PLAIN = (bool, int, float, str, type(None))


def directory() -> Path | None:
    """The cache folder, ``$REPAIR_EVAL_CACHE``; None (no caching) when it is unset or empty."""
    folder = os.environ.get(ENV, "")
    return Path(folder).expanduser() if folder else None


@functools.cache
def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _class_digest(cls: type) -> str:
    """The class's qualified name and the digest of the file that defines it ('' if it has none)."""
    try:
        path = inspect.getsourcefile(cls) or ""
    except TypeError:  # a class made at run time (an fx GraphModule's) has no source file
        path = ""
    return f"{cls.__module__}.{cls.__qualname__}:{_file_digest(path) if path else ''}"


def _update_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{t.stride()}|".encode())
    h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def has_hooks(model: nn.Module) -> bool:
    """Whether a forward (pre-)hook is registered on any of ``model``'s modules, or globally."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def model_digest(model: nn.Module) -> str:
    """SHA-256 of everything about ``model`` that decides its outputs (see the module docstring)."""
    h = hashlib.sha256(f"torch {torch.__version__}\n{model}\n".encode())
    for name, m in model.named_modules():
        plain = sorted((k, repr(v)) for k, v in vars(m).items()
                       if not k.startswith("_") and k != "training" and isinstance(v, _PLAIN))
        h.update(f"{name}|{_class_digest(type(m))}|{plain}\n".encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        _update_tensor(h, name, t)
    return h.hexdigest()


def data_digest(batches) -> str:
    """SHA-256 of every tensor of ``batches`` (an iterable of tensors or tuples of them), in order."""
    h = hashlib.sha256()
    for i, batch in enumerate(batches):
        for j, t in enumerate(batch if isinstance(batch, (tuple, list)) else (batch,)):
            if isinstance(t, torch.Tensor):
                _update_tensor(h, f"{i}.{j}", t)
            else:
                h.update(f"{i}.{j}|{t!r}".encode())
    return h.hexdigest()


def key(kind: str, model: nn.Module, batches) -> str:
    """The cache key of evaluation ``kind`` (e.g. "per_example") of ``model`` on ``batches``."""
    device = next((p.device.type for p in model.parameters()), "cpu")
    return hashlib.sha256(f"{kind}|{device}|{model_digest(model)}|{data_digest(batches)}".encode()).hexdigest()


def path_of(folder: Path, digest: str) -> Path:
    return folder / digest[:2] / f"{digest}.pt"


def load(path: Path):
    """The stored result at ``path``, or None when there is none or it cannot be read."""
    try:
        return torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            pickle.UnpicklingError):
        return None


def store(path: Path, result) -> None:
    """Write ``result`` to ``path`` atomically (a temp file beside it, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(result, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def memoised(kind: str, model: nn.Module, batches, compute):
    """``compute(model, batches)``, looked up in and stored to the cache when one is set (and ``model``
    has no hooks). ``batches`` must give the same sequence on every pass (:func:`repairlib.plumbing.reusable`)."""
    folder = directory()
    if folder is None or has_hooks(model):
        return compute(model, batches)
    path = path_of(folder, key(kind, model, batches))
    found = load(path) if path.exists() else None
    if found is not None:
        return found
    result = compute(model, batches)
    store(path, result)
    return result
