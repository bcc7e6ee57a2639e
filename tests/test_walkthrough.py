"""docs/walkthrough.md, run as written on a generated folder.

The page's config and commands are read from the page itself; the test changes only the
folder's path and the sizes (models, epochs, views, seeds) that make it run in a minute on
two cores. So a command, option or config key the page shows and the code lacks fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, SUBPROCESS_ENV, make_image_folder, max_weight_delta

pytestmark = [pytest.mark.slow, pytest.mark.once]

PAGE = REPO / "docs" / "walkthrough.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", PAGE.read_text(), re.S | re.M)


def _commands() -> list[list[str]]:
    """The page's shell commands, one per line, comments dropped."""
    lines = [line.split("#")[0].strip() for block in _blocks("bash") for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    program = {"rld": [sys.executable, "-m", "stages.cli"], "snakemake": [sys.executable, "-m", "snakemake"],
               "cat": ["cat"]}[argv[0]]
    proc = subprocess.run([*program, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_walkthrough_runs_as_written(tmp_path):
    (config_text,) = _blocks("yaml")
    config = yaml.safe_load(config_text)
    folder = make_image_folder(tmp_path / "shapes", train=20, test=10)
    wd = tmp_path / "work"
    wd.mkdir()
    shutil.copy(REPO / "Snakefile", wd / "Snakefile")
    shutil.copytree(REPO / "config", wd / "config")

    # Only the path and the sizes change; every key the page shows stays.
    page_root = config["data_root"]
    config["data_root"] = str(folder)
    config["recipe"]["epochs"] = 2
    config["teachers"]["big"]["arch"] = "resnet8"
    config["stores"]["big-views"]["views"] = "per-epoch:2"
    config["students"]["small"].update(arch="resnet8", seed=[0])
    config["threads"] = 1
    (wd / "my-folder.yaml").write_text(yaml.safe_dump(config))

    commands = _commands()
    assert [c[:2] for c in commands] == [
        ["rld", "data"], ["snakemake", "--cores"], ["snakemake", "--cores"], ["cat", "reports/my-folder/summary.md"],
        ["rld", "student"]]
    outputs = []
    for argv in commands:
        argv = [str(folder) if a == page_root else a for a in argv]
        if argv[:2] == ["rld", "student"]:  # the page's model and sizes, as above
            argv = [{"resnet8x4": "resnet8", "2": "1"}.get(a, a) for a in argv] + ["--quiet"]
        outputs.append(_run(argv, wd).stdout)

    report = outputs[3]
    for loss in ("ce", "kd", "dkd", "rld"):
        assert re.search(rf"^\| small-{loss}-s0 \|", report, re.M), report
    # The student by hand found the images through the store and is the workflow's, weight for weight.
    assert max_weight_delta(wd / "students/by-hand/final.pt", wd / "students/my-folder/small-rld-s0/final.pt") == 0.0
