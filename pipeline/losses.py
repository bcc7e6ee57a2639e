"""Distillation losses: KD, DKD and RLD, and the full training objective per method.

The functional terms reproduce the official code (github.com/zju-SWJ/RLD,
``mdistiller/distillers/{KD,DKD,RLD}.py``) operation for operation, so a student trained
here sees the same gradients as one trained with the paper's code. Every KL term is
``KL(teacher || student)`` with PyTorch's ``batchmean`` reduction (sum over classes, mean
over the batch) and multiplied by the square of its temperature.

Two shapes cover all of them, and are shared:

* :func:`_logit_kl` -- KL between the softmaxes of two (already scaled/masked) logit
  tensors. KD uses it on ``z / T``; DKD's NCKD on ``z / T - 1000 * onehot(y)``; RLD's MCD on
  ``z / T`` filled with ``-1e9`` wherever ``t_c >= t_y``.
* :func:`_binary_kl` -- KL between two-bin distributions ``[p(k), sum_{c != k} p(c)]``.
  DKD's TCKD uses the target bin ``k = y`` for both teacher and student; RLD's SCD uses the
  teacher's argmax bin for the teacher and the TRUE class bin for the student.

Numerics: half-precision inputs (fp16/bf16) are cast up to float32 before anything else and
the result is float32; float64 stays float64 (for gradcheck). Like the official code, the
binary terms take ``log`` of probabilities (not ``log_softmax``), so a student whose
non-target mass underflows to 0 gets an infinite SCD/TCKD, exactly as upstream.

Teacher logits are treated as constants (detached), as upstream computes them under
``no_grad``; gradients flow to the student only.

Inputs are validated (shapes, dtypes, devices, label range, finite logits) and bad ones
fail with a :class:`ValueError` naming the shapes or the first offending row. Shape, dtype
and device checks are free and always run. The value checks (finite logits, labels in
``[0, C)``) are one fused reduction plus one host sync; ``validate=False`` skips them.
Measured on a resnet8x4 SGD step at batch 64: on CPU (2 cores) the check costs about 70 us
of a ~400 ms step (0.02%), so it is on by default in the public functions. A GPU loop must
not wait for the host, and a captured step (a CUDA graph) cannot contain a sync at all, so
training (``pipeline.train``) calls the objective with ``validate=False`` on every device and
checks the epoch's summed losses, and each epoch's cached teacher logits, for non-finite
values instead.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

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

# ----------------------------------------------------------------------------------------
# Validation and dtype handling
# ----------------------------------------------------------------------------------------

_HALF = (torch.float16, torch.bfloat16)


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_logits(name: str, x: object) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, classes), got shape {_shape(x)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] < 1 or x.shape[1] < 2:
        raise ValueError(
            f"{name} needs at least 1 row and 2 classes, got shape {_shape(x)}"
        )


def _validate(
    student: Tensor, teacher: Tensor | None, target: Tensor | None, values: bool = True
) -> None:
    """Raise ValueError on malformed inputs.

    Static checks (type, dims, dtype, shape, device) are free. With ``values`` the logits are
    checked for NaN/inf and the labels for range: one fused reduction and one host sync when
    all is well; only on failure is the first offending row looked up.
    """
    _check_logits("student logits", student)
    if teacher is not None:
        _check_logits("teacher logits", teacher)
        if teacher.shape != student.shape:
            raise ValueError(
                f"student logits shape {_shape(student)} does not match "
                f"teacher logits shape {_shape(teacher)}"
            )
        if teacher.device != student.device:
            raise ValueError(
                f"student logits are on {student.device} but teacher logits on {teacher.device}"
            )
    classes = student.shape[1]
    if target is not None:
        _check_target(target, student)
    if not values:
        return
    bad_target = None if target is None else (target < 0) | (target >= classes)
    ok = torch.isfinite(student).all()
    if teacher is not None:
        ok = ok & torch.isfinite(teacher).all()
    if bad_target is not None:
        ok = ok & ~bad_target.any()
    if bool(ok):
        return
    # Failure path only: find the first offending row, in a fixed order.
    for name, x in (("student logits", student), ("teacher logits", teacher)):
        if x is None:
            continue
        bad_rows = (~torch.isfinite(x)).any(dim=1).nonzero()
        if bad_rows.numel():
            row = int(bad_rows[0, 0])
            raise ValueError(f"{name} row {row} has a non-finite value")
    assert target is not None and bad_target is not None
    row = int(bad_target.nonzero()[0, 0])
    raise ValueError(
        f"target {int(target[row])} at row {row} is out of range for {classes} classes"
    )


def _check_target(target: object, student: Tensor) -> None:
    """Static checks on the labels (type, dtype, shape, device): free, no kernel runs."""
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must be an integer class-index tensor, got dtype {target.dtype}")
    batch = student.shape[0]
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(
            f"target must have shape ({batch},) to match student logits shape "
            f"{_shape(student)}, got shape {_shape(target)}"
        )
    if target.device != student.device:
        raise ValueError(f"student logits are on {student.device} but target on {target.device}")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _prepare(
    student: Tensor, teacher: Tensor | None, target: Tensor | None, validate: bool = True
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Validate, then bring logits to a common dtype of at least float32 and labels to int64."""
    _validate(student, teacher, target, values=validate)
    dtype = student.dtype if teacher is None else torch.promote_types(student.dtype, teacher.dtype)
    if dtype in _HALF:
        dtype = torch.float32
    student = student.to(dtype)
    if teacher is not None:
        # The teacher is a fixed target (upstream runs it under no_grad). Detaching also keeps
        # NaN out of teacher gradients: kl_div's d/d(target) is log(0) at masked classes.
        teacher = teacher.detach().to(dtype)
    return student, teacher, None if target is None else target.long()


