"""The `rld` command itself: one vocabulary, help that answers without torch, old spellings
that keep working for a release."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from helpers import REPO, SUBPROCESS_ENV, SYNTH, cli
from stages.cli import main

PIPELINE_ORDER = ["data", "teacher", "dump", "ensemble", "inspect", "verify", "student", "report", "models"]


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_commands_are_listed_in_pipeline_order_and_internal_ones_hidden() -> None:
    result = cli("--help")
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == PIPELINE_ORDER
    assert "on-gpus" in main.commands and main.commands["on-gpus"].hidden


@pytest.mark.parametrize("path", [p for p, _ in _commands(main)], ids=" ".join)
def test_every_visible_option_has_help(path: tuple[str, ...]) -> None:
    command = dict(_commands(main))[path]
    missing = [p.opts[0] for p in command.params
               if isinstance(p, click.Option) and not p.hidden and not p.help and p.opts[0] != "--help"]
    assert not missing, f"rld {' '.join(path)}: options without help: {missing}"


def test_one_name_per_concept_across_commands() -> None:
    """--store is the store, --teacher the teacher to run, --view-seed the views' seed and
    --seed the training seed, wherever they appear."""
    options = {path: {o for p in command.params if isinstance(p, click.Option) and not p.hidden for o in p.opts}
               for path, command in _commands(main)}
    for path in (("dump",), ("ensemble",), ("inspect",), ("verify",), ("student", "train")):
        assert "--store" in options[path], path
    for path in (("dump",), ("verify",), ("student", "train")):
        assert "--teacher" in options[path], path
    assert "--view-seed" in options[("dump",)] and "--view-seed" in options[("student", "train")]
    assert "--seed" not in options[("dump",)] and "--seed" not in options[("verify",)]
    assert "--seed" in options[("student", "train")] and "--seed" in options[("teacher", "train")]
    # the old spellings are hidden: accepted, not offered
    assert not {"--logits", "--online-teacher", "--compile"} & options[("student", "train")]
    assert not {"--out", "--seed"} & options[("dump",)] and "--cuda-graph" in options[("student", "train")]


@pytest.mark.slow
def test_help_answers_without_importing_torch() -> None:
    """Every stage imports the library inside its command, so `--help` needs only click."""
    code = ("import sys; from click.testing import CliRunner; from stages.cli import main\n"
            "for args in ([], ['data', 'check'], ['teacher', 'train'], ['teacher', 'import'], ['dump'], ['ensemble'], ['inspect'],\n"
            "             ['verify'], ['student', 'train'], ['report'], ['models']):\n"
            "    assert CliRunner().invoke(main, [*args, '--help']).exit_code == 0, args\n"
            "print(sorted(m for m in ('torch', 'numpy', 'zarr', 'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**SUBPROCESS_ENV, "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def test_the_dump_dtypes_offered_are_the_stores() -> None:
    from pipeline.store import DTYPES
    from stages.dump import STORE_DTYPES

    assert STORE_DTYPES == DTYPES


def test_the_ensemble_spaces_offered_are_the_librarys() -> None:
    from pipeline.ensemble import SPACES
    from stages.ensemble import SPACES as OFFERED

    assert OFFERED == SPACES


# ---------------------------------------------------------------------------------------
# Old spellings: still working, with a deprecation line


def test_old_spellings_still_work_with_a_deprecation_line(tmp_path, teacher_file) -> None:
    old = tmp_path / "old.zarr"
    dumped = cli("dump", "--teacher", str(teacher_file), "--dataset", SYNTH, "--views", "per-epoch:1", "--seed", "3",
                 "--dtype", "float32", "--quiet", "--out", str(old))
    assert dumped.exit_code == 0, dumped.output
    assert dumped.stderr.splitlines() == [
        "rld: --out is deprecated and will be removed in the next release; use --store",
        "rld: --seed is deprecated and will be removed in the next release; use --view-seed"]
    new = tmp_path / "new.zarr"
    assert cli("dump", "--teacher", str(teacher_file), "--dataset", SYNTH, "--views", "per-epoch:1", "--view-seed", "3",
               "--dtype", "float32", "--quiet", "--store", str(new)).stderr == ""
    ids = {json.loads(cli("inspect", "--store", str(path), "--json").stdout)["store_id"] for path in (old, new)}
    assert len(ids) == 1  # the same store: --seed was the view seed

    inspected = cli("inspect", str(old), "--json")
    assert inspected.exit_code == 0 and inspected.stderr.startswith("rld: the store as a positional argument is deprecated")
    student = ["student", "train", "--arch", "resnet8", "--loss", "kd", "--epochs", "1", "--batch-size", "48",
               "--milestones", "", "--no-channels-last", "--quiet"]
    trained = cli(*student, "--logits", str(old), "--online-teacher", str(teacher_file), "--compile",
                  "--out", str(tmp_path / "s"))
    assert trained.exit_code == 0, trained.output
    assert {line.split(" is deprecated")[0] for line in trained.stderr.splitlines() if "deprecated" in line} == {
        "rld: --logits", "rld: --online-teacher", "rld: --compile"}
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["signal"]["kind"] == "online" and config["config"]["compile"] is True


def test_old_and_new_spelling_together_is_an_error(tmp_path) -> None:
    result = cli("student", "train", "--arch", "resnet8", "--store", "a.zarr", "--logits", "b.zarr", "--out",
                 str(tmp_path / "s"))
    assert result.exit_code == 2 and "--logits is the old name of --store: give --store only" in result.stderr
    result = cli("inspect")
    assert result.exit_code == 2 and "Missing option '--store'" in result.stderr
