"""Replayable views: pure parameters, torchvision-exact crops, identical in workers and batches."""

from __future__ import annotations

import math
import multiprocessing
from statistics import NormalDist

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipeline.data import load_dataset
from pipeline.views import (
    CropFlip,
    EpochLoader,
    ResizedCropFlip,
    ViewFamily,
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
    # Binomial noise: a bin's count has sd 94 (5% is 5.3 sd), the flip mean sd 0.0017 (0.01 is 6 sd).
    assert counts.min() > 0.95 * 10_000 and counts.max() < 1.05 * 10_000
    assert abs(flip.mean() - 0.5) < 0.01
    # Jointly too: every one of the 9 x 9 x 2 views, equally often (top, left and flip drawn
    # independently; a left copied from top's bits would leave 18). 555.6 expected per view,
    # binomial sd 23.5: 25% is 5.9 sd (measured 483-610).
    joint = np.bincount((top.astype(np.int64) * 9 + left) * 2 + flip, minlength=162)
    assert len(joint) == 162 and joint.min() > 0.75 * 90_000 / 162 and joint.max() < 1.25 * 90_000 / 162


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


@pytest.mark.slow
def test_epoch_loader_keeps_its_workers_and_yields_what_view_loader_yields(images):
    """Workers that live across epochs: each epoch's plan (another order, batch size and
    views each time) comes out as view_loader builds it, batch for batch, from the same
    worker processes; with no workers, from the main process."""
    family = CropFlip(32, 4)
    spec = ViewSpec(family, "per-epoch", 3, seed=2)
    persistent, main = EpochLoader(family, images, num_workers=2), EpochLoader(family, images)
    before = {p.pid for p in multiprocessing.active_children()}
    workers = None
    try:
        for epoch, batch_size in enumerate((16, 7, 64)):
            params = spec.params(np.arange(64), epoch)
            batches = batch_indices(64, batch_size, np.random.default_rng(epoch).permutation(64))
            expected = list(view_loader(family, [ViewRequest(images, idx, params[idx]) for idx in batches]))
            for loader in (persistent, main):
                got = list(loader.epoch([(idx, params[idx]) for idx in batches]))
                assert len(got) == len(expected)
                for g, e in zip(got, expected):
                    assert torch.equal(g[0], e[0]) and all(np.array_equal(a, b) for a, b in zip(g[1:], e[1:]))
            started = {p.pid for p in multiprocessing.active_children()} - before
            assert len(started) == 2 and (workers is None or started == workers), (started, workers)
            workers = started
    finally:
        persistent.close()
    assert not {p.pid for p in multiprocessing.active_children()} & workers  # close() stopped them


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


def test_recorded_parameters_map_to_fixed_views():
    """A store records parameters, not pixels, and a family's version promises that the same
    parameters give the same view. Two mappings no distribution test can see (either choice
    draws the same distribution), pinned by hand:
    - an image smaller than the crop is padded as torchvision's CenterCrop pads it (an odd
      margin's extra pixel on the right and bottom);
    - in resized-crop, u picks the row and v the column: scale 0.25 of 100 x 200 at ratio 1 is
      71 x 71 px (round(sqrt(5000))); u = 0.5 -> int(0.5 * 30) = 15, v = 0.25 -> int(0.25 * 130) = 32.
    """
    image = torch.randint(1, 256, (1, 29, 31), dtype=torch.uint8)
    assert torch.equal(CropFlip(32, 4).test_view(image), TF.center_crop(image, [32, 32]))
    family = ResizedCropFlip(size=32)
    params = np.zeros(len(family.param_names), np.float32)
    params[0], params[1], params[-3], params[-2] = 0.25, 0.0, 0.5, 0.25  # scale0, log_ratio0, u, v
    assert family.box(100, 200, params) == (15, 32, 71, 71)


def test_student_slot_draws():
    per_epoch = ViewSpec.parse("per-epoch:3")
    assert (per_epoch.slots_for_epoch(2, 10, student_seed=5) == 2).all()
    with pytest.raises(ValueError, match="3 per-epoch views; epoch 4"):
        per_epoch.slots_for_epoch(3, 10, student_seed=5)
    pool = ViewSpec.parse("pool:8", seed=1)
    a = pool.slots_for_epoch(0, 5000, student_seed=1)
    assert a.min() == 0 and a.max() == 7 and np.bincount(a).min() > 500  # expected 625, sd 23
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
    assert str(parse_family("resized-crop:size=64")) == "resized-crop:size=64,scale_min=0.08,scale_max=1.0,ratio_min=0.75,ratio_max=1.3333333333333333,test_resize=73"
    with pytest.raises(ValueError, match="view policy must be one of"):
        ViewSpec.parse("random:3")
    with pytest.raises(ValueError, match="positive integer"):
        ViewSpec.parse("pool:x")
    with pytest.raises(ValueError, match="needs a count"):
        ViewSpec.parse("per-epoch")
    with pytest.raises(ValueError, match="key in"):
        parse_family("crop:pad=3")
    with pytest.raises(ValueError, match="'size=big' in 'resized-crop:size=big': expected a number"):
        parse_family("resized-crop:size=big")


def test_hash_bits_streams_are_independent():
    bits = hash_bits(0, np.arange(10_000), 0, 3)
    assert bits.dtype == np.uint64 and bits.shape == (10_000, 3)
    corr = np.corrcoef((bits % np.uint64(1000)).astype(float).T)
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 0.05  # independent: sd 1/sqrt(n) = 0.01, 5 sd


# ---------------------------------------------------------------------------------------
# resized-crop: torchvision's RandomResizedCrop distribution, and a test view at its scale


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    a, b = np.sort(a), np.sort(b)
    x = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, x, "right") / len(a) - np.searchsorted(b, x, "right") / len(b)).max())


