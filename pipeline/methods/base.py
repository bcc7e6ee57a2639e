"""What a distillation method declares: its options, its terms and its objective.

Torch-free on purpose: the CLI's help, the config schema, grid expansion, the report and the
docs read these declarations without paying for torch's import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from torch import Tensor

Value = float | bool | str
Params = Mapping[str, Value]
# (student logits, teacher logits or None, labels, options, epoch scales) -> {"ce", *terms, "total"}
Compute = Callable[["Tensor", "Tensor | None", "Tensor", Params, Any], dict[str, "Tensor"]]

KINDS = ("weight", "positive", "fraction", "flag", "choice")


@dataclass(frozen=True)
class Option:
    """One option of a method: its default, what it means, and which values are valid.

    `kind`: weight (a number >= 0), positive (> 0), fraction (0 < x <= 1), flag (a bool) or
    choice (one of `choices`).
    """

    name: str
    default: Value
    help: str
    kind: str = "weight"
    unit: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"option {self.name!r}: choices are for kind 'choice' only")

    @property
    def valid(self) -> str:
        """The valid values, in words (for error messages and docs)."""
        return {
            "weight": "a finite number >= 0",
            "positive": "a positive finite number",
            "fraction": "a number in (0, 1]",
            "flag": "true or false",
            "choice": " | ".join(self.choices),
        }[self.kind]

    def check(self, method: str, value: object) -> Value:
        """`value` as the objective uses it (numbers as float); ValueError naming the method,
        the option and the valid values otherwise."""
        if self.kind == "flag":
            if isinstance(value, bool):
                return value
        elif self.kind == "choice":
            if value in self.choices:
                return str(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
            low_ok = {"weight": number >= 0, "positive": number > 0, "fraction": number > 0}[self.kind]
            if math.isfinite(number) and low_ok and (self.kind != "fraction" or number <= 1):
                return number
        raise ValueError(f"option {self.name!r} for method {method!r} must be {self.valid}, got {value!r}")

    def describe_default(self) -> str:
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


def warmup_only(params: Params, factor: float) -> tuple[float, ...]:
    """The epoch scales of a method whose terms are not weighted per epoch beyond the warm-up."""
    return (factor,)


@dataclass(frozen=True)
class Method:
    """A distillation method: the unit the registry holds (one module per method).

    `compute(student, teacher, labels, params, scales)` gets validated float32/float64
    logits and int64 labels, and returns ``{"ce": ..., *terms: ..., "total": ...}``: each
    term as it enters the total (weighted, and warmed up where the method warms up), and the
    total in the order the official code sums it. `scales(params, w)` gives the per-epoch
    factors `compute` reads, from the warm-up factor `w = min(epoch / warmup, 1)`; a
    captured training step keeps them in a device tensor, so they must be all that changes
    from one epoch to the next.

    `per_sample`: the loss is a mean of per-sample losses. When False (batch medians,
    means over the samples the teacher gets right, batch-by-batch similarity), DDP ranks
    compute it over their own share of each batch, as the official code does under
    DataParallel on several GPUs, so W ranks do not train the student of one process.
    """

    name: str
    title: str
    summary: str
    source: str
    options: tuple[Option, ...]
    terms: tuple[str, ...]
    term_help: Mapping[str, str]
    compute: Compute
    scales: Callable[[Params, float], tuple[float, ...]] = warmup_only
    needs_teacher: bool = True
    per_sample: bool = True
    notes: str = ""
    # The official `tools/train.py --logit-stand` recipe: (params, base_temp, kd_weight) -> overrides.
    official_logit_stand: Callable[[Params, float, float], dict[str, Value]] | None = None
    defaults: Mapping[str, Value] = field(init=False)

    def __post_init__(self) -> None:
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"method {self.name!r} declares an option twice: {names}")
        if set(self.term_help) != set(self.terms):
            raise ValueError(f"method {self.name!r}: term_help must describe exactly its terms {self.terms}")
        object.__setattr__(self, "defaults", {o.name: o.default for o in self.options})

    def option(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise ValueError(
            f"option {name!r} does not apply to method {self.name!r}; "
            f"valid options for {self.name!r}: {', '.join(self.defaults)}"
        )

    def resolve(self, overrides: Mapping[str, object]) -> dict[str, Value]:
        """Every option's value: the defaults with `overrides` checked and applied."""
        resolved = dict(self.defaults)
        for name, value in overrides.items():
            resolved[name] = self.option(name).check(self.name, value)
        return resolved

    @property
    def has_warmup(self) -> bool:
        return "warmup" in self.defaults


# ---------------------------------------------------------------------------------------
# Options several methods share: one wording each, defaults per method.


def ce_weight(default: float, help: str = "weight of cross-entropy with the label") -> Option:
    return Option("ce_weight", default, help)


def kd_weight(default: float, help: str = "weight of the KD term") -> Option:
    return Option("kd_weight", default, help)


def temperature(default: float = 4.0, help: str = "softmax temperature of the KD terms") -> Option:
    return Option("temperature", default, help, kind="positive")


def warmup(default: float = 20.0) -> Option:
    return Option("warmup", default, "distillation weight is min(epoch / warmup, 1), epochs from 1",
                  kind="positive", unit="epochs")


LOGIT_STAND = Option("logit_stand", False, "z-score each row of student and teacher logits first (Sun et al., CVPR 2024)",
                     kind="flag")
