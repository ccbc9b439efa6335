"""Shared plumbing: batches, devices and dtypes, input checks. Imports nothing else from repairlib.

Every statistics pass of the library (alignment, REPAIR, BatchNorm resets, barriers, variance ratios)
takes its data through :func:`reusable`, so that its result depends only on its inputs: a shuffling
loader gives the same batches in the same order however often it was iterated before, and a
single-pass iterable (a generator) is read once and reused, never silently short.
"""

import copy
import math
from collections.abc import Iterator

import torch
from torch import nn

# Images per forward pass on a CPU, for passes whose result does not depend on the batching
# (evaluation, pooled moments): a conv net's activations for 100 images stay in cache, and ResNet20 x1
# runs 1.2x (2 threads) to 1.6x (1 thread) faster than with batches of 500.
CPU_CHUNK = 100


# ---------------------------------------------------------------- copies
def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` that computes what ``model`` computes. Some torch modules restore state
    on copy in a way that hides a submodule: a ``TransformerDecoderLayer`` whose activation is a module
    (``nn.GELU()``) gets ``F.relu`` as an instance attribute of the same name, which then shadows the
    module and changes the function. Such attributes (present on the copy, absent on the original, and
    named like one of its submodules) are removed."""
    out = copy.deepcopy(model)
    for original, copied in zip(model.modules(), out.modules()):
        for name in [n for n in vars(copied) if n in copied._modules and n not in vars(original)]:
            del copied.__dict__[name]
    return out


# ---------------------------------------------------------------- devices and dtypes
def default_device(device=None) -> torch.device:
    """``device`` as a torch.device (default: CUDA when available, else CPU); ``ValueError`` if unusable."""
    try:
        device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here; use cpu")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a network without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s first floating parameter (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def as_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Move a batch to ``model``'s device, and float inputs to its dtype (float64 models work)."""
    p = next(model.parameters(), None)
    if p is None:
        return x
    return x.to(p.device, model_dtype(model) if x.is_floating_point() else x.dtype)


class eval_mode:
    """Context manager: put models in eval mode, restore their train flags afterwards."""

    def __init__(self, *models):
        self.models = models

    def __enter__(self):
        self.flags = [[m.training for m in model.modules()] for model in self.models]
        for model in self.models:
            model.eval()

    def __exit__(self, *exc):
        for model, flags in zip(self.models, self.flags):
            for m, f in zip(model.modules(), flags):
                m.train(f)


# ---------------------------------------------------------------- data
class _SeededShuffle:
    """A torch DataLoader replayed in one fixed shuffled order: each pass draws its order from a fresh
    generator seeded ``seed``, so every pass yields the same batches (random transforms inside the
    data set stay as random as the data set makes them)."""

    def __init__(self, loader: torch.utils.data.DataLoader, seed: int = 0):
        self.loader, self.seed = loader, seed

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        dl = self.loader
        sampler = torch.utils.data.RandomSampler(dl.dataset, generator=torch.Generator().manual_seed(self.seed))
        return iter(torch.utils.data.DataLoader(
            dl.dataset, batch_size=dl.batch_size, sampler=sampler, num_workers=dl.num_workers,
            collate_fn=dl.collate_fn, pin_memory=dl.pin_memory, drop_last=dl.drop_last,
            worker_init_fn=dl.worker_init_fn))


def fixed_order(data):
    """``data`` replayed in one order on every pass.

    - an object with a ``fixed_order()`` method (repairlib's loaders: every pass is their first
      epoch's shuffle and augmentation) returns that;
    - a torch ``DataLoader`` that shuffles is replayed in the order of a generator seeded 0;
    - anything else is returned as it is (a list, a loader that does not shuffle, a generator).
    """
    fixed = getattr(data, "fixed_order", None)
    if callable(fixed):
        return fixed()
    if isinstance(data, torch.utils.data.DataLoader) and isinstance(data.sampler, torch.utils.data.RandomSampler):
        if data.batch_size is None:
            raise ValueError("a shuffling DataLoader with a custom batch_sampler cannot be replayed in a fixed "
                             "order: pass a DataLoader with shuffle=False, or a list of batches")
        return _SeededShuffle(data)
    return data


def reusable(data):
    """``data`` as batches that can be iterated again and give the same sequence every time.

    :func:`fixed_order` for loaders; a single-pass iterable (a generator or iterator, whose ``iter``
    is itself) is read once into a list; a re-iterable one is not iterated here. ``ValueError`` for ``None`` or no batches at all.
    """
    if data is None:
        raise ValueError("no data given: pass an iterable of (inputs, targets) batches")
    data = fixed_order(data)
    if isinstance(data, Iterator):  # a generator or iterator: one pass only
        data = list(data)
        if not data:
            raise ValueError("the data yielded no batches (an exhausted generator?)")
    return data


def batches(data, chunk: bool = False):
    """Yield ``(inputs, targets or None)`` of every batch; ``ValueError`` if there is none.

    ``chunk=True`` splits batches of images ``[B, C, H, W]`` held on the CPU into pieces of
    ``CPU_CHUNK`` images. Only for passes that do not depend on the batching: never for BatchNorm
    resets or REPAIR's per-batch renormalisation.
    """
    if data is None:
        raise ValueError("no data given: pass an iterable of (inputs, targets) batches")
    empty = True
    for batch in data:
        empty = False
        if isinstance(batch, (tuple, list)):
            x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            x, y = batch, None
        if chunk and isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dim() == 4 and len(x) > CPU_CHUNK:
            for i in range(0, len(x), CPU_CHUNK):
                yield x[i:i + CPU_CHUNK], (y[i:i + CPU_CHUNK] if y is not None else None)
        else:
            yield x, y
    if empty:
        raise ValueError("the data yielded no batches")


def first_inputs(data) -> torch.Tensor:
    """The inputs of the first batch (pass :func:`reusable` data: a generator would lose that batch)."""
    for x, _ in batches(data):
        return x


# ---------------------------------------------------------------- checks
def check_choice(what: str, value, choices) -> None:
    """``ValueError`` naming ``what`` and the valid ``choices`` when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_alpha(alpha: float, extrapolate: bool = False) -> float:
    """``alpha`` as a float in [0, 1] (any finite value with ``extrapolate``), else ``ValueError``."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError) as err:
        raise ValueError(f"alpha must be a number, got {alpha!r}") from err
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    if not extrapolate and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha} (pass extrapolate=True to go beyond)")
    return alpha


def check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter or buffer whose name, shape or dtype differs."""
    sa, sb = model_a.state_dict(), model_b.state_dict()
    for name in sa.keys() | sb.keys():
        if name not in sa or name not in sb:
            where = "first" if name in sa else "second"
            raise ValueError(f"networks differ in architecture: {name!r} exists only in the {where} network")
    for name, ta in sa.items():
        tb = sb[name]
        if ta.shape != tb.shape:
            raise ValueError(f"networks differ in shape at {name!r}: {tuple(ta.shape)} vs {tuple(tb.shape)}")
        if ta.dtype != tb.dtype:
            raise ValueError(f"networks differ in dtype at {name!r}: {ta.dtype} vs {tb.dtype}; convert both "
                             "with .float() or .double() first")


def check_finite(model: nn.Module, what: str = "network") -> None:
    """Raise ``ValueError`` if any floating parameter or buffer holds NaN or Inf."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{what} has NaN or Inf values in {name!r}")


def check_networks(**models) -> None:
    """``name=network``: same architecture (``ValueError`` naming the first mismatch), finite weights."""
    nets = list(models.values())
    for m in nets[1:]:
        check_same_architecture(nets[0], m)
    for name, m in models.items():
        check_finite(m, name)


def check_finite_stats(values: dict, what: str) -> None:
    """``ValueError`` naming the first point whose statistics are NaN or Inf."""
    for name, t in values.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"{what} at {name!r} are NaN or Inf (check the data and the networks)")