def _torchvision_boxes(transform: v2.RandomResizedCrop, height: int, width: int, n: int, seed: int) -> np.ndarray:
    """[n, 4] (top, left, h, w) from torchvision's own draw."""
    image = torch.zeros(1, height, width)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        boxes = [transform.make_params([image]) for _ in range(n)]
    return np.array([[b["top"], b["left"], b["height"], b["width"]] for b in boxes], dtype=np.float64)


def test_torchvision_v1_and_v2_resized_crops_draw_alike():
    """The reference below is v2's make_params; v1's get_params (the RLD code's) is the same."""
    from torchvision import transforms as v1

    image = torch.zeros(1, 100, 400)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        old = [v1.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(200)]
    new = _torchvision_boxes(v2.RandomResizedCrop(224), 100, 400, 200, seed=3)
    assert np.array_equal(np.array(old, dtype=np.float64), new)


# Landscape and portrait photos (4:3), a square, and panoramas whose aspect lies outside
# [3/4, 4/3], where most draws fail and torchvision's fallback decides the box.
ASPECTS = [(375, 500), (500, 375), (300, 300), (100, 400), (400, 50)]


@pytest.mark.parametrize("height,width", ASPECTS)
def test_resized_crop_boxes_follow_torchvision_distribution(height, width):
    n = 10_000
    family = ResizedCropFlip(size=224)
    params = ViewSpec(family, "per-epoch", 1, seed=0).params(np.arange(n), 0)
    ours = np.array([family.box(height, width, p) for p in params], dtype=np.float64)
    theirs = _torchvision_boxes(v2.RandomResizedCrop(224), height, width, n, seed=0)
    assert ((ours[:, 0] >= 0) & (ours[:, 0] + ours[:, 2] <= height) & (ours[:, 1] >= 0) & (ours[:, 1] + ours[:, 3] <= width)).all()

    def stats(b: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "area": b[:, 2] * b[:, 3] / (height * width),
            "log_aspect": np.log(b[:, 3] / b[:, 2]),
            "centre_y": (b[:, 0] + b[:, 2] / 2) / height,
            "centre_x": (b[:, 1] + b[:, 3] / 2) / width,
        }

    # Two-sample KS at significance 0.001: D_crit = c(a) sqrt((n + m) / (n m)) with
    # c(a) = sqrt(-ln(a / 2) / 2) = 1.949 (asymptotic; conservative for these discrete
    # values). For n = m = 10,000 that is 0.028; the old clamped boxes were 0.13-0.84 off.
    critical = math.sqrt(-math.log(0.001 / 2) / 2) * math.sqrt(2 / n)
    a, b = stats(ours), stats(theirs)
    for name in a:
        assert _ks(a[name], b[name]) < critical, f"{height}x{width} {name}: KS {_ks(a[name], b[name]):.4f} >= {critical:.4f}"

    # Histograms: each bin's share within a two-proportion z-test at 0.001 per histogram,
    # Bonferroni-split over its bins: |p1 - p2| < z * sqrt(p (1 - p) * 2 / n).
    for name, edges in (("area", np.linspace(0, 1, 11)), ("log_aspect", np.linspace(-0.3, 0.3, 7))):
        p1 = np.histogram(np.clip(a[name], edges[0], edges[-1]), edges)[0] / n
        p2 = np.histogram(np.clip(b[name], edges[0], edges[-1]), edges)[0] / n
        z = NormalDist().inv_cdf(1 - 0.001 / (2 * len(p1)))
        pooled = (p1 + p2) / 2
        assert (np.abs(p1 - p2) <= z * np.sqrt(pooled * (1 - pooled) * 2 / n) + 1e-12).all(), (name, p1, p2)


