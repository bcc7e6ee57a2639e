"""Replayable views: pure parameters, torchvision-exact crops, identical in workers and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipeline.data import load_dataset
from pipeline.views import (
    CropFlip,
    ResizedCropFlip,
    ViewRequest,
    ViewSpec,
    batch_indices,
    hash_bits,
    parse_family,
    view_loader,
)


@pytest.fixture(scope="module")
def images():
    return load_dataset("synthetic:classes=4,train=64,test=8", "train")


def test_params_are_a_pure_function_of_seed_index_slot():
    spec = ViewSpec.parse("per-epoch:5", "crop", seed=11)
    all_at_once = spec.params(np.arange(100), 3)
    # Any subset, in any order, in any batch, gives the same parameters per sample.
    order = np.random.default_rng(0).permutation(100)
    piecewise = np.empty_like(all_at_once)
    for chunk in np.array_split(order, 7):
        piecewise[chunk] = spec.params(chunk, 3)
    assert np.array_equal(all_at_once, piecewise)
    assert np.array_equal(all_at_once, ViewSpec.parse("per-epoch:5", "crop", seed=11).params(np.arange(100), 3))
    assert not np.array_equal(all_at_once, spec.params(np.arange(100), 2))
    assert not np.array_equal(all_at_once, ViewSpec.parse("per-epoch:5", "crop", seed=12).params(np.arange(100), 3))


def test_crop_params_cover_torchvision_range_uniformly():
    params = ViewSpec.parse("pool:1", "crop:size=32,padding=4", seed=3).params(np.arange(90_000), 0)
    top, left, flip = params.T
    assert params.dtype == np.int16
    assert set(np.unique(top)) == set(range(9)) and set(np.unique(left)) == set(range(9))
    counts = np.bincount(top, minlength=9)
    assert counts.min() > 0.95 * 10_000 and counts.max() < 1.05 * 10_000
    assert abs(flip.mean() - 0.5) < 0.01


def test_crop_matches_torchvision_random_crop_and_flip(images):
    family = CropFlip(32, 4)
    params = ViewSpec(family, "pool", 1, seed=5).params(np.arange(16), 0)
    for image, (top, left, flip) in zip(images.images[:16], params):
        # torchvision's RandomCrop(32, padding=4) pads with zeros, then crops at (top, left).
        expected = TF.crop(TF.pad(image, [4], fill=0), int(top), int(left), 32, 32)
        if flip:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(family.apply(image, np.array([top, left, flip])), expected)


def test_crop_equals_torchvision_transform_under_its_own_draw(images):
    """Every view torchvision's own random draw produces is one of the family's 162."""
    image = images.images[0]
    family = CropFlip(32, 4)
    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    all_views = family.apply_batch(image.expand(162, -1, -1, -1), family.enumerate())
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform(image)
        assert (all_views == out).flatten(1).all(1).any(), f"seed {seed}: torchvision made a view outside the family"


def test_batched_apply_equals_per_sample_apply(images):
    family = CropFlip(32, 4)
    params = ViewSpec(family, "pool", 1, seed=9).params(np.arange(64), 0)
    batch = family.apply_batch(images.images, params)
    single = torch.stack([family.apply(img, p) for img, p in zip(images.images, params)])
    assert batch.dtype == torch.uint8 and batch.shape == (64, 3, 32, 32)
    assert torch.equal(batch, single)


def test_loader_gives_same_bits_with_workers_batch_size_and_order(images):
    family = CropFlip(32, 4)
    params = ViewSpec(family, "per-epoch", 2, seed=1).params(np.arange(64), 1)

    def collect(batch_size: int, order: np.ndarray, workers: int) -> dict[int, torch.Tensor]:
        requests = [ViewRequest(images, idx, params[idx]) for idx in batch_indices(64, batch_size, order)]
        out = {}
        for views, _, idx, crc in view_loader(family, requests, num_workers=workers):
            out.update({int(i): v for i, v in zip(idx, views)})
        return out

    main = collect(64, np.arange(64), 0)
    other = collect(7, np.random.default_rng(0).permutation(64), 2)
    assert main.keys() == other.keys()
    assert all(torch.equal(main[i], other[i]) for i in main)


def test_exhaustive_enumerates_162_distinct_views_and_ignores_seed():
    spec = ViewSpec.parse("exhaustive", "crop", seed=123)
    assert spec.num_slots == 162 and spec.seed == 0
    views = np.stack([spec.params(np.array([0]), s)[0] for s in range(162)])
    assert len({tuple(v) for v in views}) == 162
    assert spec.to_dict() == ViewSpec.parse("exhaustive", "crop", seed=7).to_dict()
    with pytest.raises(ValueError, match="infinitely many"):
        ViewSpec.parse("exhaustive", "resized-crop")


def test_fashion_mnist_size_images_are_padded_to_32_with_the_same_162_views():
    family = CropFlip(32, 4)
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    assert torch.equal(family.test_view(image), TF.pad(image, [2]))
    assert torch.equal(family.apply(image, np.array([4, 4, 0])), family.test_view(image))  # the centre view
    view = family.apply(image, np.array([6, 6, 0]))  # 2 + 4 px of padding: the image starts at (0, 0)
    assert view.shape == (1, 32, 32) and torch.equal(view[:, :28, :28], image)
    with pytest.raises(ValueError, match="at most 32 px"):
        family.apply(torch.zeros(3, 40, 40, dtype=torch.uint8), np.array([0, 0, 0]))


def test_student_slot_draws():
    per_epoch = ViewSpec.parse("per-epoch:3")
    assert (per_epoch.slots_for_epoch(2, 10, student_seed=5) == 2).all()
    with pytest.raises(ValueError, match="3 per-epoch views; epoch 4"):
        per_epoch.slots_for_epoch(3, 10, student_seed=5)
    pool = ViewSpec.parse("pool:8", seed=1)
    a = pool.slots_for_epoch(0, 5000, student_seed=1)
    assert a.min() == 0 and a.max() == 7 and np.bincount(a).min() > 500
    assert np.array_equal(a, pool.slots_for_epoch(0, 5000, student_seed=1))
    assert not np.array_equal(a, pool.slots_for_epoch(1, 5000, student_seed=1))
    assert not np.array_equal(a, pool.slots_for_epoch(0, 5000, student_seed=2))


def test_resized_crop_boxes_stay_inside_and_test_view_is_resize_center_crop():
    family = ResizedCropFlip(size=48, test_resize=55)
    spec = ViewSpec(family, "per-epoch", 1, seed=2)
    params = spec.params(np.arange(500), 0)
    assert params.dtype == np.float32
    for height, width in ((60, 90), (90, 60), (48, 48)):
        for p in params:
            top, left, h, w = family.box(height, width, p)
            assert 0 <= top <= height - h and 0 <= left <= width - w and h >= 1 and w >= 1
    image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    assert family.apply(image, params[0]).shape == (3, 48, 48)
    expected = TF.center_crop(TF.resize(image, [55], antialias=True), [48, 48])
    assert torch.equal(family.test_view(image), expected)


def test_spec_round_trip_and_parse_errors():
    spec = ViewSpec.parse("pool:50", "crop:size=32,padding=4", seed=3)
    assert ViewSpec.from_dict(spec.to_dict()) == spec
    assert str(parse_family("resized-crop:size=64")) == "resized-crop:size=64,scale_min=0.08,scale_max=1.0,ratio_min=0.75,ratio_max=1.3333333333333333,test_resize=256"
    with pytest.raises(ValueError, match="view policy must be one of"):
        ViewSpec.parse("random:3")
    with pytest.raises(ValueError, match="positive integer"):
        ViewSpec.parse("pool:x")
    with pytest.raises(ValueError, match="needs a count"):
        ViewSpec.parse("per-epoch")
    with pytest.raises(ValueError, match="key in"):
        parse_family("crop:pad=3")


def test_hash_bits_streams_are_independent():
    bits = hash_bits(0, np.arange(10_000), 0, 3)
    assert bits.dtype == np.uint64 and bits.shape == (10_000, 3)
    corr = np.corrcoef((bits % np.uint64(1000)).astype(float).T)
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 0.05
