"""Replayable augmentation: a view is (sample index, slot), its parameters a pure function.

The teacher must see exactly the image the student sees. So no augmentation here draws
from a stateful RNG: `ViewSpec.params(indices, slot)` hashes (seed, sample index, slot)
into the view's parameters, and `ViewFamily.apply(image, params)` turns them into a uint8
view. Neither depends on worker count, batch size, order, start epoch or rank, so a view
can be recomputed anywhere, bit for bit. A logit store records the parameters of every view
it caches, and students replay those parameters without knowing how they were drawn.

Families:
- `crop`: CIFAR's RandomCrop(size, padding) + RandomHorizontalFlip with zero padding;
  parameters (top, left, flip) in padded coordinates, exactly as torchvision draws them.
  Images smaller than `size` (Fashion-MNIST's 28 px) are first zero-padded to `size`,
  centred, so 28 px data gets the same 9 x 9 x 2 = 162 views as CIFAR.
- `resized-crop`: ImageNet's RandomResizedCrop(size) + flip, torchvision's distribution
  exactly: up to 10 candidate (scale, log_ratio) draws, the first box that fits the image,
  else torchvision's centre-crop fallback. Parameters (the 10 candidates, then u, v, flip)
  are relative, so they are drawn without knowing the image size and resolved against it
  when applied. The test view resizes the short side to round(size / 0.875) (ImageNet's
  256 for 224) and centre-crops `size`, so it shows content at the training views' scale.

Each family has a `version`, bumped when the same recorded parameters would give other
views or another test view; a store or teacher recorded by another version is refused.

Policies (which views exist, and which one a student uses at epoch e):
- `per-epoch:E`: E slots; slot e at epoch e.
- `pool:P`: P slots per sample; each epoch a student draws one per sample from its seed.
- `exhaustive`: every view of a finite family (crop: 162), drawn like a pool.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

POLICIES = ("per-epoch", "pool", "exhaustive")

# ---------------------------------------------------------------------------------------
# Counter-based hashing: the only source of randomness for views and slot draws.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_STUDENT_DOMAIN = 0x5354554445  # keeps a student's slot draws apart from the store's views


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64) + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_bits(seed: int, indices: np.ndarray, slot: int, streams: int) -> np.ndarray:
    """uint64 [n, streams], a pure function of (seed, index, slot, stream)."""
    with np.errstate(over="ignore"):
        base = _splitmix64(_splitmix64(np.array([seed], dtype=np.uint64)) ^ np.uint64(slot))
        per_sample = _splitmix64(base ^ np.asarray(indices, dtype=np.uint64))
        return _splitmix64(per_sample[:, None] ^ np.arange(1, streams + 1, dtype=np.uint64)[None, :])


def _unit(bits: np.ndarray) -> np.ndarray:
    """uint64 -> float64 uniform in [0, 1) from the top 53 bits."""
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# ---------------------------------------------------------------------------------------
# Families


class ViewFamily:
    """How parameters become a view. Subclasses define the parameter layout."""

    kind: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]
    param_dtype: ClassVar[type]
    version: ClassVar[int] = 1
    # What each earlier version did differently, for the error that refuses its records.
    earlier_versions: ClassVar[dict[int, str]] = {}
    size: int

    def sample(self, bits: np.ndarray) -> np.ndarray:
        """[n, k] uint64 hash bits -> [n, k] parameters."""
        raise NotImplementedError

    def enumerate(self) -> np.ndarray | None:
        """Every view's parameters when the family is finite, else None."""
        return None

    def apply(self, image: torch.Tensor, params: np.ndarray) -> torch.Tensor:
        """uint8 [C, H, W] + parameters [k] -> uint8 view [C, size, size]."""
        raise NotImplementedError

    def apply_batch(self, images: torch.Tensor, params: np.ndarray) -> torch.Tensor:
        """uint8 [B, C, H, W] + [B, k] -> uint8 [B, C, size, size]; same bits as `apply`."""
        return torch.stack([self.apply(img, p) for img, p in zip(images, params)])

    def test_view(self, image: torch.Tensor) -> torch.Tensor:
        """The un-augmented evaluation view of one image."""
        raise NotImplementedError

    def test_batch(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.test_view(img) for img in images])

    def to_dict(self) -> dict[str, Any]:
        """What a store or teacher records: kind, every field, and the version if not 1."""
        record = {"kind": self.kind, **dataclasses.asdict(self)}
        if self.version != 1:  # dicts recorded before versions existed are version 1
            record["version"] = self.version
        return record

    def __str__(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.to_dict().items() if k not in ("kind", "version"))
        return f"{self.kind}:{args}"


