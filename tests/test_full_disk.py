"""A full disk is one line naming what could not be written, and the rerun resumes.

The real thing needs a small file system of its own: a tmpfs, which root may mount (the
test is skipped where it may not). The rest fakes ENOSPC where the library writes.
"""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import SYNTH, cli
from pipeline.errors import DiskFull
from pipeline.files import save_torch, write_json

DUMP = ["--dataset", SYNTH, "--views", "per-epoch:40", "--dtype", "float32", "--chunk-samples", "8", "--quiet"]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("write", [lambda p: save_torch({"w": torch.ones(3)}, p), lambda p: write_json(p, {"a": 1})])
def test_a_full_disk_names_the_file_and_leaves_what_was_there(tmp_path, monkeypatch, write):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the previous checkpoint")
    monkeypatch.setattr(Path, "write_bytes", _no_space)
    monkeypatch.setattr(Path, "write_text", _no_space)
    with pytest.raises(DiskFull) as err:
        write(target)
    assert str(err.value).startswith(f"{target}: could not be written, the disk is full (")
    assert str(err.value).endswith("free some space and run the same command again: it resumes where it stopped")
    monkeypatch.undo()
    assert target.read_bytes() == b"the previous checkpoint"  # the rename never happened


@pytest.fixture
def small_disk(tmp_path):
    """A 200 kB tmpfs at tmp_path/disk, unmounted afterwards; `grow()` gives it 20 MB."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")

    class Disk:
        path = mount

        @staticmethod
        def grow() -> None:
            subprocess.run(["mount", "-o", "remount,size=20m", str(mount)], check=True)

    yield Disk
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_dump_and_a_student_on_a_full_disk_stop_in_one_line_and_resume_bitwise(tmp_path, teacher_file, small_disk):
    store = small_disk.path / "s.zarr"
    full = cli("dump", "--teacher", str(teacher_file), *DUMP, "--store", str(store))
    assert full.exit_code == 1
    assert full.stderr.strip().splitlines() == [
        f"Error: {store}: could not be written, the disk is full (0 B free there); free some space and run the "
        "same command again: it resumes where it stopped"]
    reference = tmp_path / "reference.zarr"
    assert cli("dump", "--teacher", str(teacher_file), *DUMP, "--store", str(reference)).exit_code == 0
    small_disk.grow()
    assert cli("dump", "--teacher", str(teacher_file), *DUMP, "--store", str(store)).exit_code == 0
    import zarr

    for name in ("logits", "views", "input_crc", "eval/logits"):
        assert np.array_equal(zarr.open_array(store / name)[:], zarr.open_array(reference / name)[:]), name

    # A student whose checkpoints fill the disk: one line, then a resumed run equal to one never stopped.
    filler = small_disk.path / "filler"
    free = int(subprocess.run(["df", "--output=avail", "-B1", str(small_disk.path)], capture_output=True,
                              text=True).stdout.split()[-1])
    filler.write_bytes(b"\0" * (free - 60_000))  # room for config.json, not for a checkpoint
    student = ["student", "train", "--arch", "resnet8", "--loss", "kd", "--epochs", "2", "--batch-size", "48",
               "--milestones", "", "--no-channels-last", "--quiet", "--store", str(reference)]
    stopped = cli(*student, "--out", str(small_disk.path / "student"))
    assert stopped.exit_code == 1
    line = stopped.stderr.strip()
    assert line.startswith(f"Error: {small_disk.path / 'student'}/checkpoint.pt: could not be written, the disk is full")
    assert len(line.splitlines()) == 1
    filler.unlink()
    assert cli(*student, "--out", str(small_disk.path / "student")).exit_code == 0
    assert cli(*student, "--out", str(tmp_path / "never-stopped")).exit_code == 0
    for name in ("final.pt",):
        a = torch.load(small_disk.path / "student" / name, weights_only=True)["model"]
        b = torch.load(tmp_path / "never-stopped" / name, weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((small_disk.path / "student" / "summary.json").read_text())["final"]["top1"] == \
        json.loads((tmp_path / "never-stopped" / "summary.json").read_text())["final"]["top1"]
