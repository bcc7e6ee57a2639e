"""pipeline.models: parity with mdistiller, the registry, and load_weights.

mdistiller's code cannot ship here, so `fixtures/mdistiller_models.json` carries
what we compare against, generated from *their* models by
`fixtures/make_mdistiller_models.py`: every state-dict key and shape, the
parameter count, and reference logits of each model after a platform-independent
weight fill (`fill_deterministic_`, also used by that script). Each model is
built once per session (`built`) and fed two images, to keep this file fast.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import math
import pathlib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from torch import nn

from pipeline import models

FIXTURE = Path(__file__).parent / "fixtures" / "mdistiller_models.json"
# Missing only while fixtures/make_mdistiller_models.py (which imports this file) runs.
MDISTILLER: dict[str, Any] = json.loads(FIXTURE.read_text())["models"] if FIXTURE.exists() else {}

MDISTILLER_CIFAR = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "ResNet18", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1",
    "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2",
]  # fmt: skip
IMAGENET = ["resnet18", "resnet34", "resnet50", "MobileNetV1"]
CIFAR = models.available("cifar")  # the mdistiller names plus RLD's extra WRNs
ALL = models.available()

# Parameters at 100 classes, in millions, as the RLD / DKD papers print them.
PAPER_PARAMS_M = {
    "resnet8x4": 1.23, "resnet32x4": 7.43, "resnet20": 0.28, "resnet32": 0.47, "resnet56": 0.86,
    "resnet110": 1.74, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26, "vgg8": 3.97,
    "vgg13": 9.46, "MobileNetV2": 0.81, "ShuffleV2": 1.36, "ResNet50": 23.71,
}  # fmt: skip


# --- deterministic weights, shared with fixtures/make_mdistiller_models.py -------------


_PERIOD = 65521  # prime, so the repeating pattern never lines up with channel or kernel sizes


@functools.cache
def _hashed_period() -> torch.Tensor:
    x = torch.arange(_PERIOD, dtype=torch.int64)
    x = (x * 2654435761) % 2**32
    x = x ^ (x >> 15)
    x = (x * 73244475) % 2**32
    x = x ^ (x >> 13)
    u = (x.double() / 2**31 - 1).float()
    return torch.cat([u, u])  # two periods, so any rotation is a slice


def hash_uniform(n: int, salt: int) -> torch.Tensor:
    """`n` values in [-1, 1) from integer hashing: identical on every platform and
    torch version, unlike any RNG, so reference logits can be stored. One hashed
    period, rotated by `salt` and tiled, keeps filling a ResNet50 fast."""
    start = salt * 7919 % _PERIOD
    u = _hashed_period()[start : start + _PERIOD]
    return u.repeat(n // _PERIOD + 1)[:n] if n > _PERIOD else u[:n].clone()


@torch.no_grad()
def fill_deterministic_(model: nn.Module) -> None:
    """Overwrite every parameter and buffer with well-scaled hashed values."""
    for key, t in model.state_dict().items():
        if not t.is_floating_point():
            t.zero_()  # num_batches_tracked
            continue
        u = hash_uniform(t.numel(), zlib.crc32(key.encode()) % 2000).reshape(t.shape)
        if key.endswith("running_var"):
            t.copy_(1.0 + 0.25 * (u + 1))
        elif t.dim() > 1:
            t.copy_(u * math.sqrt(6.0 / t[0].numel()))  # He-uniform over fan-in
        elif key.endswith("weight"):
            t.copy_(1.0 + 0.2 * u)  # BN scale
        else:
            t.copy_(0.1 * u)  # biases, running means


def reference_input(size: int, channels: int = 3) -> torch.Tensor:
    return 2 * hash_uniform(2 * channels * size * size, 1999).reshape(2, channels, size, size)


def reference_run(
    model: nn.Module, size: int, logits_of: Callable[[Any], torch.Tensor] = lambda out: out
) -> dict[str, Any]:
    """Fill, then eval- and train-mode logits (first 10 classes) and BN update count."""
    fill_deterministic_(model)
    x = reference_input(size)
    with torch.no_grad():
        model.eval()
        eval_logits = logits_of(model(x))
        model.train()
        train_logits = logits_of(model(x))
    model.eval()
    updates = sum(int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked"))
    return {
        "eval_logits": eval_logits[:, :10].tolist(),
        "train_logits": train_logits[:, :10].tolist(),
        "bn_updates": updates,
    }


# --- helpers ------------------------------------------------------------------------


@functools.cache
def built(name: str) -> nn.Module:
    """One model per architecture for the whole session; tests may refill its weights."""
    torch.manual_seed(0)
    return models.build(name, MDISTILLER[name]["num_classes"])


def input_size(name: str) -> int:
    """The registry's size, except torchvision's ResNets pool adaptively: 64 is enough."""
    return 64 if name in ("resnet18", "resnet34", "resnet50") else models.get_spec(name).input_size


def shapes(model: nn.Module) -> list[list[Any]]:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def logits_close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    """Close relative to the largest logit: deep nets in eval mode reach large values."""
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * scale)


# --- the registry -------------------------------------------------------------------


def test_every_mdistiller_name_is_registered() -> None:
    assert set(MDISTILLER_CIFAR) <= set(models.available("cifar"))
    assert models.available("imagenet") == IMAGENET
    assert set(MDISTILLER) == set(ALL), "fixture and registry disagree on the architectures"


def test_unknown_name_lists_valid_names_and_suggests() -> None:
    with pytest.raises(ValueError, match="Valid names: resnet8, ") as err:
        models.build("resnet8x5", 100)
    assert "Did you mean 'resnet8x4'" in str(err.value)


def test_build_validates_sizes_and_records_arch() -> None:
    with pytest.raises(ValueError, match="positive"):
        models.build("resnet8", 0)
    assert built("resnet8").arch == "resnet8"


# --- parity with mdistiller ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_state_dict_keys_and_shapes_match_mdistiller(name: str) -> None:
    got, want = shapes(built(name)), MDISTILLER[name]["state_dict"]
    if got != want:
        got_d, want_d = dict(map(tuple, got)), dict(map(tuple, want))  # type: ignore[arg-type]
        pytest.fail(
            f"{name}: missing {sorted(want_d.keys() - got_d.keys())[:5]}, "
            f"unexpected {sorted(got_d.keys() - want_d.keys())[:5]}, "
            f"mis-shaped {[k for k in want_d.keys() & got_d.keys() if got_d[k] != want_d[k]][:5]}, "
            f"order differs: {list(got_d) != list(want_d)}"
        )


@pytest.mark.parametrize("name", ALL)
def test_parameter_count_matches_mdistiller_and_paper(name: str) -> None:
    count = sum(p.numel() for p in built(name).parameters())
    assert count == MDISTILLER[name]["num_params"]
    if name in PAPER_PARAMS_M:
        assert round(count / 1e6, 2) == PAPER_PARAMS_M[name]


def test_paper_counts_that_are_quoted_exactly() -> None:
    assert MDISTILLER["resnet8x4"]["num_params"] == 1_233_540
    assert MDISTILLER["resnet32x4"]["num_params"] == 7_433_860


@pytest.mark.parametrize("name", [n for n in ALL if "reference" in MDISTILLER.get(n, {})])
def test_logits_match_mdistiller_reference(name: str) -> None:
    """Same weights as mdistiller's model got -> same logits, eval and train mode.

    Locally (same machine) the match was bitwise; 1e-4 of the largest logit leaves room for
    other BLAS/oneDNN kernels (float32 accumulation over deep nets: ~1e-6 typical, 100x
    margin). `bn_updates` catches WRN's double BN update (see wrn.py).
    """
    want = MDISTILLER[name]["reference"]
    got = reference_run(built(name), input_size(name))
    for mode in ("eval_logits", "train_logits"):
        logits_close(torch.tensor(got[mode]), torch.tensor(want[mode]), rel=1e-4)
    assert got["bn_updates"] == want["bn_updates"]


@pytest.mark.parametrize("name", ALL)
def test_forward_gives_logits_also_under_channels_last(name: str) -> None:
    model = built(name)
    fill_deterministic_(model)  # whatever ran before, start from known weights
    model.eval()
    x = reference_input(input_size(name))
    with torch.no_grad():
        out = model(x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out_cl = cl(x.contiguous(memory_format=torch.channels_last))
    assert isinstance(out, torch.Tensor) and out.shape == (2, MDISTILLER[name]["num_classes"])
    assert torch.isfinite(out).all()
    # Another kernel, float32 rounding: measured at most 1.4e-6 of the largest logit
    # (ResNet50; AMD EPYC), so 1e-5 leaves 7x for other CPUs' kernels.
    logits_close(out_cl, out, rel=1e-5)


def test_wrn_repeats_mdistillers_extra_bn_updates() -> None:
    x = reference_input(32)
    for quirk, updates in ((True, 2), (False, 1)):
        model = models.build("wrn_16_1", 10, mdistiller_bn_quirk=quirk).train()
        model(x)
        assert int(model.block2.layer[0].bn1.num_batches_tracked) == updates
        assert int(model.block1.layer[0].bn1.num_batches_tracked) == 1


# --- in_channels (grey-scale data) ------------------------------------------------------


@pytest.mark.parametrize("name", CIFAR + ["resnet18", "MobileNetV1"])
def test_in_channels_changes_only_the_first_conv(name: str) -> None:
    model = models.build(name, 10, in_channels=1)
    want = [list(e) for e in MDISTILLER[name]["state_dict"]]
    first_conv = next(i for i, (_, shape) in enumerate(want) if len(shape) == 4)
    want[first_conv][1] = [want[first_conv][1][0], 1, *want[first_conv][1][2:]]
    want[-2][1] = [10, *want[-2][1][1:]]  # classifier weight and bias come last
    want[-1][1] = [10]
    assert shapes(model) == want
    size = input_size(name)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, size, size)).shape == (2, 10)


# --- load_weights ---------------------------------------------------------------------


def _trained_resnet8x4() -> nn.Module:
    """A small model whose BN statistics and weights differ from a fresh build."""
    torch.manual_seed(1)
    model = models.build("resnet8x4", 100)
    model.train()(torch.randn(4, 3, 32, 32))
    return model.eval()


def _same_logits(a: nn.Module, b: nn.Module) -> bool:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize(
    "legacy, cuda_tagged",
    [(False, False), (True, False), (True, True)],
    ids=["zip", "legacy-format", "legacy-format-cuda-storages"],
)
def test_mdistiller_checkpoint_round_trip(tmp_path: Path, legacy: bool, cuda_tagged: bool) -> None:
    """mdistiller's save_checkpoint layout; the teachers in its cifar_teachers.tar
    were saved by CRD from GPU tensors in PyTorch's pre-zip format."""
    src = _trained_resnet8x4()
    opt = torch.optim.SGD(src.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    src(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    ckpt = {"epoch": 240, "model": src.state_dict(), "best_acc": torch.tensor([73.5]), "optimizer": opt.state_dict()}
    path = tmp_path / "ckpt_epoch_240.pth"
    tag = (lambda storage: "cuda:0") if cuda_tagged else torch.serialization.location_tag
    with mock.patch.object(torch.serialization, "location_tag", tag):
        torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    assert (b"cuda:0" in path.read_bytes()) == cuda_tagged

    dst = models.build("resnet8x4", 100)
    assert not _same_logits(src, dst)
    meta = models.load_weights(dst, path)
    assert _same_logits(src, dst)
    assert meta["epoch"] == 240 and float(meta["best_acc"]) == 73.5 and "model" not in meta
    assert set(meta["optimizer"]) == {"state", "param_groups"}


def test_bare_and_wrapped_state_dicts_load() -> None:
    src = _trained_resnet8x4()
    sd = src.state_dict()
    for state in (
        sd,
        {f"module.{k}": v for k, v in sd.items()},  # DataParallel / DDP
        {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile
        {"model": {f"module.student.{k}": v for k, v in sd.items()} | {"module.teacher.fc.bias": torch.zeros(3)}},
    ):
        dst = models.build("resnet8x4", 100)
        assert models.load_weights(dst, state) == {}
        assert _same_logits(src, dst)


def test_project_teacher_file_and_its_arch_check(tmp_path: Path) -> None:
    src = _trained_resnet8x4()
    path = tmp_path / "teacher.pt"
    torch.save({"format": "rld-teacher/1", "arch": "resnet8x4", "num_classes": 100, "model": src.state_dict()}, path)
    dst = models.build("resnet8x4", 100)
    assert models.load_weights(dst, path)["format"] == "rld-teacher/1"
    assert _same_logits(src, dst)
    with pytest.raises(ValueError, match="'resnet8x4', not 'resnet32x4'"):
        models.load_weights(dst, path, arch="resnet32x4")


def test_torchvision_weight_file_loads(tmp_path: Path) -> None:
    import torchvision

    src = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(src.state_dict(), path)
    dst = built("resnet18")
    models.load_weights(dst, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x), dst.eval()(x))


def test_mismatch_names_arch_and_lists_missing_unexpected_misshaped() -> None:
    ckpt = {"model": models.build("resnet8x4", 100).state_dict(), "epoch": 240}
    with pytest.raises(ValueError) as err:
        models.load_weights(models.build("resnet32x4", 10), ckpt)
    msg = str(err.value)
    assert "'resnet32x4'" in msg and "missing (" in msg and "unexpected: none" in msg
    assert "fc.weight: checkpoint (100, 256) vs model (10, 256)" in msg
    # resnet8x4's keys are a subset of resnet32x4's, so only a width change shows all three kinds.
    with pytest.raises(ValueError) as err:
        models.load_weights(models.build("resnet8x4", 100), models.build("resnet20", 100).state_dict())
    msg = str(err.value)
    assert "missing (" in msg and "unexpected (" in msg and "mis-shaped (" in msg
    assert "conv1.weight: checkpoint (16, 3, 3, 3) vs model (32, 3, 3, 3)" in msg


def test_non_strict_skips_missing_but_never_misshaped(caplog: pytest.LogCaptureFixture) -> None:
    sd = _trained_resnet8x4().state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    dst = models.build("resnet8x4", 100)
    with caplog.at_level(logging.WARNING):
        models.load_weights(dst, partial, strict=False)
    assert "2 missing" in caplog.text
    assert torch.equal(dst.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    with pytest.raises(ValueError, match="mis-shaped"):
        models.load_weights(models.build("resnet8x4", 10), sd, strict=False)


def test_unreadable_files_raise_value_error_naming_them(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="junk.pth is not a readable PyTorch checkpoint"):
        models.load_weights(models.build("resnet8", 10), junk)
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ValueError, match="list.pth holds a list"):
        models.load_weights(models.build("resnet8", 10), listing)
    with pytest.raises(FileNotFoundError):
        models.load_weights(models.build("resnet8", 10), tmp_path / "absent.pth")


def test_pickled_objects_need_trust_except_argparse_namespace(tmp_path: Path) -> None:
    sd = models.build("resnet8", 10).state_dict()
    crd_last = tmp_path / "resnet8_last.pth"  # CRD stores its argparse options under "opt"
    torch.save({"opt": argparse.Namespace(model="resnet8"), "model": sd}, crd_last)
    assert models.load_weights(models.build("resnet8", 10), crd_last)["opt"].model == "resnet8"

    odd = tmp_path / "odd.pth"
    torch.save({"model": sd, "where": pathlib.PurePosixPath("/x")}, odd)
    with pytest.raises(ValueError, match="odd.pth pickles .*PurePosixPath.*trusted=True"):
        models.load_weights(models.build("resnet8", 10), odd)
    assert models.load_weights(models.build("resnet8", 10), odd, trusted=True)["where"].name == "x"


@pytest.mark.parametrize("name", ["resnet8x4", "resnet20", "ResNet18", "wrn_16_2", "vgg8", "MobileNetV2"])
def test_convolutions_start_from_he_normal_with_fan_out(name: str) -> None:
    """mdistiller's initial weights: every conv N(0, 2 / (k*k*out_channels)), CIFAR ResNets through
    kaiming_normal_(fan_out), WRN/VGG/MobileNetV2 through normal_(0, sqrt(2/n)) (fill_deterministic_
    overwrites them above, so only this checks them). A fan-in formula differs wherever a conv
    changes the width: the stem (3 -> 16..64 channels, a factor 2.3-4.6 in std) and each stage's
    first and shortcut convs (sqrt 2)."""
    torch.manual_seed(0)
    model = models.build(name, 100)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for conv_name, conv in convs:
        expected = math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels))
        # The std of N normal draws has a standard error of std / sqrt(2N); allow 6 of them.
        bound = 6 / math.sqrt(2 * conv.weight.numel())
        std = float(conv.weight.detach().std())
        assert abs(std / expected - 1) < bound, (conv_name, std, expected)


def test_a_teacher_file_keeps_its_input_channels_and_refuses_edited_weights(tmp_path: Path) -> None:
    """A grey-scale (Fashion-MNIST) teacher is rebuilt with one input channel and computes what
    it computed when saved; a file whose weights changed after saving (the recorded sha256 no
    longer matches) is refused rather than silently used as "the" teacher of a store."""
    from pipeline.teacher import Teacher, load_teacher

    torch.manual_seed(0)
    grey = models.build("resnet8", 10, in_channels=1).eval()
    Teacher("resnet8", 10, 1, grey, {}, {}, {}, "test").save(tmp_path / "grey.pt")
    loaded = load_teacher(tmp_path / "grey.pt")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert loaded.in_channels == 1 and torch.equal(loaded.model(x), grey(x))

    payload = torch.load(tmp_path / "grey.pt", weights_only=True)
    payload["model"]["fc.bias"] = payload["model"]["fc.bias"] + 1e-3
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=r"edited\.pt: weights hash \w+… differs from the recorded \w+…"):
        load_teacher(tmp_path / "edited.pt")
