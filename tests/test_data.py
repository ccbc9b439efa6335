"""repairlib.data: miniature files in each data set's official format, read by the real torchvision classes."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch
import torchvision
from PIL import Image

from repairlib import data


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path_factory):
    """No $REPAIR_DATA, no downloads, a private cache, and empty memos for every test."""
    monkeypatch.delenv("REPAIR_DATA", raising=False)
    monkeypatch.setenv("REPAIR_DOWNLOAD", "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
    data._TENSORS.clear()
    data._ON_DEVICE.clear()


@pytest.fixture
def no_md5(monkeypatch):
    """CIFAR and SVHN md5-check their files against the real ones; the miniatures cannot match, so the
    test replaces only that check (the module-level ``check_integrity`` used by these two modules) with
    a file-exists check. Everything else is torchvision's own loading code."""
    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


def fake_images(n, c, h, w, seed=0):
    return np.random.default_rng(seed).integers(1, 256, size=(n, c, h, w), dtype=np.uint8)


def write_idx(path, array):
    """IDX format (big-endian): 0x00 0x00, type 0x08 (uint8), ndim, then int32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(root, folder, n_train=12, n_test=6):
    """Gzipped IDX files named as in torchvision's ``MNIST.resources``, in <root>/<folder>/raw/."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x, y = fake_images(n, 1, 28, 28, seed=n)[:, 0], np.arange(n) % 10
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y)
        out[split] = (x, y)
    return out


