"""The training objective of every method, and the functional KD, DKD and RLD losses.

The methods themselves (options, defaults, terms, tensor code) live in the registry,
:mod:`pipeline.methods`, one module per method; this module is where users and scripts
import them from:

* :func:`make_objective` -- the full training loss of a method, as the official distiller
  computes it (CE plus warmed-up distillation, or whatever the method adds up);
* :func:`kd_loss`, :func:`dkd_loss`, :func:`rld_loss` (and the unweighted
  :func:`dkd_terms`, :func:`rld_terms`) -- the distillation losses alone.

Every method reproduces the official code (github.com/zju-SWJ/RLD, commit d54578f,
``mdistiller/distillers/``) operation for operation where it can, and to float rounding
where the official code waits for the host (see each method's module), so a student trained
here sees the official gradients. Inputs are validated (see :mod:`pipeline.methods.ops`:
shapes, dtypes and devices always; finite values and label range unless ``validate=False``);
half-precision logits are computed in float32; teacher logits are constants (detached).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from torch import Tensor

from pipeline.methods import METHODS, REGISTRY, get_method, ops
from pipeline.methods import dkd, rld
from pipeline.methods.base import Method, Value
from pipeline.methods.ops import standardize

__all__ = [
    "DEFAULTS",
    "METHODS",
    "Objective",
    "dkd_loss",
    "dkd_terms",
    "kd_loss",
    "make_objective",
    "rld_loss",
    "rld_terms",
    "standardize",
]

#: Every method's options with their defaults (CIFAR-100 settings of the official cfg.py), read-only.
DEFAULTS: Mapping[str, Mapping[str, Value]] = MappingProxyType(
    {name: MappingProxyType(dict(method.defaults)) for name, method in REGISTRY.items()}
)


# ----------------------------------------------------------------------------------------
# Functional losses (validate, cast, delegate to the method modules)


def kd_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    temperature: float,
    logit_stand: bool = False,
    validate: bool = True,
) -> Tensor:
    """Hinton KD: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean, unweighted.

    Needs no labels. (Upstream sums over classes then means over rows; same value.)
    ``validate=False`` skips the NaN/inf value check (see the module docstring).
    """
    ops.check_positive("temperature", temperature)
    s, t, _ = ops.prepare(student, teacher, None, validate)
    assert t is not None
    return ops.kd(s, t, temperature, logit_stand)


def dkd_terms(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    *,
    temperature: float,
    logit_stand: bool = False,
    validate: bool = True,
) -> dict[str, Tensor]:
    """DKD's two parts, UNWEIGHTED (each already carries its ``T^2``), for logging.

    ``tckd``: two-bin KL of [p(y), rest] at T. ``nckd``: KL over the non-target classes,
    the target suppressed by subtracting 1000.0 from ``z_y / T`` (the official constant, not
    a -1e9 fill). :func:`dkd_loss` returns ``alpha * tckd + beta * nckd``.
    ``validate=False`` skips the NaN/inf and label-range checks (see the module docstring).
    """
    ops.check_positive("temperature", temperature)
    s, t, y = ops.prepare(student, teacher, target, validate)
    assert t is not None and y is not None
    return dkd.parts(s, t, y, temperature, logit_stand)


def dkd_loss(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float,
    logit_stand: bool = False,
    validate: bool = True,
) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``."""
    terms = dkd_terms(
        student,
        teacher,
        target,
        temperature=temperature,
        logit_stand=logit_stand,
        validate=validate,
    )
    return alpha * terms["tckd"] + beta * terms["nckd"]


