"""Packaging: one dependency list in two files, an `rld` command with every stage."""

from __future__ import annotations

import re
import tomllib

import yaml

from helpers import REPO, cli


def _norm(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_yml_lists_exactly_pyprojects_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_norm(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert {_norm(r) for r in pip_section} == wanted
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.replace("python", "") == project["requires-python"]


def test_rld_groups_every_stage():
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("teacher", "dump", "student", "inspect", "verify", "report"):
        assert re.search(rf"^\s+{command}\s", result.output, re.M), command
    assert "train" in cli("teacher", "--help").output and "import" in cli("teacher", "--help").output


def test_ci_runs_the_readmes_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci
