"""MLKD without its strong augmentation: multi-level logit distillation (Jin et al., CVPR 2023),
as the official MLKD_NOAUG.py computes it.

Three alignments of student and teacher softmaxes at five temperatures (T, 3, 5, 2, 6):
instance (KD), class consistency (the C x C Gram matrices of the batch's predictions) and
batch consistency (the B x B ones). Official quirk, kept: each alignment is a batch scalar
multiplied by a boolean mask and averaged, i.e. scaled by the share of the mask that is
true -- the batch's samples whose teacher confidence is at most its median (instance and
batch terms), the classes whose summed teacher probability is at most its median (class
terms); so the masks halve the terms rather than select samples. The official code takes
the medians with ``numpy.percentile(..., 50)`` on the host every step; here they are the
same linear-interpolation medians, computed on the logits' device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline._lazy import F, ops, torch
from pipeline.methods.base import LOGIT_STAND, Method, Params, ce_weight, kd_weight, temperature
from pipeline.methods.kd import official_logit_stand  # the official CLI treats MLKD's KD weight and T as KD's

if TYPE_CHECKING:
    from torch import Tensor

OTHER_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)  # official, after the configurable first one


def class_consistency(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    """Squared distance of the C x C Gram matrices of the batch's softmaxes, over C."""
    p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
    return ((torch.mm(p_t.t(), p_t) - torch.mm(p_s.t(), p_s)) ** 2).sum() / s.shape[1]


def batch_consistency(s: Tensor, t: Tensor, temperature: float) -> Tensor:
    """Squared distance of the B x B Gram matrices of the batch's softmaxes, over B."""
    p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
    return ((torch.mm(p_t, p_t.t()) - torch.mm(p_s, p_s.t())) ** 2).sum() / s.shape[0]


def compute(s: Tensor, t: Tensor | None, y: Tensor, p: Params, scales: Any) -> dict[str, Tensor]:
    p_teacher = F.softmax(t, dim=1)
    confidence = p_teacher.max(dim=1).values
    sample_mask = confidence <= ops.median(confidence)
    class_mass = p_teacher.sum(dim=0)
    class_mask = class_mass <= ops.median(class_mass)

    weight, stand = p["kd_weight"], bool(p["logit_stand"])
    temperatures = (p["temperature"], *OTHER_TEMPERATURES)
    ce = ops.cross_entropy(p["ce_weight"], s, y)
    kd = sum(weight * (ops.kd(s, t, tau, stand) * sample_mask).mean() for tau in temperatures)
    cc = sum(weight * (class_consistency(s, t, tau) * class_mask).mean() for tau in temperatures)
    bc = sum(weight * (batch_consistency(s, t, tau) * sample_mask).mean() for tau in temperatures)
    return {"ce": ce, "kd": kd, "cc": cc, "bc": bc, "total": ce + kd + cc + bc}


METHOD = Method(
    name="mlkd",
    title="Multi-level logit distillation without strong augmentation (MLKD_NOAUG; Jin et al., CVPR 2023)",
    summary="Instance, class and batch alignment of softmaxes at five temperatures, under median-confidence masks.",
    source="mdistiller/distillers/MLKD_NOAUG.py",
    options=(
        ce_weight(0.1),
        kd_weight(0.9, "weight of each of the 15 alignment terms"),
        temperature(4.0, "the first of the five temperatures (then 3, 5, 2, 6)"),
        LOGIT_STAND,
    ),
    terms=("kd", "cc", "bc"),
    term_help={
        "kd": "sum over T of kd_weight * KD(T) * share of samples at or below the median teacher confidence",
        "cc": "sum over T of kd_weight * class-consistency(T) * share of classes at or below the median class mass",
        "bc": "sum over T of kd_weight * batch-consistency(T) * share of samples at or below the median confidence",
    },
    compute=compute,
    per_sample=False,
    official_logit_stand=official_logit_stand,
    notes=("No warm-up, as official: the 15 terms act at full weight from the first step. "
           "Official quirks, kept: each term is scaled by its mask's true share (about one half) instead of "
           "selecting samples; only the instance terms are standardised with `logit_stand`; the masks come from "
           "the raw teacher softmax at T 1. This is MLKD without its strong-augmentation views (MLKD.py); the "
           "official ImageNet MLKD runs are that augmented variant (ce_weight 0.5, kd_weight 0.5, T 1)."),
)