def rld_terms(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    *,
    temperature: float,
    alpha_temperature: float,
    logit_stand: bool = False,
    mask: str = "ge",
    validate: bool = True,
) -> dict[str, Tensor]:
    """RLD's two parts, UNWEIGHTED (each already carries its temperature squared).

    ``scd`` (Sample Confidence Distillation, temperature ``alpha_temperature``): the
    teacher's confidence in ITS top class (first argmax) is taught as the student's
    confidence in the TRUE class, as a two-bin KL -- confidence without the wrong label.

    ``mcd`` (Masked Correlation Distillation, temperature ``temperature``): every class with
    ``t_c >= t_y`` (the label and whatever the teacher ranks at or above it, ties included)
    is filled with -1e9 on both ``s/T`` and ``t/T``; the KL over the rest keeps only the
    trustworthy tail of the teacher's ranking. ``mask="g"`` masks only ``t_c > t_y`` (the
    paper's Table 6 M_g: the label stays in MCD).

    :func:`rld_loss` returns ``alpha * scd + beta * mcd``. Where the teacher is right on every
    row and ``alpha_temperature == temperature`` these equal DKD's ``tckd``/``nckd``.
    ``validate=False`` skips the NaN/inf and label-range checks (see the module docstring).
    """
    ops.check_positive("temperature", temperature)
    ops.check_positive("alpha_temperature", alpha_temperature)
    if mask not in rld.MASKS:
        raise ValueError(f"mask must be one of {', '.join(rld.MASKS)}, got {mask!r}")
    s, t, y = ops.prepare(student, teacher, target, validate)
    assert t is not None and y is not None
    return rld.parts(s, t, y, temperature, alpha_temperature, logit_stand, mask)


def rld_loss(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float,
    alpha_temperature: float,
    logit_stand: bool = False,
    mask: str = "ge",
    validate: bool = True,
) -> Tensor:
    """Refined Logit Distillation (arXiv 2408.07703): ``alpha * SCD + beta * MCD``."""
    terms = rld_terms(
        student,
        teacher,
        target,
        temperature=temperature,
        alpha_temperature=alpha_temperature,
        logit_stand=logit_stand,
        mask=mask,
        validate=validate,
    )
    return alpha * terms["scd"] + beta * terms["mcd"]



# ----------------------------------------------------------------------------------------
# The full objective per method