@pytest.mark.parametrize("scale,ratio", [(0.3, 1.0), (0.9, 1.3), (0.6, 0.5), (1.0, 2.5), (0.05, 0.2), (2.0, 1.0)])
@pytest.mark.parametrize("height,width", [(375, 500), (500, 375), (64, 64), (20, 90), (90, 20)])
def test_resized_crop_box_equals_torchvision_for_the_same_draw(scale, ratio, height, width):
    """With one-point scale and ratio ranges every draw is the same, so torchvision and this
    family must pick the same box size: the candidate when it fits, else the same fallback
    (the image cut to the ratio range, also when the image's aspect lies outside it)."""
    family = ResizedCropFlip(size=32, scale_min=scale, scale_max=scale, ratio_min=ratio, ratio_max=ratio)
    params = ViewSpec(family, "pool", 1, seed=4).params(np.arange(50), 0)
    expected = _torchvision_boxes(v2.RandomResizedCrop(32, scale=(scale, scale), ratio=(ratio, ratio)), height, width, 50, seed=1)
    ours = np.array([family.box(height, width, p) for p in params], dtype=np.float64)
    assert (ours[:, 2:] == expected[:, 2:]).all(), (ours[0], expected[0])
    # 50 identical torchvision positions: its centred fallback (or a box the size of the
    # image); anything else would repeat with probability <= 2^-49. Ours must agree there.
    if (expected[:, :2] == expected[0, :2]).all():
        assert (ours[:, :2] == expected[0, :2]).all()


def test_resized_crop_params_are_candidates_in_range_then_position_and_flip():
    family = ResizedCropFlip(size=64, scale_min=0.1, scale_max=0.9)
    params = ViewSpec(family, "pool", 1, seed=1).params(np.arange(20_000), 0).astype(np.float64)
    assert params.shape == (20_000, 2 * ResizedCropFlip.ATTEMPTS + 3) and len(family.param_names) == params.shape[1]
    scales, log_ratios = params[:, 0:20:2], params[:, 1:20:2]
    assert scales.min() >= 0.1 and scales.max() <= 0.9
    # parameters are stored as float32: log(4/3) rounds by ~1.5e-8, 1e-6 is well above it
    assert log_ratios.min() >= math.log(3 / 4) - 1e-6 and log_ratios.max() <= math.log(4 / 3) + 1e-6
    # Every stream uniform and independent: means within 4 standard errors of 1/2 (SE of a
    # uniform's mean sqrt(1/12/n), of a fair coin's sqrt(1/4/n)); correlations within
    # 4 / sqrt(n), the SE of a correlation of independent streams. 4 SE: a two-sided chance
    # of 6e-5 per statistic, under 2% over all 253 pairs.
    unit = np.column_stack([(scales - 0.1) / 0.8, (log_ratios - math.log(3 / 4)) / math.log(16 / 9), params[:, 20:]])
    se = math.sqrt(1 / 12 / 20_000)
    assert np.abs(unit[:, :22].mean(0) - 0.5).max() < 4 * se
    assert abs(unit[:, 22].mean() - 0.5) < 4 * math.sqrt(0.25 / 20_000)
    corr = np.corrcoef(unit.T)
    assert np.abs(corr[np.triu_indices(len(corr), 1)]).max() < 4 / math.sqrt(20_000)


