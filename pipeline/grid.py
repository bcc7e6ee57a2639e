"""Grids of students: one config entry with lists expands into named students.

    resnet8x4:
      arch: resnet8x4
      store: resnet20-exhaustive
      loss: [ce, kd, dkd, rld]
      seed: [0, 1, 2]
      loss_options: {beta: [2, 4, 8], warmup: 2}

expands to resnet8x4-ce-s0, ..., resnet8x4-dkd-beta2-s0, ..., resnet8x4-rld-beta8-s2: the
product of every list, with one name part per listed key, in the order loss, arch, store,
options (alphabetical), seed. A loss option applies only to the losses that have it (beta
to dkd and rld, not to ce or kd), so a grid over losses and beta does not run CE three
times. An entry without lists is one student, named by its key.
"""

from __future__ import annotations

import itertools
from typing import Any

from pipeline.errors import ConfigError
from pipeline.methods import get_method

GRID_KEYS = ("loss", "arch", "store", "seed")  # scalar keys that may hold a list


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_students(students: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every config entry as one or more named students with scalar fields only."""
    out: dict[str, dict[str, Any]] = {}
    for base, entry in students.items():
        for name, student in _expand_entry(base, entry):
            if name in out:
                raise ConfigError(f"students: the name {name!r} is produced twice (by {base!r} and another entry)")
            out[name] = student
    return out


def _expand_entry(base: str, entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    options = entry.get("loss_options") or {}
    # Checked for every entry, grid or not: `rld student train` would refuse the option only
    # when the student's job runs, after its teacher and store were made.
    losses = _as_list(entry.get("loss"))
    for loss in losses:
        try:
            get_method(loss)
        except ValueError as err:
            raise ConfigError(f"students.{base}.loss: {err}") from None
    for key in options:
        if not any(key in get_method(loss).defaults for loss in losses):
            raise ConfigError(f"students.{base}.loss_options.{key} applies to none of the losses {losses}")
    listed = [k for k in GRID_KEYS if isinstance(entry.get(k), list)]
    listed_options = sorted(k for k, v in options.items() if isinstance(v, list))
    if not listed and not listed_options:
        return [(base, entry)]
    for key in listed + [f"loss_options.{k}" for k in listed_options]:
        values = entry[key] if "." not in key else options[key.split(".", 1)[1]]
        if not values:
            raise ConfigError(f"students.{base}.{key} is an empty list")
        if len(set(map(_label, values))) != len(values):  # 2 and 2.0 would both be named "2"
            raise ConfigError(f"students.{base}.{key} lists a value twice: {values}")

    expanded = []
    scalars = {k: _as_list(entry.get(k)) for k in GRID_KEYS if k in entry}
    for combo in itertools.product(*scalars.values()):
        student = {**entry, **dict(zip(scalars, combo))}
        own = {k: v for k, v in options.items() if k in get_method(student["loss"]).defaults}
        grid_here = [k for k in listed_options if k in own]
        for values in itertools.product(*(own[k] for k in grid_here)):
            chosen = {**own, **dict(zip(grid_here, values))}
            parts = [base]
            parts += [_label(student[k]) for k in ("loss", "arch", "store") if k in listed]
            parts += [f"{k}{_label(chosen[k])}" for k in grid_here]
            if "seed" in listed:
                parts.append(f"s{student['seed']}")
            expanded.append(("-".join(parts), {**student, "loss_options": chosen}))
    return expanded