@dataclass(frozen=True)
class Objective:
    """The training loss of one method, as its official distiller computes it.

    ``objective(student_logits, teacher_logits, target, epoch)`` returns a dict of scalar
    tensors, in :attr:`term_names` order:

    * ``"ce"``: the method's cross-entropy term, weighted (never warmed up);
    * the method's distillation terms exactly as they enter the total, i.e. weighted and,
      for methods with a ``warmup`` option, multiplied by ``min(epoch / warmup, 1)``:
      KD's ``"kd"``, DKD's ``"tckd"``/``"nckd"``, RLD's ``"scd"``/``"mcd"``, ... (each
      method's module says what its terms are);
    * ``"total"``: what the official distiller backprops, summed in its order; it equals
      the sum of the other terms up to float rounding.

    ``epoch`` counts from 1 (epoch 1 gives ``1 / warmup``). For methods that need no
    teacher ("ce") the teacher argument is ignored (pass None). Build with
    :func:`make_objective`; ``params`` holds every option of the method (defaults filled).
    ``validate=False`` skips the per-step value checks (NaN/inf logits, label range);
    shape/dtype checks always run.

    Official CLI conventions (``tools/train.py``), as methods returning a new objective:

    * ``--same-t`` (RLD only): ``alpha_temperature = temperature`` -> :meth:`with_same_t`.
    * ``--logit-stand``: turns on standardisation and applies the official CLI's defaults
      ``--base-temp 2 --kd-weight 9`` the way it does per method (KD: ``kd_weight 9, T 2``;
      DKD/RLD: ``alpha`` and ``beta`` times 9, ``T 2``, RLD also ``alpha_temperature 2``;
      RC: ``kd_weight`` and ``rc_weight`` times 9, ``T 2``; MLKD: ``kd_weight 9, T 2``;
      LA: ``T 2`` only) -> :meth:`with_official_logit_stand`. Upstream applies it before
      ``--same-t``.
    """

    method: str
    params: Mapping[str, Value] = field(default_factory=dict)
    validate: bool = True

    def __post_init__(self) -> None:
        spec = get_method(self.method)
        if not isinstance(self.validate, bool):
            raise ValueError(f"validate must be a bool, got {self.validate!r}")
        object.__setattr__(self, "params", MappingProxyType(spec.resolve(self.params)))

    @property
    def spec(self) -> Method:
        """The method's registry entry (options, terms, tensor code)."""
        return REGISTRY[self.method]

    @property
    def term_names(self) -> tuple[str, ...]:
        """The keys of the dict the objective returns, in its order."""
        return ("ce", *self.spec.terms, "total")

    @property
    def needs_teacher(self) -> bool:
        """False only for methods without a teacher (plain cross-entropy)."""
        return self.spec.needs_teacher

    def replace(self, *, validate: bool | None = None, **overrides: Value) -> "Objective":
        """A copy with some options changed (same validation as :func:`make_objective`)."""
        keep = self.validate if validate is None else validate
        return Objective(self.method, {**self.params, **overrides}, keep)

    def with_same_t(self) -> "Objective":
        """Official ``--same-t``: SCD uses the MCD temperature (RLD only)."""
        if self.method != "rld":
            raise ValueError(f"same-t applies only to method 'rld', not {self.method!r}")
        return self.replace(alpha_temperature=self.params["temperature"])

    def with_official_logit_stand(self, base_temp: float = 2.0, kd_weight: float = 9.0) -> "Objective":
        """Official ``--logit-stand`` recipe (see the class docstring)."""
        recipe = self.spec.official_logit_stand
        if recipe is None:
            valid = ", ".join(m.name for m in REGISTRY.values() if m.official_logit_stand is not None)
            raise ValueError(f"logit standardisation does not apply to method {self.method!r}; valid methods: {valid}")
        return self.replace(**recipe(self.params, base_temp, kd_weight))

    def warmup_factor(self, epoch: int) -> float:
        """``min(epoch / warmup, 1)`` for epochs counted from 1; 1.0 for methods without warmup."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 1:
            raise ValueError(f"epoch must be an int >= 1 (epochs count from 1), got {epoch!r}")
        warmup = self.params.get("warmup")
        if warmup is None:
            return 1.0
        return min(int(epoch) / warmup, 1.0)

    def scales(self, epoch: int) -> tuple[float, ...]:
        """What the method's terms are multiplied by at ``epoch``: ``(w, w * alpha, w * beta)``
        for DKD and RLD, ``(w,)`` for the others, ``w = min(epoch / warmup, 1)`` (1 without
        warm-up).

        :meth:`terms` takes them as Python floats or as a float32 tensor on the logits'
        device; either way the total is bitwise the same (a Python scalar enters a float32
        kernel rounded to float32, which is what the tensor holds). A captured training step
        (a CUDA graph) reads them from such a tensor, so a new epoch's warm-up weight needs
        no new capture.
        """
        return self.spec.scales(self.params, self.warmup_factor(epoch))

    def __call__(self, student: Tensor, teacher: Tensor | None, target: Tensor, epoch: int) -> dict[str, Tensor]:
        return self.terms(student, teacher, target, self.scales(epoch))

    def terms(self, student: Tensor, teacher: Tensor | None, target: Tensor, scales: Any) -> dict[str, Tensor]:
        """The objective's terms (see the class docstring) with the epoch's :meth:`scales`."""
        spec = self.spec
        if spec.needs_teacher and teacher is None:
            raise ValueError(f"method {self.method!r} needs teacher logits, got None")
        s, t, y = ops.prepare(student, teacher if spec.needs_teacher else None, target, self.validate)
        assert y is not None
        return spec.compute(s, t, y, self.params, scales)


def make_objective(method: str, *, validate: bool = True, **overrides: Value) -> Objective:
    """The objective of ``method`` (see :data:`METHODS`) with its defaults filled in.

    An option the method does not have, or a value out of its range, raises ``ValueError``
    naming the method, the option and the valid ones. ``validate`` is not a method option:
    it switches the per-step value checks.
    """
    get_method(method)
    return Objective(method, overrides, validate)