def test_resized_crop_test_view_size_and_errors():
    # torchvision's ImageNet pair 256/224 at every size: round(size / 0.875).
    assert [ResizedCropFlip(size=s).test_resize for s in (32, 64, 96, 128, 160, 192, 224)] == [37, 73, 110, 146, 183, 219, 256]
    assert ResizedCropFlip(size=32, test_resize=40).test_resize == 40
    assert parse_family("resized-crop:size=32") == parse_family("resized-crop:size=32,test_resize=37")
    image = torch.randint(0, 256, (3, 50, 80), dtype=torch.uint8)
    expected = v2.Compose([v2.Resize(37, antialias=True), v2.CenterCrop(32)])(image)
    assert torch.equal(ResizedCropFlip(size=32).test_view(image), expected)
    with pytest.raises(ValueError, match="test_resize 31 is smaller than size 32"):
        parse_family("resized-crop:size=32,test_resize=31")
    with pytest.raises(ValueError, match="scale_min <= scale_max"):
        parse_family("resized-crop:scale_min=0.9,scale_max=0.5")
    with pytest.raises(ValueError, match="ratio_min <= ratio_max"):
        parse_family("resized-crop:ratio_min=2.0")


def _ramp(height: int, width: int) -> torch.Tensor:
    """A horizontal grey ramp 0..255: a view's slope tells how much it magnifies the image."""
    return torch.linspace(0, 255, width).round().to(torch.uint8).expand(3, height, width).contiguous()


def _magnification(view: torch.Tensor, source_slope: float) -> tuple[float, float]:
    """(view px per image px, its relative error bound) from the ramp's slope in the view.

    Measured between columns a and b of the central rows, clear of padding and of the
    resampling's border; every pixel is rounded to an integer (<= 0.5 off, and the ramp
    itself was rounded), so the slope is within 1 / (b - a) of the true one.
    """
    s = view.shape[-1]
    a, b = s // 4, s - s // 4 - 1
    rows = view[0, a : b + 1].float()
    slope = abs((rows[:, b] - rows[:, a]).mean().item()) / (b - a)
    return source_slope / slope, (1 / (b - a)) / slope


@pytest.mark.parametrize("family,shapes", [
    pytest.param(CropFlip(32, 4), [(32, 32), (28, 28)], id="crop-32"),
    *(pytest.param(ResizedCropFlip(size=s), [(round(1.3 * s), round(1.6 * s)), (round(1.6 * s), round(1.3 * s)),
                                             (round(0.7 * s), round(0.8 * s))], id=f"resized-crop-{s}")
      for s in (32, 64, 128, 224)),
])
def test_test_view_shows_content_at_the_scale_of_the_training_views(family: ViewFamily, shapes):
    """The test view of an image magnifies it as much as a typical training view of it does:
    within the central 90% (5th-95th percentile) of 200 training views' magnifications."""
    params = ViewSpec(family, "pool", 1, seed=0).params(np.arange(200), 0)
    for height, width in shapes:
        image, source_slope = _ramp(height, width), 255 / (width - 1)
        train = [_magnification(family.apply(image, p), source_slope) for p in params]
        scales, errors = np.array([m for m, _ in train]), max(e for _, e in train)
        test, error = _magnification(family.test_view(image), source_slope)
        low, high = np.percentile(scales, [5, 95])
        tol = errors + error
        assert low * (1 - tol) <= test <= high * (1 + tol), (
            f"{family} on {height}x{width}: the test view magnifies {test:.2f}x, training views {low:.2f}-{high:.2f}x"
        )