# ----------------------------------------------------------------------------------------
# Shared building blocks
# ----------------------------------------------------------------------------------------


def standardize(logits: Tensor) -> Tensor:
    """Per-row z-score ``(z - mean) / (1e-7 + std)`` with the UNBIASED std (official code).

    This is the "logit standardisation" option (Sun et al., CVPR 2024) that the RLD code
    applies to both student and teacher before every term when ``logit_stand`` is on.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)  # unbiased (N - 1), as torch.std defaults to
    return (logits - mean) / (1e-7 + std)


def _onehot(like: Tensor, index: Tensor) -> Tensor:
    """Boolean (B, C) mask with True at ``index[b]`` in each row."""
    return torch.zeros_like(like, dtype=torch.bool).scatter_(1, index.unsqueeze(1), True)


def _logit_kl(student_scaled: Tensor, teacher_scaled: Tensor) -> Tensor:
    """``KL(softmax(t) || softmax(s))``, summed over classes and averaged over the batch."""
    log_p_student = F.log_softmax(student_scaled, dim=1)
    p_teacher = F.softmax(teacher_scaled, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean")


def _two_bins(probs: Tensor, bin_mask: Tensor) -> Tensor:
    """Collapse a (B, C) distribution to (B, 2): [mass in the bin, mass everywhere else].

    The "else" mass is summed explicitly (not ``1 - p``) as upstream does; it keeps precision
    when the bin holds nearly all the mass.
    """
    inside = probs.masked_fill(~bin_mask, 0.0).sum(dim=1, keepdim=True)
    outside = probs.masked_fill(bin_mask, 0.0).sum(dim=1, keepdim=True)
    return torch.cat([inside, outside], dim=1)


def _binary_kl(
    student: Tensor,
    teacher: Tensor,
    student_bin: Tensor,
    teacher_bin: Tensor,
    temperature: float,
) -> Tensor:
    """``tau^2 * KL(b_T || b_S)`` for two-bin distributions at temperature ``tau``.

    ``b_S = [p_S(student_bin), rest]``, ``b_T = [p_T(teacher_bin), rest]`` with
    ``p = softmax(z / tau)``. TCKD: both bins are the label. SCD: the teacher's bin is its
    argmax, the student's is the label.
    """
    b_student = _two_bins(F.softmax(student / temperature, dim=1), student_bin)
    b_teacher = _two_bins(F.softmax(teacher / temperature, dim=1), teacher_bin)
    kl = F.kl_div(torch.log(b_student), b_teacher, reduction="batchmean")
    return kl * temperature**2


# ----------------------------------------------------------------------------------------
# Functional terms
# ----------------------------------------------------------------------------------------
# The underscored versions take already validated, up-cast tensors so that the objective
# validates once per step; the public ones validate, cast and delegate.


def _kd(s: Tensor, t: Tensor, temperature: float, logit_stand: bool) -> Tensor:
    if logit_stand:
        s, t = standardize(s), standardize(t)
    return _logit_kl(s / temperature, t / temperature) * temperature**2


def _dkd_terms(
    s: Tensor, t: Tensor, y: Tensor, temperature: float, logit_stand: bool
) -> dict[str, Tensor]:
    if logit_stand:
        s, t = standardize(s), standardize(t)
    gt = _onehot(s, y)
    tckd = _binary_kl(s, t, gt, gt, temperature)
    suppress = 1000.0 * gt  # official: subtract 1000 after dividing by T (not a -1e9 fill)
    nckd = _logit_kl(s / temperature - suppress, t / temperature - suppress) * temperature**2
    return {"tckd": tckd, "nckd": nckd}


def _rld_terms(
    s: Tensor,
    t: Tensor,
    y: Tensor,
    temperature: float,
    alpha_temperature: float,
    logit_stand: bool,
) -> dict[str, Tensor]:
    if logit_stand:
        s, t = standardize(s), standardize(t)
    scd = _binary_kl(s, t, _onehot(s, y), _onehot(t, t.argmax(dim=1)), alpha_temperature)
    masked = t >= t.gather(1, y.unsqueeze(1))  # ties with the label are masked too
    mcd = _logit_kl(
        (s / temperature).masked_fill(masked, -1e9),
        (t / temperature).masked_fill(masked, -1e9),
    )
    return {"scd": scd, "mcd": mcd * temperature**2}


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
    _check_positive("temperature", temperature)
    s, t, _ = _prepare(student, teacher, None, validate)
    assert t is not None
    return _kd(s, t, temperature, logit_stand)


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
    _check_positive("temperature", temperature)
    s, t, y = _prepare(student, teacher, target, validate)
    assert t is not None and y is not None
    return _dkd_terms(s, t, y, temperature, logit_stand)


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
    validate: bool = True,
) -> dict[str, Tensor]:
    """RLD's two parts, UNWEIGHTED (each already carries its temperature squared).

    ``scd`` (Sample Confidence Distillation, temperature ``alpha_temperature``): the
    teacher's confidence in ITS top class (first argmax) is taught as the student's
    confidence in the TRUE class, as a two-bin KL -- confidence without the wrong label.

    ``mcd`` (Masked Correlation Distillation, temperature ``temperature``): every class with
    ``t_c >= t_y`` (the label and whatever the teacher ranks at or above it, ties included)
    is filled with -1e9 on both ``s/T`` and ``t/T``; the KL over the rest keeps only the
    trustworthy tail of the teacher's ranking.

    :func:`rld_loss` returns ``alpha * scd + beta * mcd``. Where the teacher is right on every
    row and ``alpha_temperature == temperature`` these equal DKD's ``tckd``/``nckd``.
    ``validate=False`` skips the NaN/inf and label-range checks (see the module docstring).
    """
    _check_positive("temperature", temperature)
    _check_positive("alpha_temperature", alpha_temperature)
    s, t, y = _prepare(student, teacher, target, validate)
    assert t is not None and y is not None
    return _rld_terms(s, t, y, temperature, alpha_temperature, logit_stand)


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
        validate=validate,
    )
    return alpha * terms["scd"] + beta * terms["mcd"]


# ----------------------------------------------------------------------------------------
# The full objective per method
# ----------------------------------------------------------------------------------------

METHODS: tuple[str, ...] = ("ce", "kd", "dkd", "rld")

#: The distillation terms each method returns besides "ce" and "total" (dkd/rld: the alpha and
#: the beta part, in that order).
_DISTILL_TERMS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"ce": (), "kd": ("kd",), "dkd": ("tckd", "nckd"), "rld": ("scd", "mcd")}
)

#: Per-method defaults (CIFAR-100 settings of the official cfg.py). Read-only views.
#: ``warmup`` is in epochs; the distillation weight is ``min(epoch / warmup, 1)``.
#: Per-pair overrides in the official configs: DKD uses beta 6 with vgg13/wrn_40_2 teachers
#: and 2 with resnet56/resnet110 teachers (8 otherwise); RLD keeps beta 8 on every CIFAR pair.
#: ImageNet (both): T 1, warmup 1, beta 0.5 (ResNet34->18) or 2.0 (ResNet50->MobileNetV1).
DEFAULTS: Mapping[str, Mapping[str, float | bool]] = MappingProxyType(
    {
        "ce": MappingProxyType({"ce_weight": 1.0}),
        "kd": MappingProxyType(
            {"ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0, "logit_stand": False}
        ),
        "dkd": MappingProxyType(
            {
                "ce_weight": 1.0,
                "alpha": 1.0,
                "beta": 8.0,
                "temperature": 4.0,
                "warmup": 20.0,
                "logit_stand": False,
            }
        ),
        "rld": MappingProxyType(
            {
                "ce_weight": 1.0,
                "alpha": 1.0,
                "beta": 8.0,
                "temperature": 4.0,
                "alpha_temperature": 1.0,
                "warmup": 20.0,
                "logit_stand": False,
            }
        ),
    }
)

_POSITIVE = {"temperature", "alpha_temperature", "warmup"}


def _check_method(method: str) -> None:
    if method not in DEFAULTS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")


def _checked_params(method: str, params: Mapping[str, object]) -> dict[str, float | bool]:
    valid = DEFAULTS[method]
    out: dict[str, float | bool] = {}
    for name, value in params.items():
        if name not in valid:
            raise ValueError(
                f"option {name!r} does not apply to method {method!r}; "
                f"valid options for {method!r}: {', '.join(valid)}"
            )
        if name == "logit_stand":
            if not isinstance(value, bool):
                raise ValueError(f"logit_stand must be a bool, got {value!r}")
            out[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"option {name!r} for method {method!r} must be a number, got {value!r}"
            )
        value = float(value)
        if name in _POSITIVE:
            _check_positive(name, value)
        elif not (math.isfinite(value) and value >= 0):
            raise ValueError(
                f"option {name!r} for method {method!r} must be a finite number >= 0, got {value!r}"
            )
        out[name] = value
    return out


@dataclass(frozen=True)
class Objective:
    """The training loss of one method: CE plus (warmed-up) distillation, as upstream.

    ``objective(student_logits, teacher_logits, target, epoch)`` returns a dict of scalar
    tensors:

    * ``"ce"``: ``ce_weight * CE(s, y)`` -- never warmed up;
    * the distillation parts exactly as they enter the total, i.e. weighted AND multiplied
      by the warmup factor ``min(epoch / warmup, 1)``: ``"kd"`` (``kd_weight * KD``; KD has no
      warmup), ``"tckd"``/``"nckd"`` (``w * alpha * TCKD``, ``w * beta * NCKD``) or
      ``"scd"``/``"mcd"`` (``w * alpha * SCD``, ``w * beta * MCD``);
    * ``"total"``: what the official distiller backprops, computed in its order
      (``ce + w * (alpha * a + beta * b)``); it equals ``ce`` plus the logged parts up to
      float rounding.

    ``epoch`` counts from 1 (epoch 1 gives ``1 / warmup``). For "ce" the teacher argument
    is ignored (pass None); every other method requires it. Build with
    :func:`make_objective`; ``params`` holds every option of the method (defaults filled).
    ``validate=False`` skips the per-step value checks (NaN/inf logits, label range; see the
    module docstring for their cost); shape/dtype checks always run.

    Official CLI conventions (``tools/train.py``), available as methods returning a new
    objective:

    * ``--same-t`` (RLD only): ``alpha_temperature = temperature`` -> :meth:`with_same_t`.
    * ``--logit-stand`` (KD/DKD/RLD): turns on standardisation and, with the CLI defaults
      ``--base-temp 2 --kd-weight 9``, sets KD's ``kd_weight = 9, temperature = 2``; for
      DKD/RLD multiplies ``alpha`` and ``beta`` by 9 and sets ``temperature = 2`` (RLD also
      ``alpha_temperature = 2``) -> :meth:`with_official_logit_stand`. Upstream applies it
      before ``--same-t``.
    """

    method: str
    params: Mapping[str, float | bool] = field(default_factory=dict)
    validate: bool = True

    def __post_init__(self) -> None:
        _check_method(self.method)
        if not isinstance(self.validate, bool):
            raise ValueError(f"validate must be a bool, got {self.validate!r}")
        merged = dict(DEFAULTS[self.method])
        merged.update(_checked_params(self.method, self.params))
        object.__setattr__(self, "params", MappingProxyType(merged))

    @property
    def term_names(self) -> tuple[str, ...]:
        """The keys of the dict the objective returns, in its order."""
        return ("ce", *_DISTILL_TERMS[self.method], "total")

    @property
    def needs_teacher(self) -> bool:
        """False only for plain cross-entropy."""
        return self.method != "ce"

    def replace(self, *, validate: bool | None = None, **overrides: float | bool) -> "Objective":
        """A copy with some options changed (same validation as :func:`make_objective`)."""
        keep = self.validate if validate is None else validate
        return Objective(self.method, {**self.params, **overrides}, keep)

    def with_same_t(self) -> "Objective":
        """Official ``--same-t``: SCD uses the MCD temperature (RLD only)."""
        if self.method != "rld":
            raise ValueError(f"same-t applies only to method 'rld', not {self.method!r}")
        return self.replace(alpha_temperature=self.params["temperature"])

    def with_official_logit_stand(
        self, base_temp: float = 2.0, kd_weight: float = 9.0
    ) -> "Objective":
        """Official ``--logit-stand`` recipe (see the class docstring)."""
        p = self.params
        if self.method == "kd":
            return self.replace(logit_stand=True, kd_weight=kd_weight, temperature=base_temp)
        if self.method == "dkd":
            return self.replace(
                logit_stand=True,
                alpha=p["alpha"] * kd_weight,
                beta=p["beta"] * kd_weight,
                temperature=base_temp,
            )
        if self.method == "rld":
            return self.replace(
                logit_stand=True,
                alpha=p["alpha"] * kd_weight,
                beta=p["beta"] * kd_weight,
                temperature=base_temp,
                alpha_temperature=base_temp,
            )
        raise ValueError(
            f"logit standardisation does not apply to method {self.method!r}; "
            "valid methods: kd, dkd, rld"
        )

    def warmup_factor(self, epoch: int) -> float:
        """``min(epoch / warmup, 1)`` for epochs counted from 1; 1.0 for methods without warmup."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 1:
            raise ValueError(f"epoch must be an int >= 1 (epochs count from 1), got {epoch!r}")
        warmup = self.params.get("warmup")
        if warmup is None:
            return 1.0
        return min(int(epoch) / warmup, 1.0)

    def scales(self, epoch: int) -> tuple[float, float, float]:
        """``(w, w * alpha, w * beta)``, ``w = min(epoch / warmup, 1)``: what the distillation
        parts are multiplied by at ``epoch`` ((1, 1, 1) for methods without alpha and beta).

        :meth:`terms` takes them as Python floats or as a float32 tensor on the logits'
        device; either way the total is bitwise the same (a Python scalar enters a float32
        kernel rounded to float32, which is what the tensor holds). A captured training step
        (a CUDA graph) reads them from such a tensor, so a new epoch's warm-up weight needs
        no new capture.
        """
        factor = self.warmup_factor(epoch)
        if self.method not in ("dkd", "rld"):
            return (factor, 1.0, 1.0)
        return (factor, factor * self.params["alpha"], factor * self.params["beta"])

    def __call__(
        self, student: Tensor, teacher: Tensor | None, target: Tensor, epoch: int
    ) -> dict[str, Tensor]:
        return self.terms(student, teacher, target, self.scales(epoch))

    def terms(
        self,
        student: Tensor,
        teacher: Tensor | None,
        target: Tensor,
        scales: tuple[float, float, float] | Tensor,
    ) -> dict[str, Tensor]:
        """The objective's terms (see the class docstring) with the epoch's :meth:`scales`."""
        p = self.params
        if self.method != "ce" and teacher is None:
            raise ValueError(f"method {self.method!r} needs teacher logits, got None")
        s, t, y = _prepare(
            student, None if self.method == "ce" else teacher, target, self.validate
        )
        assert y is not None
        ce = p["ce_weight"] * F.cross_entropy(s, y)
        if self.method == "ce":
            return {"ce": ce, "total": ce}
        assert t is not None
        stand = bool(p["logit_stand"])
        if self.method == "kd":
            kd = p["kd_weight"] * _kd(s, t, p["temperature"], stand)
            return {"ce": ce, "kd": kd, "total": ce + kd}
        if self.method == "dkd":
            terms = _dkd_terms(s, t, y, p["temperature"], stand)
        else:
            terms = _rld_terms(s, t, y, p["temperature"], p["alpha_temperature"], stand)
        names = _DISTILL_TERMS[self.method]
        a, b = terms[names[0]], terms[names[1]]
        alpha, beta = p["alpha"], p["beta"]
        total = ce + scales[0] * (alpha * a + beta * b)
        return {"ce": ce, names[0]: scales[1] * a, names[1]: scales[2] * b, "total": total}


def make_objective(method: str, *, validate: bool = True, **overrides: float | bool) -> Objective:
    """The objective for ``method`` ("ce", "kd", "dkd", "rld") with :data:`DEFAULTS` filled in.

    An option that does not belong to the method (``beta`` for kd, ``alpha_temperature``
    for dkd, anything but ``ce_weight`` for ce) raises ``ValueError`` listing the valid ones.
    ``validate`` is not a method option: it switches the per-step value checks.
    """
    _check_method(method)
    return Objective(method, overrides, validate)