def write_cifar(root, hundred=False):
    """Python pickles as in cifar-10-batches-py/ and cifar-100-python/ (rows of 3072 = R, G, B planes)."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    files = {"train": ["train"], "test": ["test"]} if hundred else {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    out = {}
    for split, names in files.items():
        xs, ys = [], []
        for i, name in enumerate(names):
            x = fake_images(3, 3, 32, 32, seed=10 * i + len(split))
            y = [(3 * i + j) % (100 if hundred else 10) for j in range(3)]
            with open(folder / name, "wb") as f:
                pickle.dump({"data": x.reshape(3, -1), label_key: y}, f)
            xs.append(x)
            ys += y
        out[split] = (np.concatenate(xs), np.array(ys))
    meta_name, meta_key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    with open(folder / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(100 if hundred else 10)]}, f)
    return out


def write_svhn(root):
    """``{train,test}_32x32.mat``: X uint8 [32, 32, 3, N], y [N, 1] with the digit 0 stored as 10."""
    out = {}
    for split, n in (("train", 7), ("test", 4)):
        x = fake_images(n, 3, 32, 32, seed=n)
        y = np.arange(n) % 10  # includes the digit 0, stored as 10 in the official files
        scipy.io.savemat(root / f"{split}_32x32.mat",
                         {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y)[:, None].astype(np.uint8)})
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("FashionMNIST", "FashionMNIST")])
def test_mnist_idx_files_load_through_torchvision(tmp_path, name, folder):
    written = write_mnist(tmp_path, folder)
    for split, (x, y) in written.items():
        images, labels = data.load_tensors(name, split, root=tmp_path)
        assert images.dtype == torch.uint8 and images.shape == (len(x), 1, 28, 28)
        assert torch.equal(images[:, 0], torch.from_numpy(x)) and labels.tolist() == y.tolist()
    assert data.load_tensors(name, "test", root=tmp_path)[0] is images  # memoised


@pytest.mark.parametrize("name, hundred", [("cifar10", False), ("CIFAR-100", True)])
def test_cifar_pickles_load_through_torchvision(tmp_path, no_md5, name, hundred):
    written = write_cifar(tmp_path, hundred)
    for split, (x, y) in written.items():
        images, labels = data.load_tensors(name, split, root=tmp_path)
        assert images.shape == (len(x), 3, 32, 32) and labels.dtype == torch.int64
        assert torch.equal(images, torch.from_numpy(x)) and labels.tolist() == y.tolist()


def test_svhn_mat_loads_through_torchvision_with_labels_0_to_9(tmp_path, no_md5):
    written = write_svhn(tmp_path)
    for split, (x, y) in written.items():
        images, labels = data.load_tensors("svhn", split, root=tmp_path)
        assert torch.equal(images, torch.from_numpy(x)) and labels.tolist() == y.tolist()
        assert labels[0] == 0 and labels.max() <= 9


def test_repair_data_env_is_searched(tmp_path, no_md5, monkeypatch):
    x, _ = write_cifar(tmp_path)["test"]
    monkeypatch.setenv("REPAIR_DATA", str(tmp_path))
    assert torch.equal(data.load_tensors("cifar10", "test")[0], torch.from_numpy(x))


@pytest.mark.skipif(not data.SYSTEM_FASHION_MNIST.is_dir(),
                    reason="needs the Debian package dataset-fashion-mnist (installed by .ci/setup)")
def test_real_fashion_mnist_from_system_copy():
    images, labels = data.load_tensors("fashion-mnist", "train")
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.bincount().tolist() == [6000] * 10
    inputs, targets = next(iter(data.loader("fashion_mnist", "test", batch_size=10000, device="cpu")))
    assert inputs.shape == (10000, 1, 28, 28) and targets.unique().tolist() == list(range(10))
    assert abs(inputs.mean().item()) < 0.05 and abs(inputs.std().item() - 1) < 0.05  # info's mean/std fit


def test_missing_data_set_names_it_and_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="'mnist'") as err:
        data.load_tensors("mnist", "train", root=tmp_path / "nowhere")
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / "nowhere") in str(err.value) and "REPAIR_DATA" in str(err.value)
    with pytest.raises(data.DatasetNotFoundError, match="'imagenet'"):
        data.loader("imagenet", "test", root=tmp_path)


def test_failed_download_is_a_data_set_not_found(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setenv("REPAIR_DOWNLOAD", "1")
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(data.DatasetNotFoundError, match="download into .* failed"):
        data.load_tensors("mnist", "test", root=tmp_path)


def test_unknown_names_and_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="cifar100.*imagenet"):
        data.info("cifar11")
    with pytest.raises(ValueError, match="split"):
        data.load_tensors("mnist", "validation")
    with pytest.raises(ValueError, match="rotate"):
        data.parse_augment("flip+rotate")
    assert data.info("Fashion_MNIST")["in_channels"] == 1 and data.info("cifar100")["num_classes"] == 100


def test_loader_normalises_and_batches(tmp_path):
    x, y = write_mnist(tmp_path, "MNIST", n_train=12)["train"]
    loader = data.loader("mnist", "train", batch_size=5, root=tmp_path, device="cpu", shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(t) for _, t in batches] == [5, 5, 2]
    inputs = torch.cat([b for b, _ in batches])
    mean, std = data.info("mnist")["mean"][0], data.info("mnist")["std"][0]
    expected = (torch.from_numpy(x).float()[:, None] / 255 - mean) / std
    assert inputs.dtype == torch.float32 and torch.allclose(inputs, expected, atol=1e-5)
    assert torch.cat([t for _, t in batches]).tolist() == y.tolist()
    assert len(data.loader("mnist", "train", batch_size=5, root=tmp_path, drop_last=True)) == 2


def test_subsets_indices_and_shuffling_are_deterministic(tmp_path):
    write_mnist(tmp_path, "MNIST", n_train=40)

    def targets(**kw):
        return torch.cat([t for _, t in data.loader("mnist", "train", batch_size=7, root=tmp_path, **kw)])

    sub = data.subset_indices(40, 10)
    assert torch.equal(sub, data.subset_indices(40, 10)) and len(set(sub.tolist())) == 10
    assert not torch.equal(sub, data.subset_indices(40, 10, seed=1))
    assert torch.equal(targets(subset=10, shuffle=False), torch.arange(40)[sub] % 10)
    assert torch.equal(targets(indices=torch.tensor([3, 1, 4]), shuffle=False), torch.tensor([3, 1, 4]))
    one = data.loader("mnist", "train", batch_size=40, root=tmp_path, seed=3)
    epoch1, epoch2 = next(iter(one))[1], next(iter(one))[1]
    assert torch.equal(epoch1, targets(seed=3)) and not torch.equal(epoch1, epoch2)
    assert sorted(epoch1.tolist()) == sorted(epoch2.tolist())
    with pytest.raises(ValueError, match="indices"):
        data.loader("mnist", "train", root=tmp_path, indices=torch.tensor([40]))
    with pytest.raises(ValueError, match="subset"):
        data.loader("mnist", "train", root=tmp_path, subset=41)


def test_biased_split_proportions_disjoint_and_covering():
    targets = torch.arange(10).repeat_interleave(100)[torch.randperm(1000, generator=torch.Generator().manual_seed(1))]
    part0, part1 = (data.biased_split(targets, p, 10, major=0.8, seed=5) for p in (0, 1))
    assert torch.equal(torch.cat([part0, part1]).sort().values, torch.arange(1000))
    assert targets[part0].bincount(minlength=10).tolist() == [80] * 5 + [20] * 5
    assert targets[part1].bincount(minlength=10).tolist() == [20] * 5 + [80] * 5
    assert torch.equal(part0, data.biased_split(targets, 0, 10, seed=5))
    assert not torch.equal(part0, data.biased_split(targets, 0, 10, seed=6))
    with pytest.raises(ValueError):
        data.biased_split(targets, 2, 10)


def known_batch(n, size=8):
    """n copies of one image with no zero pixels (all distinct for size <= 15)."""
    return (torch.arange(size * size) % 255 + 1).to(torch.uint8).view(1, 1, size, size).repeat(n, 1, 1, 1)


def shifted(image, dy, dx):
    """Reference translate: out[i, j] = image[i + dy, j + dx], zero outside."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = \
        image[..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    return out


