"""Datasets as uint8 images + labels, with the constants and fingerprints provenance needs.

Every dataset is an `ImageSet`: uint8 CHW images, int64 labels, class names, the
normalisation constants its recipe uses, and a `fingerprint` that identifies exactly which
pixels and labels it holds (a logit store records it, a student checks it). Augmentation is
not here: `pipeline.views` turns an image plus replayable parameters into a view, and
`to_model_input` normalises a uint8 batch on the device the model runs on.

Names: `cifar100`, `cifar10` (torchvision), `fashion-mnist` (Debian's copy, a given root or
torchvision), `imagefolder` (any ImageFolder tree, decoded lazily), `synthetic` (tiny and
deterministic, for tests). Options ride in the name as `name:key=value,...`, e.g.
`synthetic:classes=4,train=64` or `imagefolder:resize=64`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pipeline.errors import RLDError
from pipeline.splits import ValSplit, first_per_class, parse_val_split

DEFAULT_ROOT_ENV = "RLD_DATA_ROOT"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SPLITS = ("train", "val", "test")


class DatasetError(RLDError, RuntimeError):
    """A dataset is missing or malformed; the message says where and what was expected."""


@dataclass
class ImageSet:
    """Images and labels of one split, as the teacher and student both see them.

    `images` is a uint8 tensor [N, C, H, W] for sets held in memory; folder-backed sets
    leave it None and decode `files[i]` on demand (in DataLoader workers).
    """

    name: str
    split: str
    labels: np.ndarray
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    images: torch.Tensor | None = None
    files: list[str] | None = None
    resize: int | None = None
    subset: int | None = None
    val_split: ValSplit | None = None
    options: dict[str, Any] = field(default_factory=dict)
    root: str | None = None  # the data root it was read from (a record: not part of its identity)
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (self.images is None) == (self.files is None):
            raise ValueError("an ImageSet holds either images in memory or a list of files")
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.dim() != 4:
                raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
            if len(self.images) != len(self.labels):
                raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return len(self.mean)

    @property
    def fixed_size(self) -> bool:
        """True when every image has the same shape, so batches can be gathered at once."""
        return self.images is not None or self.resize is not None

    def image(self, index: int) -> torch.Tensor:
        """One uint8 CHW image."""
        if self.images is not None:
            return self.images[index]
        return _decode(self.files[index], self.in_channels, self.resize)

    def batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """uint8 [B, C, H, W] for a fixed-size set."""
        if self.images is not None:
            return self.images[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        if not self.fixed_size:
            raise ValueError(f"{self.name} images vary in size; use image(i) per sample")
        return torch.stack([self.image(int(i)) for i in indices])

    def select(self, indices: np.ndarray, subset: int | None = None, *, split: str | None = None,
               val_split: ValSplit | None = None) -> "ImageSet":
        """The samples at `indices`, recording how they were chosen."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            name=self.name, split=split or self.split, labels=self.labels[indices], classes=self.classes,
            mean=self.mean, std=self.std,
            images=None if self.images is None else self.images[torch.from_numpy(indices)],
            files=None if self.files is None else [self.files[i] for i in indices],
            resize=self.resize, subset=subset, val_split=val_split, options=self.options, root=self.root,
        )

    @property
    def fingerprint(self) -> str:
        """sha256 of labels and pixels (files: relative paths, labels and byte sizes)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(f"labels:{self.labels.shape}".encode())
            h.update(self.labels.astype("<i8").tobytes())
            if self.images is not None:
                h.update(f"images:{tuple(self.images.shape)}".encode())
                h.update(self.images.contiguous().numpy().tobytes())
            else:
                # Hashing every pixel of an ImageNet-size tree means reading it all; the
                # relative path, label and byte size of each file identify it well enough.
                root = os.path.commonpath(self.files) if self.files else ""
                for path in self.files:
                    h.update(f"{os.path.relpath(path, root)}:{os.path.getsize(path)}\n".encode())
                h.update(f"resize:{self.resize}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    @property
    def spec(self) -> str:
        """The name `load_dataset` takes to load this set again, options included."""
        options = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}:{options}" if options else self.name

    @property
    def normalization(self) -> dict[str, list[float]]:
        """The constants the model input is normalised with (part of a store's identity)."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def describe(self, *, class_names: bool = False) -> dict[str, Any]:
        """The provenance record a logit store and a student compare (names optional: long)."""
        return {
            "name": self.name,
            "spec": self.spec,
            "split": self.split,
            "size": len(self),
            "num_classes": self.num_classes,
            "subset": self.subset,
            "val_split": None if self.val_split is None else self.val_split.record(),
            "fingerprint": self.fingerprint,
            **({"classes": list(self.classes)} if class_names else {}),
        }


# ---------------------------------------------------------------------------------------
# Loading by name


def parse_dataset_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'synthetic:classes=4,train=64' -> ('synthetic', {'classes': 4, 'train': 64})."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"dataset option {item!r} in {spec!r} must look like key=value")
        options[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return name.strip().lower(), options


def load_dataset(
    spec: str,
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    subset: int | None = None,
    val_split: ValSplit | int | float | str | None = None,
    download: bool = True,
) -> ImageSet:
    """Load a split by name; `subset` keeps the first N samples of each class (in order).

    `val_split` (a `pipeline.splits.ValSplit`, or what `parse_val_split` reads: 100, 0.1,
    "last:100") holds out samples of each class of the training split: split "val" is them,
    split "train" the rest, of which `subset` keeps the first N of each class.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "val" and val_split is None:
        raise ValueError("split 'val' needs val_split (samples per class, or a fraction of each class)")
    data = _load_raw(spec, "test" if split == "test" else "train", root, download)
    if split == "test":
        return data if subset is None else data.select(first_per_class(data.labels, subset), subset=subset)
    train, val = _hold_out(data, val_split, subset)
    return val if split == "val" else train


def _load_raw(spec: str, split: str, root: str | os.PathLike | None, download: bool) -> ImageSet:
    """The whole "train" or "test" split as its loader reads it (options checked)."""
    name, options = parse_dataset_spec(spec)
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(_LOADERS)}")
    loader = _LOADERS[name]
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("split", "root", "download")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option {unknown[0]!r}; its options: {accepted or 'none'}")
    root_path = Path(root or os.environ.get(DEFAULT_ROOT_ENV, "data")).expanduser()
    data = loader(split, root_path, download=download, **options)
    data.options = options
    data.root = str(root_path.resolve())
    return data


def _hold_out(data: ImageSet, val_split: ValSplit | int | float | str | None,
              subset: int | None) -> tuple[ImageSet, ImageSet | None]:
    """(training samples, validation samples or None) of a whole training split."""
    val = None
    val_split = parse_val_split(val_split)
    if val_split is not None:
        held_out = val_split.held_out(data.labels)
        val = data.select(held_out, split="val", val_split=val_split)
        data = data.select(np.setdiff1d(np.arange(len(data)), held_out), val_split=val_split)
    if subset is not None:
        data = data.select(first_per_class(data.labels, subset), subset=subset, val_split=val_split)
    return data, val


def _load_cifar(split: str, root: Path, *, download: bool, classes: int) -> ImageSet:
    import torchvision

    cls = torchvision.datasets.CIFAR100 if classes == 100 else torchvision.datasets.CIFAR10
    name = f"cifar{classes}"
    folder = root / cls.base_folder
    try:
        ds = cls(str(root), train=split == "train", download=False)
    except RuntimeError:
        if not download:
            raise DatasetError(_cifar_missing(name, folder)) from None
        try:
            ds = cls(str(root), train=split == "train", download=True)
        except Exception as err:  # no network, proxy, checksum...
            raise DatasetError(f"{_cifar_missing(name, folder)} (download failed: {err})") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if classes == 100 else (CIFAR10_MEAN, CIFAR10_STD)
    return ImageSet(name, split, np.asarray(ds.targets), list(ds.classes), mean, std, images=images)


def _cifar_missing(name: str, folder: Path) -> str:
    return (
        f"{name} not found: expected torchvision's python-version files in {folder}/ "
        f"(download {name.replace('cifar', 'cifar-')}-python.tar.gz from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html and untar it in {folder.parent}/)"
    )


def _read_idx(path: Path, offset: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return np.frombuffer(bytearray(f.read()), dtype=np.uint8, offset=offset)


def _load_fashion_mnist(split: str, root: Path, *, download: bool) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    candidates = [root / "FashionMNIST" / "raw", root, DEBIAN_FASHION_MNIST]
    for folder in candidates:
        found = [_first_existing(folder / n, folder / f"{n}.gz") for n in names]
        if all(found):
            images = _read_idx(found[0], 16).reshape(-1, 1, 28, 28)
            labels = _read_idx(found[1], 8)
            if len(images) != len(labels):
                raise DatasetError(f"{found[0]} holds {len(images)} images but {found[1]} {len(labels)} labels")
            break
    else:
        if not download:
            raise DatasetError(
                f"fashion-mnist not found in {', '.join(map(str, candidates))}: "
                "`apt-get install dataset-fashion-mnist` or put the IDX files there"
            )
        import torchvision

        try:
            ds = torchvision.datasets.FashionMNIST(str(root), train=split == "train", download=True)
        except Exception as err:
            raise DatasetError(
                f"fashion-mnist not found locally and the download failed ({err}); "
                "`apt-get install dataset-fashion-mnist` or put the IDX files in "
                f"{root / 'FashionMNIST' / 'raw'}"
            ) from None
        images, labels = ds.data.numpy()[:, None], ds.targets.numpy()
    return ImageSet(
        "fashion-mnist", split, labels, FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
        images=torch.from_numpy(np.ascontiguousarray(images)),
    )


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _load_imagefolder(
    split: str, root: Path, *, download: bool, resize: int | None = None, channels: int = 3,
    test_split: str = "val",
) -> ImageSet:
    """`root/train/<class>/*.jpg` and `root/<test_split>/<class>/*` (ImageNet's layout).

    Hidden folders and files (names starting with '.', such as `.ipynb_checkpoints`) are
    not classes or images. Both splits must name the same classes: a label is the index of
    its class among the sorted names, so a class missing from one split would shift them.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

    folder = root / ("train" if split == "train" else test_split)
    if not folder.is_dir():
        raise DatasetError(f"imagefolder: no folder {folder} (expected {folder}/<class>/<image files>)")
    _check_same_classes(root / "train", root / test_split)
    classes = _class_folders(folder)
    if not classes:
        raise DatasetError(f"imagefolder: no class folders in {folder} (expected {folder}/<class>/<image files>)")

    def is_image(path: str) -> bool:
        visible = not any(part.startswith(".") for part in Path(path).relative_to(folder).parts)
        return visible and has_file_allowed_extension(path, IMG_EXTENSIONS)

    try:
        samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, is_valid_file=is_image)
    except FileNotFoundError as err:  # a class folder without images
        raise DatasetError(f"imagefolder: {folder}: {err} (extensions {', '.join(IMG_EXTENSIONS)})") from None
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels, (0.5,) * channels)
    return ImageSet(
        "imagefolder", split, [label for _, label in samples], classes, mean, std,
        files=[path for path, _ in samples], resize=resize,
    )


def _class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders: one per class."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _check_same_classes(train: Path, test: Path) -> None:
    """Name the classes each split lacks, when both split folders exist."""
    if not (train.is_dir() and test.is_dir()):
        return
    a, b = set(_class_folders(train)), set(_class_folders(test))
    if a == b:
        return

    def names(missing: set[str]) -> str:
        shown = sorted(missing)[:8]
        return ", ".join(shown) + (f" and {len(missing) - len(shown)} more" if len(missing) > len(shown) else "")

    lacks = [f"{folder} lacks {names(m)}" for folder, m in ((test, a - b), (train, b - a)) if m]
    raise DatasetError(f"imagefolder: train and {test.name} need the same class folders: {'; '.join(lacks)}")


def _decode(path: str, channels: int, resize: int | None) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    try:
        with Image.open(path) as img:
            image = F.pil_to_tensor(img.convert("RGB" if channels == 3 else "L"))
    except Exception as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from None
    if resize is not None:
        image = F.resize(image, [resize, resize], antialias=True)
    return image


@dataclass
class DecodeCheck:
    """What decoding every file of a folder-backed set found."""

    files: int
    bad: list[str]  # one line per file that fails: its path and why
    short_sides: tuple[int, int] | None  # (smallest, largest) short side of the good images, px


class _DecodeEach(torch.utils.data.Dataset):
    """Item i: (i, (height, width) or None, the decoding error or "")."""

    def __init__(self, images: ImageSet):
        self.files, self.channels = images.files, images.in_channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, tuple[int, int] | None, str]:
        try:
            return i, tuple(_decode(self.files[i], self.channels, None).shape[-2:]), ""
        except DatasetError as err:
            return i, None, str(err)


