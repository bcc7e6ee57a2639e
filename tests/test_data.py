"""Datasets: loading by name, subsets, fingerprints, clear errors, exact normalisation."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torchvision import transforms

from pipeline.data import (
    DEBIAN_FASHION_MNIST,
    DatasetError,
    first_per_class,
    load_dataset,
    load_splits,
    to_model_input,
)
from pipeline.splits import ValSplit, parse_val_split


def test_synthetic_is_deterministic_and_options_apply():
    a = load_dataset("synthetic:classes=3,train=30,test=9", "train")
    b = load_dataset("synthetic:classes=3,train=30,test=9", "train")
    assert a.images.shape == (30, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.num_classes == 3 and np.bincount(a.labels).tolist() == [10, 10, 10]
    assert a.fingerprint == b.fingerprint and torch.equal(a.images, b.images)
    assert a.spec == "synthetic:classes=3,test=9,train=30"
    test = load_dataset("synthetic:classes=3,train=30,test=9", "test")
    assert len(test) == 9 and test.fingerprint != a.fingerprint
    # The test split is drawn apart from the training split: at equal sizes no test image is a training image.
    train, test = load_dataset("synthetic:train=40,test=40", "train"), load_dataset("synthetic:train=40,test=40", "test")
    seen = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in seen for img in test.images)


def test_subset_keeps_first_n_per_class_in_order():
    labels = np.array([2, 0, 1, 0, 2, 0, 1, 1, 2, 0])
    assert first_per_class(labels, 2).tolist() == [0, 1, 2, 3, 4, 6]
    full = load_dataset("synthetic", "train")
    sub = load_dataset("synthetic", "train", subset=5)
    assert len(sub) == 5 * full.num_classes and sub.subset == 5
    keep = first_per_class(full.labels, 5)
    assert torch.equal(sub.images, full.images[keep]) and np.array_equal(sub.labels, full.labels[keep])
    assert sub.describe()["subset"] == 5 and sub.fingerprint != full.fingerprint
    with pytest.raises(ValueError, match=">= 1"):
        first_per_class(labels, 0)
    # The test split's subset (--test-subset) is the first N of each test class as well.
    spec = "synthetic:classes=4,train=40,test=40"
    test, test_sub = load_dataset(spec, "test"), load_dataset(spec, "test", subset=3)
    keep = first_per_class(test.labels, 3)
    assert len(test_sub) == 12 and torch.equal(test_sub.images, test.images[keep]) and test_sub.describe()["subset"] == 3
    assert load_splits(spec, test_subset=3)[1].fingerprint == test_sub.fingerprint


def test_fingerprint_sees_one_pixel_and_one_label():
    base = load_dataset("synthetic", "train", subset=2)
    pixel = load_dataset("synthetic", "train", subset=2)
    pixel.images[3, 0, 0, 0] ^= 1
    label = load_dataset("synthetic", "train", subset=2)
    label.labels[0] = (label.labels[0] + 1) % label.num_classes
    assert len({base.fingerprint, pixel.fingerprint, label.fingerprint}) == 3


def test_to_model_input_equals_to_tensor_and_normalize_bitwise():
    """The recipe's ToTensor + Normalize (on HWC arrays, as mdistiller feeds them)."""
    data = load_dataset("synthetic", "train", subset=1)
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    expected = torch.stack([reference(img.permute(1, 2, 0).numpy()) for img in data.images])
    got = to_model_input(data.images, data.mean, data.std)
    assert torch.equal(got, expected)
    assert to_model_input(data.images, data.mean, data.std, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def _write_idx(folder, prefix, images, labels, gz=True):
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(images), 28, 28) + images.tobytes())
    with opener(folder / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(struct.pack(">II", 2049, len(labels)) + labels.tobytes())


def test_fashion_mnist_reads_idx_files_from_a_given_root(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = (np.arange(20) % 10).astype(np.uint8)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw, "train", images, labels, gz=False)
    _write_idx(raw, "t10k", images[:10], labels[:10], gz=True)
    train, test = load_splits("fashion-mnist", root=tmp_path)
    assert train.images.shape == (20, 1, 28, 28) and np.array_equal(train.images[:, 0].numpy(), images)
    assert test.labels.tolist() == list(range(10)) and train.classes[9] == "Ankle boot"
    assert train.mean == (0.2860,) and train.in_channels == 1


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_copy():
    test = load_dataset("fashion-mnist", "test", root="/nonexistent")
    assert len(test) == 10_000 and test.images.shape[1:] == (1, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_missing_cifar_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DatasetError, match=r"cifar100 not found: expected .*cifar-100-python"):
        load_dataset("cifar100", "train", root=tmp_path, download=False)


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    # Created out of alphabetical order: labels index the sorted names, whatever order the
    # filesystem lists the folders in.
    for split in ("train", "val"):
        for c, name in enumerate(["dog", "cat", "ant"]):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3 if name != "ant" else 1):
                img = np.full((20 + i, 24, 3), 40 * c + i, dtype=np.uint8)
                Image.fromarray(img).save(tmp_path / split / name / f"{i}.png")
    train = load_dataset("imagefolder", "train", root=tmp_path)
    assert train.classes == ["ant", "cat", "dog"] and len(train) == 7 and not train.fixed_size
    assert train.labels.tolist() == [0, 1, 1, 1, 2, 2, 2]
    assert train.image(6).shape == (3, 22, 24) and int(train.image(6)[0, 0, 0]) == 2  # dog/2.png
    assert train.image(2).shape == (3, 21, 24) and int(train.image(2)[0, 0, 0]) == 41  # cat/1.png
    # An image rewritten in place (same name, other pixels and byte size) makes another dataset.
    before, image = train.fingerprint, tmp_path / "train" / "dog" / "0.png"
    size = image.stat().st_size
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(image)
    assert image.stat().st_size != size and load_dataset("imagefolder", "train", root=tmp_path).fingerprint != before
    resized = load_dataset("imagefolder:resize=16", "test", root=tmp_path)
    assert resized.fixed_size and resized.batch([0, 5]).shape == (2, 3, 16, 16)
    assert resized.fingerprint != load_dataset("imagefolder", "test", root=tmp_path).fingerprint
    with pytest.raises(DatasetError, match="no folder"):
        load_dataset("imagefolder", "train", root=tmp_path / "missing")


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="unknown dataset 'cifar1000'"):
        load_dataset("cifar1000")
    with pytest.raises(ValueError, match="has no option 'colour'"):
        load_dataset("synthetic:colour=1")
    with pytest.raises(ValueError, match="key=value"):
        load_dataset("synthetic:classes")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("synthetic", "validation")


def _rows(images, full) -> list[int]:
    """Where each image of `images` sits in `full` (synthetic images are all distinct)."""
    index = {bytes(img.numpy()): i for i, img in enumerate(full.images)}
    return sorted(index[bytes(img.numpy())] for img in images)


def test_a_validation_split_is_drawn_at_random_per_class_from_its_seed():
    """A folder's file order is rarely random (cameras, shoots, writers): the held-out images
    are drawn per class from a seed, recorded in the split's identity."""
    spec = "synthetic:classes=3,train=60,test=9"
    full = load_dataset(spec, "train")
    val, train = load_dataset(spec, "val", val_split=4), load_dataset(spec, "train", val_split=4)
    assert len(val) == 12 and len(train) == 48 and np.bincount(val.labels).tolist() == [4, 4, 4]
    held = _rows(val.images, full)
    assert not set(held) & set(_rows(train.images, full))  # no image in both
    assert held != sorted(np.concatenate([np.flatnonzero(full.labels == c)[-4:] for c in range(3)]).tolist())
    assert held == _rows(load_dataset(spec, "val", val_split=4).images, full)  # the same draw again
    other = load_dataset(spec, "val", val_split=parse_val_split(4, seed=1))
    assert _rows(other.images, full) != held
    assert val.describe()["val_split"] == {"size": 4, "draw": "random", "seed": 0}
    assert other.describe()["val_split"] == {"size": 4, "draw": "random", "seed": 1}
    assert train.fingerprint != load_dataset(spec, "train", val_split="last:4").fingerprint
    assert np.bincount(load_dataset(spec, "val", val_split=0.25).labels).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="leave at least one sample"):
        load_dataset(spec, "val", val_split=20)


def test_the_last_n_split_stays_available_by_name_and_old_records_mean_it():
    spec = "synthetic:classes=3,train=60,test=9"
    full = load_dataset(spec, "train")
    val = load_dataset(spec, "val", val_split="last:4")
    for c in range(3):  # the last 4 of each class, in dataset order
        rows = np.flatnonzero(full.labels == c)[-4:]
        assert torch.equal(val.images[val.labels == c], full.images[rows])
    # Recorded as earlier versions recorded it (a plain number), so their stores still match.
    assert val.describe()["val_split"] == 4
    assert ValSplit.from_record(4) == ValSplit(4, "last") and ValSplit.from_record(None) is None
    assert ValSplit.from_record({"size": 0.1, "draw": "random", "seed": 3}) == ValSplit(0.1, "random", 3)
    # A first-N subset is the same with or without a validation split, and records both.
    sub, sub_val = load_dataset(spec, "train", subset=5), load_dataset(spec, "train", subset=5, val_split="last:4")
    assert torch.equal(sub.images, sub_val.images) and sub_val.describe()["val_split"] == 4
    assert sub.describe()["val_split"] is None


def test_val_split_of_one_per_class_is_accepted_and_one_that_holds_out_nothing_is_refused():
    """'1' is one sample per class (an int, not the fraction 1.0); a fraction that rounds to no
    sample of a class would otherwise hold out the whole class (rows[-0:] is every row)."""
    assert parse_val_split("1") == ValSplit(1) and type(parse_val_split("1").size) is int
    assert parse_val_split("100") == ValSplit(100) and type(parse_val_split(2.0).size) is int
    assert parse_val_split("0.1") == ValSplit(0.1) and parse_val_split("last:0.1") == ValSplit(0.1, "last")
    assert parse_val_split(None) is None and parse_val_split("") is None
    for bad in ("0", "-3", "1.5", "ten", "first:3", "last:0"):
        with pytest.raises(ValueError, match="val_split"):
            parse_val_split(bad)
    spec = "synthetic:classes=3,train=60,test=9"  # 20 training samples per class
    full, val = load_dataset(spec, "train"), load_dataset(spec, "val", val_split="last:1")
    assert np.bincount(val.labels).tolist() == [1, 1, 1]
    for c in range(3):  # the last sample of each class
        assert torch.equal(val.images[val.labels == c][0], full.images[np.flatnonzero(full.labels == c)[-1]])
    assert len(load_dataset(spec, "train", val_split=1)) == 57
    with pytest.raises(ValueError, match="val_split 0.02 holds out 0 of the 20 training samples of class 0"):
        load_dataset(spec, "val", val_split=0.02)
