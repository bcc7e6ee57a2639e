"""Tensor building blocks the methods share: input checks, standardisation, KL shapes, medians.

Every KL term is ``KL(teacher || student)`` with PyTorch's ``batchmean`` reduction (sum over
classes, mean over the batch), as the official code computes it. Two shapes cover KD, DKD,
RLD and the label-based baselines:

* :func:`logit_kl` -- KL between the softmaxes of two (already scaled/masked) logit
  tensors. KD uses it on ``z / T``; DKD's NCKD on ``z / T - 1000 * onehot(y)``; RLD's MCD on
  ``z / T`` filled with ``-1e9`` wherever ``t_c >= t_y``.
* :func:`binary_kl` -- KL between two-bin distributions ``[p(k), sum_{c != k} p(c)]``.
  DKD's TCKD uses the target bin ``k = y`` for both teacher and student; RLD's SCD uses the
  teacher's argmax bin for the teacher and the TRUE class bin for the student.

Numerics: half-precision inputs (fp16/bf16) are cast up to float32 before anything else and
the result is float32; float64 stays float64 (for gradcheck). Like the official code, the
binary terms take ``log`` of probabilities (not ``log_softmax``), so a student whose
non-target mass underflows to 0 gets an infinite SCD/TCKD, exactly as upstream.

Validation: shape, dtype and device checks are free and always run. The value checks
(finite logits, labels in ``[0, C)``) are one fused reduction plus one host sync;
``validate=False`` skips them. On a resnet8x4 SGD step at batch 64 on 2 CPU cores they cost
about 70 us of a ~400 ms step (0.02%), so the public functions run them by default. A GPU
loop must not wait for the host, and a captured step (a CUDA graph) cannot contain a sync,
so training calls the objective with ``validate=False`` and checks each epoch's summed
losses, and each epoch's cached teacher logits, for non-finite values instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_HALF = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------
# Validation and dtype handling


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
        raise ValueError(f"{name} needs at least 1 row and 2 classes, got shape {_shape(x)}")


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


def validate(student: Tensor, teacher: Tensor | None, target: Tensor | None, values: bool = True) -> None:
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
            raise ValueError(f"student logits are on {student.device} but teacher logits on {teacher.device}")
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
    raise ValueError(f"target {int(target[row])} at row {row} is out of range for {classes} classes")


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def prepare(
    student: Tensor, teacher: Tensor | None, target: Tensor | None, validate_values: bool = True
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Validate, then bring logits to a common dtype of at least float32 and labels to int64."""
    validate(student, teacher, target, values=validate_values)
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


def standardize(logits: Tensor) -> Tensor:
    """Per-row z-score ``(z - mean) / (1e-7 + std)`` with the UNBIASED std (official code).

    This is the "logit standardisation" option (Sun et al., CVPR 2024) that the official code
    applies to both student and teacher before the KD-style terms when ``logit_stand`` is on.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)  # unbiased (N - 1), as torch.std defaults to
    return (logits - mean) / (1e-7 + std)


def onehot(like: Tensor, index: Tensor) -> Tensor:
    """Boolean (B, C) mask with True at ``index[b]`` in each row."""
    return torch.zeros_like(like, dtype=torch.bool).scatter_(1, index.unsqueeze(1), True)


def cross_entropy(weight: float, student: Tensor, target: Tensor) -> Tensor:
    """``weight * CE(s, y)``, the label term most methods add."""
    return weight * F.cross_entropy(student, target)


def logit_kl(student_scaled: Tensor, teacher_scaled: Tensor) -> Tensor:
    """``KL(softmax(t) || softmax(s))``, summed over classes and averaged over the batch."""
    log_p_student = F.log_softmax(student_scaled, dim=1)
    p_teacher = F.softmax(teacher_scaled, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean")


def two_bins(probs: Tensor, bin_mask: Tensor) -> Tensor:
    """Collapse a (B, C) distribution to (B, 2): [mass in the bin, mass everywhere else].

    The "else" mass is summed explicitly (not ``1 - p``) as upstream does; it keeps precision
    when the bin holds nearly all the mass.
    """
    inside = probs.masked_fill(~bin_mask, 0.0).sum(dim=1, keepdim=True)
    outside = probs.masked_fill(bin_mask, 0.0).sum(dim=1, keepdim=True)
    return torch.cat([inside, outside], dim=1)


def binary_kl(student: Tensor, teacher: Tensor, student_bin: Tensor, teacher_bin: Tensor, temperature: float) -> Tensor:
    """``tau^2 * KL(b_T || b_S)`` for two-bin distributions at temperature ``tau``.

    ``b_S = [p_S(student_bin), rest]``, ``b_T = [p_T(teacher_bin), rest]`` with
    ``p = softmax(z / tau)``. TCKD: both bins are the label. SCD: the teacher's bin is its
    argmax, the student's is the label.
    """
    b_student = two_bins(F.softmax(student / temperature, dim=1), student_bin)
    b_teacher = two_bins(F.softmax(teacher / temperature, dim=1), teacher_bin)
    kl = F.kl_div(torch.log(b_student), b_teacher, reduction="batchmean")
    return kl * temperature**2


def kd(student: Tensor, teacher: Tensor, temperature: float, logit_stand: bool) -> Tensor:
    """Hinton's KD term, ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean, unweighted."""
    if logit_stand:
        student, teacher = standardize(student), standardize(teacher)
    return logit_kl(student / temperature, teacher / temperature) * temperature**2


def median(values: Tensor) -> Tensor:
    """``numpy.percentile(values, 50)`` (linear interpolation), computed where `values` are.

    NumPy interpolates between the two middle values of an even count as
    ``b - (b - a) * 0.5``; so does this, in the tensor's dtype. Sorting on the device keeps
    the step free of host syncs (and capturable in a CUDA graph).
    """
    ordered = values.flatten().sort().values
    n = ordered.numel()
    lower = (n - 1) // 2
    if n % 2:
        return ordered[lower]
    below, above = ordered[lower], ordered[lower + 1]
    return above - (above - below) * 0.5
