"""Image data sets as fast, on-device batch iterators (paper Table 1 augmentations).

torchvision's dataset classes read the files; small data sets are then held as uint8 tensors
``[N, C, H, W]``, moved to the device once, and augmented and normalised in whole batches there.
ImageNet goes through torchvision ``ImageFolder`` and a ``DataLoader``.

Where a data set is looked for: an explicit ``root`` argument alone (then a torchvision download into
it); without one, ``$REPAIR_DATA``, the Debian package ``dataset-fashion-mnist`` (Fashion-MNIST only),
then a torchvision download into the cache (set ``REPAIR_DOWNLOAD=0`` to skip downloads). A data set
found nowhere raises :class:`DatasetNotFoundError` naming the places tried; a truncated or corrupt
``.gz`` file raises :class:`DatasetCorruptError` naming it, and leaves no temporary file behind.
"""

import copy
import gzip
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from repairlib.plumbing import default_device, fixed_order

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_MNIST_LIKE = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_INFO = {  # in_channels, num_classes, image_size, mean, std, where the files go under a root
    "mnist": (1, 10, 28, (0.1307,), (0.3081,), "<root>/MNIST/raw/*-ubyte.gz"),
    "fashion_mnist": (1, 10, 28, (0.2860,), (0.3530,), "<root>/FashionMNIST/raw/*-ubyte.gz"),
    "svhn": (3, 10, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "<root>/{train,test}_32x32.mat"),
    "cifar10": (3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "<root>/cifar-10-batches-py/"),
    "cifar100": (3, 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "<root>/cifar-100-python/"),
    "imagenet": (3, 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                 "<root>/imagenet/{train,val}/<wnid>/*.JPEG"),
}
NAMES = tuple(_INFO)
AUGMENTATIONS = ("flip", "translate", "cutout")
_TENSORS: dict = {}  # memo of load_tensors: (name, split, root, $REPAIR_DATA, cache) -> (images, labels)
_ON_DEVICE: dict = {}  # memo of the device copies: (memo key, device) -> (images, labels)


class DatasetNotFoundError(FileNotFoundError):
    """A data set is in none of the places looked at and cannot be downloaded."""


class DatasetCorruptError(ValueError):
    """A data set file is there but cannot be read (a truncated or corrupt ``.gz``)."""


def canonical_name(name: str) -> str:
    """'FashionMNIST', 'fashion-mnist', 'fashion_mnist' -> 'fashion_mnist'; unknown -> ValueError."""
    key = str(name).lower().replace("-", "").replace("_", "")
    for known in NAMES:
        if key == known.replace("_", ""):
            return known
    raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(NAMES)}")


def info(name: str) -> dict:
    """``dict(in_channels, num_classes, image_size, mean, std)`` of a data set (mean/std per channel)."""
    c, k, size, mean, std, _ = _INFO[canonical_name(name)]
    return {"in_channels": c, "num_classes": k, "image_size": size, "mean": mean, "std": std}


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repairlib" / "data"


def _roots(root) -> list:
    """Where to look: an explicit root alone, else $REPAIR_DATA (if set)."""
    chosen = root if root else os.environ.get("REPAIR_DATA")
    return [Path(chosen).expanduser()] if chosen else []


