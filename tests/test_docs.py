"""The README and docs/ hold: links that resolve, commands that exist, a README one can read."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from helpers import REPO
from stages.cli import main

PAGES = [REPO / "README.md", REPO / "cache" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """The anchors a Markdown page offers on GitHub: its headings' slugs and explicit ids."""
    text = page.read_text()
    anchors = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to {target} finds no {resolved}"
        if anchor:
            assert anchor in _anchors(resolved), f"{page.name}: {resolved.name} has no anchor #{anchor}"


def _command_lines(page: Path) -> list[str]:
    """Shell lines of the page's sh code blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _visible_options(command: click.Command) -> set[str]:
    return {o for p in command.params if isinstance(p, click.Option) and not p.hidden
            for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}


def _check_rld(words: list[str], where: str) -> None:
    command: click.Command = main
    path = []
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        name = words.pop(0)
        assert name in command.commands and not command.commands[name].hidden, f"{where}: no command rld {' '.join([*path, name])}"
        command = command.commands[name]
        path.append(name)
    for word in words:
        flag = word.split("=")[0]
        if flag.startswith("-") and flag not in ("-", "--"):
            assert flag in _visible_options(command), f"{where}: rld {' '.join(path)} has no option {flag}"


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_command_blocks_name_only_existing_commands_and_options(page: Path) -> None:
    for line in _command_lines(page):
        for part in re.split(r"\s*(?:&&|;|&|\|)\s*", line):
            try:
                words = shlex.split(part.replace("[", "").replace("]", ""))
            except ValueError:
                words = part.split()
            if not words:
                continue
            program = Path(words[0]).name
            where = f"{page.name}: {part}"
            if program == "rld":
                _check_rld(words[1:], where)
            elif program == "make":
                for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
                    assert target in _make_targets(), f"{where}: no make target {target}"
            elif program == "snakemake":
                for i, word in enumerate(words):
                    if word == "--configfile":
                        assert (REPO / words[i + 1]).is_file(), f"{where}: no {words[i + 1]}"


def test_the_readme_is_short_and_the_docs_hold_the_rest() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    docs = {p.name for p in (REPO / "docs").glob("*.md")}
    assert {"results.md", "method.md", "methods.md", "cli.md", "config.md", "workflow.md"} <= docs
    for page in sorted(docs):
        assert f"docs/{page}" in readme, f"the README does not link docs/{page}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_process_notes(page: Path) -> None:
    """The docs speak of the project, not of how its work was organised."""
    text = page.read_text()
    for pattern in (r"\b[Ii]ssue \d+", r"\bsessions?\b", r"\bhelpers? (?:wrote|agent)"):
        assert not re.search(pattern, text), f"{page.name}: {re.search(pattern, text)[0]!r}"


def test_the_checks_above_catch_a_bad_link_and_a_bad_option(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text("[x](missing.md)\n\n```sh\nrld student train --logits s.zarr\n```\n")
    with pytest.raises(AssertionError, match="finds no"):
        test_every_relative_link_resolves(page)
    with pytest.raises(AssertionError, match="has no option --logits"):
        test_command_blocks_name_only_existing_commands_and_options(page)