@dataclass(frozen=True)
class CropFlip(ViewFamily):
    """RandomCrop(size, padding=padding) with zero fill, then RandomHorizontalFlip."""

    size: int = 32
    padding: int = 4

    kind: ClassVar[str] = "crop"
    param_names: ClassVar[tuple[str, ...]] = ("top", "left", "flip")
    param_dtype: ClassVar[type] = np.int16

    @property
    def offsets(self) -> int:
        return 2 * self.padding + 1

    def sample(self, bits: np.ndarray) -> np.ndarray:
        n = np.uint64(self.offsets)
        out = np.stack([bits[:, 0] % n, bits[:, 1] % n, bits[:, 2] & np.uint64(1)], axis=1)
        return out.astype(self.param_dtype)

    def enumerate(self) -> np.ndarray:
        top, left, flip = np.meshgrid(np.arange(self.offsets), np.arange(self.offsets), [0, 1], indexing="ij")
        return np.stack([top.ravel(), left.ravel(), flip.ravel()], axis=1).astype(self.param_dtype)

    def _pad_to_size(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        if h > self.size or w > self.size:
            raise ValueError(
                f"crop views need images of at most {self.size} px, got {h}x{w}: "
                "resize the dataset (imagefolder:resize=N) or use resized-crop"
            )
        dh, dw = self.size - h, self.size - w
        if dh or dw:
            images = TF.pad(images, [dw // 2, dh // 2, dw - dw // 2, dh - dh // 2], fill=0)
        return images

    def apply(self, image: torch.Tensor, params: np.ndarray) -> torch.Tensor:
        top, left, flip = (int(v) for v in params)
        padded = TF.pad(self._pad_to_size(image), [self.padding], fill=0)
        view = padded[:, top : top + self.size, left : left + self.size]
        return view.flip(-1) if flip else view.contiguous()

    def apply_batch(self, images: torch.Tensor, params: np.ndarray) -> torch.Tensor:
        padded = TF.pad(self._pad_to_size(images), [self.padding], fill=0)
        b, c = padded.shape[:2]
        p = torch.from_numpy(np.asarray(params, dtype=np.int64))
        span = torch.arange(self.size)
        rows = p[:, 0:1] + span
        cols = p[:, 1:2] + span
        cols = torch.where(p[:, 2:3].bool(), cols.flip(1), cols)  # a flip reverses the columns
        return padded[
            torch.arange(b)[:, None, None, None],
            torch.arange(c)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]

    def test_view(self, image: torch.Tensor) -> torch.Tensor:
        return self._pad_to_size(image)

    def test_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self._pad_to_size(images)


@dataclass(frozen=True)
class ResizedCropFlip(ViewFamily):
    """RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip; test: Resize + CenterCrop.

    Training boxes follow torchvision's `RandomResizedCrop.make_params` (v2; v1's
    `get_params` is the same): up to `ATTEMPTS` candidate (scale, log-ratio) draws, the
    first whose box fits the image, a uniform position for it, else a centre crop of the
    image clipped to the ratio range. All candidates are parameters of the view, so which
    one fits is decided when the view is applied to an image of whatever size.

    The test view resizes the short side to `test_resize` and centre-crops `size`; by
    default `test_resize` = round(size / 0.875), torchvision's ImageNet pair 256/224 at any
    crop size, so test images show content at the scale the training views show it.
    """

    size: int = 224
    scale_min: float = 0.08
    scale_max: float = 1.0
    ratio_min: float = 3 / 4
    ratio_max: float = 4 / 3
    test_resize: int | None = None

    ATTEMPTS: ClassVar[int] = 10  # torchvision's RandomResizedCrop draws at most 10 boxes
    CROP_FRACTION: ClassVar[float] = 0.875  # 224 / 256, torchvision's ImageNet evaluation
    kind: ClassVar[str] = "resized-crop"
    param_names: ClassVar[tuple[str, ...]] = (
        *(f"{name}{i}" for i in range(ATTEMPTS) for name in ("scale", "log_ratio")), "u", "v", "flip",
    )
    param_dtype: ClassVar[type] = np.float32
    version: ClassVar[int] = 2
    earlier_versions: ClassVar[dict[int, str]] = {
        1: "one (scale, log_ratio) draw clamped to the image instead of torchvision's retries, "
           "and a test view resized to 256 px whatever the crop size",
    }

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"resized-crop: size must be >= 1, got {self.size}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"resized-crop: need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if not 0 < self.ratio_min <= self.ratio_max:
            raise ValueError(f"resized-crop: need 0 < ratio_min <= ratio_max, got {self.ratio_min}, {self.ratio_max}")
        if self.test_resize is None:
            # size / 0.875 is never a half-integer (8 * size / 7), so round() has no ties.
            object.__setattr__(self, "test_resize", round(self.size / self.CROP_FRACTION))
        elif self.test_resize < self.size:
            raise ValueError(
                f"resized-crop: test_resize {self.test_resize} is smaller than size {self.size}; the test view "
                f"centre-crops size px from an image whose short side is test_resize px (default round(size / 0.875))"
            )

    def sample(self, bits: np.ndarray) -> np.ndarray:
        u = _unit(bits[:, :-1])
        lo, hi = math.log(self.ratio_min), math.log(self.ratio_max)
        out = np.empty((len(bits), len(self.param_names)), dtype=np.float64)
        out[:, 0 : 2 * self.ATTEMPTS : 2] = self.scale_min + (self.scale_max - self.scale_min) * u[:, 0 : 2 * self.ATTEMPTS : 2]
        out[:, 1 : 2 * self.ATTEMPTS : 2] = lo + (hi - lo) * u[:, 1 : 2 * self.ATTEMPTS : 2]
        out[:, -3:-1] = u[:, -2:]
        out[:, -1] = bits[:, -1] & np.uint64(1)
        return out.astype(self.param_dtype)

    def box(self, height: int, width: int, params: np.ndarray) -> tuple[int, int, int, int]:
        """(top, left, h, w) in pixels of an image of the given size, as torchvision picks it."""
        area = height * width
        candidates = np.asarray(params[: 2 * self.ATTEMPTS], dtype=np.float64).reshape(self.ATTEMPTS, 2)
        for scale, log_ratio in candidates:
            target_area, aspect_ratio = area * scale, math.exp(log_ratio)
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                # u, v in [0, 1) pick one of the H - h + 1 rows uniformly, as torch.randint
                # does; min() guards against a float32 u that rounded up to 1.0.
                u, v = float(params[-3]), float(params[-2])
                return min(int(u * (height - h + 1)), height - h), min(int(v * (width - w + 1)), width - w), h, w
        # torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio.
        in_ratio = width / height
        if in_ratio < self.ratio_min:
            w, h = width, int(round(width / self.ratio_min))
        elif in_ratio > self.ratio_max:
            w, h = int(round(height * self.ratio_max)), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, image: torch.Tensor, params: np.ndarray) -> torch.Tensor:
        top, left, h, w = self.box(image.shape[-2], image.shape[-1], params)
        view = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        return view.flip(-1) if params[-1] >= 0.5 else view

    def test_view(self, image: torch.Tensor) -> torch.Tensor:
        return TF.center_crop(TF.resize(image, [self.test_resize], antialias=True), [self.size, self.size])


FAMILIES: dict[str, type[ViewFamily]] = {cls.kind: cls for cls in (CropFlip, ResizedCropFlip)}


def _family_class(kind: str) -> type[ViewFamily]:
    if kind not in FAMILIES:
        raise ValueError(f"unknown view family {kind!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[kind]


def family_from_dict(d: dict[str, Any]) -> ViewFamily:
    """The family a store or teacher recorded; one recorded by another version is refused."""
    d = dict(d)
    cls = _family_class(d.pop("kind"))
    version = d.pop("version", 1)
    if version != cls.version:
        what = cls.earlier_versions.get(version, "unknown to this code")
        raise ValueError(
            f"view family {json.dumps({'kind': cls.kind, **d})} is {cls.kind} version {version} ({what}), "
            f"not this code's version {cls.version}"
        )
    return cls(**d)


def parse_family(spec: str) -> ViewFamily:
    """'crop', 'crop:size=32,padding=4', 'resized-crop:size=224' (always this code's version)."""
    kind, _, rest = spec.partition(":")
    cls = _family_class(kind.strip())
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ValueError(f"view family option {item!r} in {spec!r}: expected key=value with key in {sorted(fields)}")
        try:
            kwargs[key] = float(value) if fields[key] == "float" else int(value)
        except ValueError:
            raise ValueError(f"view family option {item!r} in {spec!r}: expected a number") from None
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------
# The spec a store is built from


@dataclass(frozen=True)
class ViewSpec:
    """Which views exist (policy, count), how they look (family) and how they are drawn (seed)."""

    family: ViewFamily
    policy: str
    count: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"view policy must be one of {POLICIES}, got {self.policy!r}")
        if self.policy == "exhaustive":
            if self.family.enumerate() is None:
                raise ValueError(f"the {self.family.kind} family has infinitely many views: use per-epoch:E or pool:P")
            # Every exhaustive store of a family holds the same views, whatever the seed.
            object.__setattr__(self, "count", None)
            object.__setattr__(self, "seed", 0)
        elif self.count is None or self.count < 1:
            raise ValueError(f"{self.policy} needs a count >= 1, e.g. {self.policy}:10")

    @classmethod
    def parse(cls, policy: str, family: str | ViewFamily = "crop", seed: int = 0) -> "ViewSpec":
        """'per-epoch:240' | 'pool:50' | 'exhaustive'."""
        name, _, count = policy.partition(":")
        if count and not count.isdigit():
            raise ValueError(f"view policy {policy!r}: the count after ':' must be a positive integer")
        fam = parse_family(family) if isinstance(family, str) else family
        return cls(fam, name.strip(), int(count) if count else None, seed)

    @property
    def num_slots(self) -> int:
        if self.policy == "exhaustive":
            return len(self.family.enumerate())
        return int(self.count)

    def params(self, indices: np.ndarray, slot: int) -> np.ndarray:
        """Parameters [n, k] of the views (indices, slot)."""
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} out of range for {self.num_slots} slots")
        indices = np.asarray(indices)
        if self.policy == "exhaustive":
            return np.repeat(self.family.enumerate()[slot : slot + 1], len(indices), axis=0)
        return self.family.sample(hash_bits(self.seed, indices, slot, len(self.family.param_names)))

    def slots_for_epoch(self, epoch: int, num_samples: int, student_seed: int) -> np.ndarray:
        """The slot each sample uses at `epoch` (0-based) for a student of `student_seed`."""
        if self.policy == "per-epoch":
            if epoch >= self.num_slots:
                raise ValueError(
                    f"the store caches {self.num_slots} per-epoch views; epoch {epoch + 1} has none "
                    "(dump per-epoch:E with E >= the student's epochs, or use a pool)"
                )
            return np.full(num_samples, epoch, dtype=np.int64)
        bits = hash_bits(student_seed ^ _STUDENT_DOMAIN, np.arange(num_samples), epoch, 1)[:, 0]
        return (bits % np.uint64(self.num_slots)).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "count": self.count, "seed": self.seed, "family": self.family.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViewSpec":
        return cls(family_from_dict(d["family"]), d["policy"], d.get("count"), d.get("seed", 0))

    def __str__(self) -> str:
        policy = self.policy if self.count is None else f"{self.policy}:{self.count}"
        return f"{policy} of {self.family} (seed {self.seed})"


# ---------------------------------------------------------------------------------------
# Batches of views for a DataLoader


class ViewRequest(NamedTuple):
    """One batch to build: which images, and their view parameters (None: the test view)."""

    images: Any
    indices: np.ndarray
    params: np.ndarray | None


def build_views(family: ViewFamily, images: Any, idx: np.ndarray,
                params: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """One batch: (uint8 views [B, C, S, S], then int64 arrays labels, indices, crc32 of each view).

    An in-memory (or fixed-size) set gathers and crops the batch with one indexing
    operation. The crc32 of each view lets a store record, and a reader check, exactly which
    input the teacher saw. `params` None means the test view.
    """
    if images.fixed_size:
        batch = images.batch(idx)
        views = family.test_batch(batch) if params is None else family.apply_batch(batch, params)
    else:
        views = torch.stack(
            [family.test_view(images.image(int(i))) if params is None else family.apply(images.image(int(i)), p)
             for i, p in zip(idx, params if params is not None else [None] * len(idx))]
        )
    views = views.contiguous()
    crc = np.fromiter((zlib.crc32(v) for v in views.numpy()), dtype=np.int64, count=len(views))
    return views, images.labels[idx], np.asarray(idx, dtype=np.int64), crc


class ViewBatches(torch.utils.data.Dataset):
    """Item b builds request b with `build_views`: whole batches in one call, in DataLoader
    workers when there are any."""

    def __init__(self, family: ViewFamily, requests: Sequence[ViewRequest]):
        self.family, self.requests = family, list(requests)

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        return build_views(self.family, *self.requests[b])


class _ViewsOf(torch.utils.data.Dataset):
    """The views of one image set; item (indices, params) is that batch (`build_views`)."""

    def __init__(self, family: ViewFamily, images: Any):
        self.family, self.images = family, images

    def __getitem__(self, request: tuple[np.ndarray, np.ndarray | None]) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        return build_views(self.family, self.images, *request)


class _EpochPlan(torch.utils.data.Sampler):
    """The current epoch's batch requests, in order; the main process sets them before each pass."""

    def __init__(self) -> None:
        self.requests: list[tuple[np.ndarray, np.ndarray | None]] = []

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self.requests)


class EpochLoader:
    """Batches of views of one image set, epoch after epoch, from workers that live across epochs.

    The worker processes start once, with the image set (forked, or pickled once), and stay
    (`persistent_workers`); before each epoch the main process hands them that epoch's plan,
    one (sample indices, view parameters) request per batch, through the loader's sampler.
    A pass yields what `view_loader` over the same requests yields, in the same order, whatever
    the worker count. Restarting workers each epoch cost ~0.5 s an epoch on a GPU machine.
    """

    def __init__(self, family: ViewFamily, images: Any, *, num_workers: int = 0, pin_memory: bool = False):
        self._plan = _EpochPlan()
        self._loader = torch.utils.data.DataLoader(
            _ViewsOf(family, images),
            batch_size=None,
            sampler=self._plan,
            collate_fn=_as_is,
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=4 if num_workers else None,
            persistent_workers=num_workers > 0,
        )

    def epoch(self, requests: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]]:
        """One pass over `requests` (indices, params; params None: the test view)."""
        self._plan.requests = list(requests)
        return iter(self._loader)

    def close(self) -> None:
        """Stop the workers now, not whenever the loader is garbage-collected."""
        iterator, self._loader._iterator = self._loader._iterator, None
        if iterator is not None:
            iterator._shutdown_workers()  # what DataLoader calls when its iterator is collected


def _as_is(batch: Any) -> Any:
    """Keep the small arrays as numpy: each tensor a worker returns costs a file descriptor."""
    return batch


def batch_indices(num_samples: int, batch_size: int, order: np.ndarray | None = None, drop_last: bool = False) -> list[np.ndarray]:
    order = np.arange(num_samples) if order is None else np.asarray(order)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def view_loader(
    family: ViewFamily,
    requests: Sequence[ViewRequest],
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """One pass of a DataLoader over whole batches of views (see `ViewBatches`), in the given order.

    Each request names its image set, so one pass may mix them (a dump interleaves training
    views and test images); the requests travel to the workers once, with the dataset.
    Training uses `EpochLoader` instead: one image set, workers that live across epochs.
    """
    return torch.utils.data.DataLoader(
        ViewBatches(family, requests),
        batch_size=None,
        shuffle=False,
        collate_fn=_as_is,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
    )