def test_flip_mirrors_about_half_of_the_examples():
    x = known_batch(400)
    out = data.augment_batch(x, "flip", torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert (flipped | (out == x).flatten(1).all(1)).all()
    assert 120 < flipped.sum() < 280


def test_translate_shifts_each_example_by_up_to_two_pixels():
    x = known_batch(500)
    out = data.augment_batch(x, "translate", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    shifts = set()
    for example in out:
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(example, shifted(x[0], dy, dx))]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) == 25  # every shift in [-2, 2]^2 occurs, per example


def test_cutout_zeros_one_square_scaled_to_the_image():
    for size, side in ((32, 12), (28, 10)):
        out = data.augment_batch(known_batch(50, size), "cutout", torch.Generator().manual_seed(0))
        zero = out[:, 0] == 0
        assert (zero.flatten(1).sum(1) == side * side).all()
        rows, cols = zero.any(2).sum(1), zero.any(1).sum(1)
        assert (rows == side).all() and (cols == side).all()  # one square, not scattered pixels


def test_augmented_loader_keeps_shapes_and_changes_pixels(tmp_path, no_md5):
    write_cifar(tmp_path)
    plain = next(iter(data.loader("cifar10", "train", batch_size=15, root=tmp_path, shuffle=False)))[0]
    aug = next(iter(data.loader("cifar10", "train", batch_size=15, root=tmp_path, shuffle=False,
                                augment="flip+translate+cutout")))[0]
    assert aug.shape == plain.shape == (15, 3, 32, 32) and aug.dtype == torch.float32
    assert not torch.equal(aug, plain)


def test_image_folder_loader(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            (tmp_path / "imagenet" / folder / wnid).mkdir(parents=True)
            for i, ext in enumerate(("png", "JPEG", "png")):
                pixels = rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "imagenet" / folder / wnid / f"img{i}.{ext}")
    train = data.loader("imagenet", "train", batch_size=4, root=tmp_path, augment=True, num_workers=0,
                        device="cpu")
    assert len(train) == 2
    shapes = [(tuple(x.shape), x.dtype, t.dtype) for x, t in train]
    assert shapes == [((4, 3, 224, 224), torch.float32, torch.int64), ((2, 3, 224, 224), torch.float32, torch.int64)]
    test = data.loader("imagenet", "test", batch_size=6, root=tmp_path, num_workers=0, device="cpu")
    (a, ta), (b, _) = next(iter(test)), next(iter(test))
    assert torch.equal(a, b) and ta.tolist() == [0, 0, 0, 1, 1, 1]  # "test" reads val/, centre crops