def check_decodes(images: ImageSet, *, num_workers: int = 0, progress: bool = True) -> DecodeCheck:
    """Decode every file of `images` in DataLoader worker processes; report the ones that fail.

    A training run or dump decodes lazily and would stop at the first bad file, maybe hours
    in; this finds all of them in one pass. Sets held in memory have nothing to decode.
    """
    from tqdm import tqdm

    if images.files is None:
        return DecodeCheck(len(images), [], None)
    loader = torch.utils.data.DataLoader(
        _DecodeEach(images), batch_size=32, num_workers=num_workers, collate_fn=list,
    )
    bad, sides = [], []
    with tqdm(total=len(images), unit="image", disable=not progress, desc=f"decode {images.split}") as bar:
        for batch in loader:
            for i, shape, error in batch:
                if error:
                    bad.append(error)
                else:
                    sides.append(min(shape))
            bar.update(len(batch))
    return DecodeCheck(len(images), bad, (min(sides), max(sides)) if sides else None)


def require_decodable(sets: Sequence[ImageSet], *, num_workers: int, cache: Path | None = None,
                      progress: bool = True) -> None:
    """Decode every file of image-folder `sets` once, before a run that would stop at the first
    bad one minutes or hours in; DatasetError lists every file that fails. A set that passed is
    remembered in `cache` (a marker per fingerprint), so the next run of the same folder skips it."""
    bad: list[str] = []
    for images in sets:
        if images.files is None:
            continue
        marker = None if cache is None else cache / f"{images.fingerprint}.ok"
        if marker is not None and marker.exists():
            continue
        found = check_decodes(images, num_workers=num_workers, progress=progress)
        bad += found.bad
        if not found.bad and marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{found.files} images of {images.name} ({images.split}) decode\n")
    if bad:
        listed = "; ".join(bad[:5]) + (f"; ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise DatasetError(f"{len(bad)} image{'s' if len(bad) > 1 else ''} cannot be decoded: {listed}")


def decode_check_cache() -> Path:
    """Where passed decode checks are remembered: $XDG_CACHE_HOME/rld-offline/decode-checks."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rld-offline" / "decode-checks"


def _load_synthetic(
    split: str, root: Path, *, download: bool, classes: int = 10, train: int = 640, test: int = 200,
    size: int = 32, channels: int = 3, seed: int = 0,
) -> ImageSet:
    """Class prototypes plus noise: learnable in a few steps, identical on every machine."""
    prototypes = np.random.default_rng(seed).integers(0, 256, (classes, channels, 4, 4))
    prototypes = prototypes.repeat(size // 4, axis=2).repeat(size // 4, axis=3)
    n = train if split == "train" else test
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    noise = rng.normal(0, 48, (n, channels, size, size))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    mean, std = (0.5,) * channels, (0.25,) * channels
    return ImageSet(
        "synthetic", split, labels, [f"class{c}" for c in range(classes)], mean, std,
        images=torch.from_numpy(images),
    )


def _load_cifar100(split: str, root: Path, *, download: bool) -> ImageSet:
    return _load_cifar(split, root, download=download, classes=100)


def _load_cifar10(split: str, root: Path, *, download: bool) -> ImageSet:
    return _load_cifar(split, root, download=download, classes=10)


_LOADERS = {
    "cifar100": _load_cifar100,
    "cifar10": _load_cifar10,
    "fashion-mnist": _load_fashion_mnist,
    "imagefolder": _load_imagefolder,
    "synthetic": _load_synthetic,
}


# ---------------------------------------------------------------------------------------
# Model input


def to_model_input(
    views: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 [B, C, H, W] -> normalised float32 on `device`, as ToTensor + Normalize compute it.

    uint8 travels to the device (4x fewer bytes than float) and is normalised there.
    """
    x = views.to(device, non_blocking=True).float().div_(255)
    m, s = _constants(tuple(mean), tuple(std), x.device)
    x = x.sub_(m).div_(s)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@functools.lru_cache(maxsize=16)
def _constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Made once per device: a fresh small host-to-GPU copy each batch would stall the GPU."""
    shape = (1, -1, 1, 1)
    return (torch.tensor(mean, dtype=torch.float32).view(shape).to(device),
            torch.tensor(std, dtype=torch.float32).view(shape).to(device))


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on `device` without stalling a GPU (through pinned memory)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def load_splits(
    spec: str, *, root: str | os.PathLike | None = None, subset: int | None = None,
    test_subset: int | None = None, val_split: ValSplit | int | float | str | None = None, download: bool = True,
) -> tuple[ImageSet, ImageSet]:
    """(train, test) of one dataset; subsets keep the first N samples of each class.

    With `val_split` the training set excludes the validation samples (see `load_splits_with_val`).
    """
    train, _, test = load_splits_with_val(spec, root=root, subset=subset, test_subset=test_subset,
                                          val_split=val_split, download=download)
    return train, test


def load_splits_with_val(
    spec: str, *, root: str | os.PathLike | None = None, subset: int | None = None,
    test_subset: int | None = None, val_split: ValSplit | int | float | str | None = None, download: bool = True,
) -> tuple[ImageSet, ImageSet | None, ImageSet]:
    """(train, validation or None, test), reading the training split once for both of its parts."""
    train, val = _hold_out(_load_raw(spec, "train", root, download), val_split, subset)
    test = load_dataset(spec, "test", root=root, subset=test_subset, download=download)
    if train.classes != test.classes:
        raise DatasetError(f"{spec}: train and test splits name different classes")
    return train, val, test