def _gunzip(gz: Path, out: Path) -> None:
    """Decompress ``gz`` to ``out`` through a temp file beside it, renamed when complete; the temp file
    is removed on any failure. A truncated or corrupt ``gz`` is a :class:`DatasetCorruptError`."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with gzip.open(gz, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        Path(tmp).unlink(missing_ok=True)
        raise DatasetCorruptError(f"{gz} is truncated or not a gzip file ({type(err).__name__}: {err}); "
                                  "delete it and copy or download it again") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _gunzip_idx(source_dir: Path, raw_dir: Path, cls) -> None:
    """Decompress the IDX ``.gz`` files of ``cls.resources`` from ``source_dir`` into ``raw_dir``.

    torchvision's MNIST reads the decompressed files (its download step gunzips them); this does the
    same for copies that hold only the ``.gz`` files. Atomic, so concurrent processes are safe.
    """
    for gz_name, _ in cls.resources:
        gz, out = source_dir / gz_name, raw_dir / gz_name.removesuffix(".gz")
        if out.exists() or not gz.exists():
            continue
        raw_dir.mkdir(parents=True, exist_ok=True)
        _gunzip(gz, out)


def _torchvision_dataset(name: str, split: str, root: Path, download: bool = False):
    """The torchvision data set object; raises RuntimeError (torchvision's) where the files are missing."""
    train = split == "train"
    if name in _MNIST_LIKE:
        cls = getattr(torchvision.datasets, _MNIST_LIKE[name])
        if not download:
            try:
                _gunzip_idx(root / cls.__name__ / "raw", root / cls.__name__ / "raw", cls)
            except OSError:
                pass  # read-only copy holding only .gz files: reported as not found
        return cls(str(root), train=train, download=download)
    if name == "svhn":
        return torchvision.datasets.SVHN(str(root), split=split, download=download)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    return cls(str(root), train=train, download=download)


def _not_found(name: str, split: str, tried: list, download_note: str, root=None) -> DatasetNotFoundError:
    """The error for a data set found nowhere; ``root``: the explicit data root, which was searched alone."""
    hint = "apt-get install dataset-fashion-mnist, " if name == "fashion_mnist" and not root else ""
    how = ("download ILSVRC2012 from image-net.org and arrange it as" if name == "imagenet"
           else "run once with internet (torchvision downloads it), or put the official files at")
    where = (f" in the data root {root} (an explicit root is searched alone; omit it to use $REPAIR_DATA or "
             "the system copy)" if root else "")
    return DatasetNotFoundError(
        f"data set {name!r} ({split}) not found{where}; tried: {', '.join(map(str, tried)) or 'no root given'}"
        f"{download_note}. To get it: {hint}{how} {_INFO[name][5]} and pass root=<root> or set REPAIR_DATA."
    )


def _open(name: str, split: str, root):
    """Find the data set (an explicit root alone, else $REPAIR_DATA -> system copy; then a download)
    and open it with torchvision."""
    tried = []
    for r in _roots(root):
        try:
            return _torchvision_dataset(name, split, r)
        except RuntimeError:
            tried.append(r)
    if not root and name == "fashion_mnist" and SYSTEM_FASHION_MNIST.is_dir():
        staging = _cache_dir()
        _gunzip_idx(SYSTEM_FASHION_MNIST, staging / "FashionMNIST" / "raw", torchvision.datasets.FashionMNIST)
        try:
            return _torchvision_dataset(name, split, staging)
        except RuntimeError:
            tried.append(SYSTEM_FASHION_MNIST)
    if os.environ.get("REPAIR_DOWNLOAD", "1") == "0":
        raise _not_found(name, split, tried, " (download disabled by REPAIR_DOWNLOAD=0)", root)
    target = (_roots(root) or [_cache_dir()])[0]
    try:
        return _torchvision_dataset(name, split, target, download=True)
    except Exception as err:  # no network, server down, bad checksum: all mean "not available here"
        raise _not_found(name, split, tried, f"; download into {target} failed ({err!r})", root) from err


def _memo_key(name: str, split: str, root) -> tuple:
    return name, split, str(root), os.environ.get("REPAIR_DATA"), str(_cache_dir())


def load_tensors(name: str, split: str, root=None) -> tuple:
    """``(images uint8 [N, C, H, W], labels int64 [N])`` on the CPU, read by torchvision (memoised)."""
    name, split = canonical_name(name), _check_split(split)
    if name == "imagenet":
        raise ValueError("imagenet is too large to hold as tensors; use loader('imagenet', ...)")
    key = _memo_key(name, split, root)
    if key not in _TENSORS:
        ds = _open(name, split, root)
        images = torch.as_tensor(ds.data)
        if images.ndim == 3:  # MNIST-like [N, H, W]
            images = images[:, None]
        elif name != "svhn":  # CIFAR [N, H, W, C]; SVHN is already [N, C, H, W]
            images = images.permute(0, 3, 1, 2)
        labels = torch.as_tensor(ds.labels if name == "svhn" else ds.targets, dtype=torch.int64)
        _TENSORS[key] = (images.contiguous(), labels)
    return _TENSORS[key]


def parse_augment(augment) -> tuple:
    """False/None -> (); True -> ('flip', 'translate'); 'flip+translate+cutout' -> its parts."""
    if not augment:
        return ()
    if augment is True:
        return ("flip", "translate")
    ops = tuple(str(augment).lower().split("+"))
    bad = [op for op in ops if op not in AUGMENTATIONS]
    if bad:
        raise ValueError(f"unknown augmentation {bad[0]!r} in {augment!r}; use '+' of {AUGMENTATIONS}")
    return ops


def augment_batch(images: torch.Tensor, ops, generator=None, pad: int = 2) -> torch.Tensor:
    """Random flip / translate / cutout of a batch ``uint8 [B, C, H, W]``, per example, no Python loop.

    flip: mirror left-right with probability 1/2. translate: zero-pad ``pad`` px and crop back at a
    random offset (shift in [-pad, pad]^2). cutout: zero a square of side 12/32 of the image (12 px at
    32 px), placed inside the image. Zero is black, as in the authors' ffcv pipeline.
    """
    ops = parse_augment(ops) if not isinstance(ops, tuple) else ops
    b, _, h, w = images.shape
    dev = images.device

    def rand_int(high):  # [B] integers in [0, high)
        return torch.randint(high, (b,), generator=generator, device=dev)

    if "flip" in ops:
        flip = rand_int(2).bool()[:, None, None, None]
        images = torch.where(flip, images.flip(3), images)
    if "translate" in ops:
        padded = F.pad(images, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C]
        rows = (rand_int(2 * pad + 1)[:, None] + torch.arange(h, device=dev))[:, :, None]  # [B, H, 1]
        cols = (rand_int(2 * pad + 1)[:, None] + torch.arange(w, device=dev))[:, None, :]  # [B, 1, W]
        images = padded[torch.arange(b, device=dev)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if "cutout" in ops:
        size = max(1, round(12 * h / 32))
        y0, x0 = rand_int(h - size + 1)[:, None], rand_int(w - size + 1)[:, None]
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_rows, in_cols = (ys >= y0) & (ys < y0 + size), (xs >= x0) & (xs < x0 + size)  # [B,H], [B,W]
        images = images.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)
    return images


def subset_indices(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """First ``k`` of a permutation of ``range(n)`` seeded by ``seed``: LongTensor [k], same every call."""
    if not 0 < k <= n:
        raise ValueError(f"subset must be between 1 and the data set size {n}, got {k}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def biased_split(targets, part: int, num_classes: int, major: float = 0.8, seed: int = 0) -> torch.Tensor:
    """Class-biased halves of a data set (paper 5.4): sorted LongTensor of example indices.

    Part 0 holds a random ``major`` share of each class in the first half of the classes
    (``c < num_classes // 2``) and ``1 - major`` of each other class; part 1 holds the rest, so the
    two parts are disjoint and cover every example.
    """
    targets = torch.as_tensor(targets).long().cpu()
    if part not in (0, 1) or not 0.0 <= major <= 1.0:
        raise ValueError(f"part must be 0 or 1 and major in [0, 1], got part={part}, major={major}")
    if targets.ndim != 1 or targets.numel() and not 0 <= targets.min() <= targets.max() < num_classes:
        raise ValueError(f"targets must be a 1-D tensor of class ids in [0, {num_classes})")
    gen, chosen = torch.Generator().manual_seed(seed), []
    for c in range(num_classes):
        members = (targets == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        k = round((major if c < num_classes // 2 else 1.0 - major) * len(members))
        chosen.append(members[:k] if part == 0 else members[k:])
    return torch.cat(chosen).sort().values


class TensorLoader:
    """Re-iterable batches ``(inputs float32 [B, C, H, W] normalised, targets int64 [B])`` on ``device``.

    ``images`` uint8 [N, C, H, W] and ``labels`` [N] live on the device; ``indices`` [M] picks the
    examples used. Each iteration is one epoch; epoch e shuffles and augments with seed (seed, e).
    """

    def __init__(self, images, labels, indices, mean, std, batch_size=500, augment=False, shuffle=False,
                 seed=0, drop_last=False):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.images, self.labels, self.indices = images, labels, indices.to(images.device)
        self.batch_size, self.shuffle, self.seed, self.drop_last = int(batch_size), shuffle, seed, drop_last
        self.augment, self.epoch, self.device = parse_augment(augment), 0, images.device
        self.pinned_epoch = None  # set by fixed_order(): every pass is this epoch
        std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)  # x_norm = x_uint8 * scale - shift = (x / 255 - mean) / std
        self.shift = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) / std

    @property
    def num_examples(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        n, b = len(self.indices), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def fixed_order(self, epoch: int = 0) -> "TensorLoader":
        """A loader over the same examples whose every pass is epoch ``epoch`` (same shuffle, same
        augmentation): what the library's statistics passes iterate. This loader is not changed."""
        pinned = copy.copy(self)
        pinned.pinned_epoch = int(epoch)
        return pinned

    def __iter__(self):
        epoch = self.epoch if self.pinned_epoch is None else self.pinned_epoch
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + epoch)
        if self.pinned_epoch is None:
            self.epoch += 1
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=gen, device=self.device)]
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = augment_batch(self.images[idx], self.augment, gen) if self.augment else self.images[idx]
            yield x.float() * self.scale - self.shift, self.labels[idx]

    def __repr__(self) -> str:
        pinned = "" if self.pinned_epoch is None else f", fixed at epoch {self.pinned_epoch}"
        return (f"TensorLoader({self.num_examples} examples, batch_size={self.batch_size}, "
                f"augment={'+'.join(self.augment) or False}, shuffle={self.shuffle}, device={self.device}{pinned})")


class FolderLoader:
    """A torch DataLoader over an ImageFolder that yields ``(float32 [B, 3, 224, 224], int64 [B])`` on device."""

    def __init__(self, dataloader, device):
        self.dataloader, self.device = dataloader, device

    def __len__(self) -> int:
        return len(self.dataloader)

    def fixed_order(self) -> "FolderLoader":
        """The same batches in one fixed order on every pass (see :func:`repairlib.plumbing.fixed_order`)."""
        return FolderLoader(fixed_order(self.dataloader), self.device)

    def __iter__(self):
        for x, y in self.dataloader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def _image_folder(split: str, root, augment) -> torchvision.datasets.ImageFolder:
    """ImageNet at <root>/imagenet/{train,val} (or <root>/{train,val}); 'test' reads val/."""
    from torchvision import transforms as T

    folder = "train" if split == "train" else "val"
    candidates = [p for r in _roots(root) for p in (r / "imagenet" / folder, r / folder)]
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        raise _not_found("imagenet", split, candidates, "", root)
    crop = ([T.RandomResizedCrop(224), T.RandomHorizontalFlip()] if split == "train" and augment
            else [T.Resize(256), T.CenterCrop(224)])
    normalise = T.Normalize(*_INFO["imagenet"][3:5])
    return torchvision.datasets.ImageFolder(path, T.Compose([*crop, T.ToTensor(), normalise]))


def _pick(n: int, indices, subset) -> torch.Tensor:
    """Example ids [M]: ``indices`` (default all n), then the first ``subset`` of a fixed permutation."""
    picked = torch.arange(n) if indices is None else torch.as_tensor(indices).long().cpu()
    if picked.ndim != 1 or len(picked) and not 0 <= picked.min() <= picked.max() < n:
        raise ValueError(f"indices must be a 1-D tensor of example ids in [0, {n})")
    return picked if subset is None else picked[subset_indices(len(picked), int(subset))]


def loader(name: str, split: str, batch_size: int = 500, subset=None, augment=False, root=None, device=None,
           shuffle=None, seed=0, indices=None, drop_last=False, num_workers=None):
    """Batches of a data set: iterate for ``(inputs float32 [B, C, H, W] normalised, targets int64 [B])``.

    ``subset=k`` keeps the first k of a fixed permutation (seed 0, so every call and every training seed
    sees the same examples) of the examples picked by ``indices`` (LongTensor, default all).
    ``augment``: False, True (= 'flip+translate') or a '+' combination of flip, translate, cutout.
    ``shuffle`` defaults to True for train; ``seed`` drives shuffling and augmentation.
    ``num_workers`` is used by ImageNet only (default min(8, cpu count)).
    """
    name, split = canonical_name(name), _check_split(split)
    device, shuffle = default_device(device), split == "train" if shuffle is None else shuffle
    if name == "imagenet":
        ds = _image_folder(split, root, augment)
        dl = torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, _pick(len(ds), indices, subset).tolist()), batch_size=batch_size,
            shuffle=shuffle, num_workers=min(8, os.cpu_count() or 1) if num_workers is None else num_workers,
            generator=torch.Generator().manual_seed(seed), drop_last=drop_last, pin_memory=device.type == "cuda")
        return FolderLoader(dl, device)
    images, labels = load_tensors(name, split, root)
    key = (*_memo_key(name, split, root), str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = (images.to(device), labels.to(device))
    mean, std = _INFO[name][3:5]
    picked = _pick(len(labels), indices, subset)
    return TensorLoader(*_ON_DEVICE[key], picked, mean, std, batch_size, augment, shuffle, seed, drop_last)
