"""Which training images are held out for validation, and which a subset keeps.

A validation split holds out N images of each class (or a fraction of each class) of the
training split; teachers, stores and students all exclude them, and every choice (a loss
weight, best.pt) is made on them. They are drawn per class **at random from a seed** by
default: a user's folder is rarely in random order (cameras, photo shoots, writers come in
runs), and the last files of each class are then a biased sample. On one such folder every
model's validation top-1 was 5-8 points below its test top-1 with the last-N split.

The old split, the last N images of each class in file order, stays available by name
(`last:N`) to reproduce results made with it; Fashion-MNIST's order is random, so there the
two are equally fair. A record of the split is part of a store's and a student's identity:
a plain number (how earlier versions recorded their last-N splits) or, for a random split,
`{"size": N, "draw": "random", "seed": S}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DRAWS = ("random", "last")


@dataclass(frozen=True)
class ValSplit:
    """`size` images of each class (an int >= 1), or that fraction of each class (0 < f < 1),
    drawn at random from `seed` (`draw="random"`) or the last ones in file order (`"last"`)."""

    size: int | float
    draw: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.draw not in DRAWS:
            raise ValueError(f"a validation split is drawn {' or '.join(DRAWS)}, not {self.draw!r}")
        if isinstance(self.size, bool) or not (
                (isinstance(self.size, int) and self.size >= 1) or (isinstance(self.size, float) and 0 < self.size < 1)):
            raise ValueError(f"val_split must be an integer >= 1 (per class) or a fraction in (0, 1), got {self.size!r}")

    def record(self) -> int | float | dict[str, Any]:
        """How stores and students record it (part of their identity)."""
        return self.size if self.draw == "last" else {"size": self.size, "draw": "random", "seed": self.seed}

    @classmethod
    def from_record(cls, record: Any) -> "ValSplit | None":
        """The split a store or student recorded (a plain number: the last-N split)."""
        if record is None:
            return None
        if isinstance(record, dict):
            return cls(record["size"], record.get("draw", "random"), record.get("seed", 0))
        return cls(record, "last")

    def __str__(self) -> str:
        """As `--val-split` takes it (with `--val-seed` for the seed)."""
        return f"{self.size}" if self.draw == "random" else f"last:{self.size}"

    def held_out(self, labels: np.ndarray) -> np.ndarray:
        """Sorted indices of the validation samples among `labels` (a whole training split)."""
        labels = np.asarray(labels)
        held: list[np.ndarray] = []
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            count = self.size if isinstance(self.size, int) else int(round(self.size * len(rows)))
            if not 1 <= count < len(rows):
                raise ValueError(
                    f"val_split {self} holds out {count} of the {len(rows)} training samples of class {c}; "
                    "it must leave at least one sample for validation and one for training"
                )
            if self.draw == "last":
                held.append(rows[-count:])
            else:  # each class from its own stream: a class's draw does not depend on the others
                held.append(np.random.default_rng([self.seed, int(c), 0x7A1]).choice(rows, count, replace=False))
        return np.sort(np.concatenate(held))


def parse_val_split(value: Any, seed: int | None = None) -> ValSplit | None:
    """'100' -> 100 images of each class at random; '0.1' -> 10% of each class; 'last:100' ->
    the last 100 of each class in file order; a ValSplit as it is; None or '' -> no split."""
    if value is None or value == "":
        return None
    if isinstance(value, ValSplit):
        return value if seed is None else ValSplit(value.size, value.draw, seed)
    draw, number_text = "random", value
    if isinstance(value, str) and ":" in value:
        draw, _, number_text = value.partition(":")
        if draw not in DRAWS:
            raise ValueError(f"val_split {value!r}: write N, a fraction, or last:N (the last N of each class)")
    try:
        number = float(number_text)
    except (TypeError, ValueError):
        raise ValueError(f"val_split must be images per class (e.g. 100), a fraction (e.g. 0.1) or last:N, "
                         f"got {value!r}") from None
    size: int | float = int(number) if number.is_integer() and number >= 1 else number
    return ValSplit(size, draw, 0 if seed is None else seed)


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` samples of every class, in dataset order."""
    if per_class < 1:
        raise ValueError(f"subset must be >= 1 sample per class, got {per_class}")
    labels = np.asarray(labels)
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:per_class]] = True
    return np.flatnonzero(keep)
