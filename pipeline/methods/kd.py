"""KD: Hinton et al.'s knowledge distillation, as the official code computes it (KD.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline._lazy import ops
from pipeline.methods.base import LOGIT_STAND, Method, Params, ce_weight, kd_weight, temperature

if TYPE_CHECKING:
    from torch import Tensor


def compute(s: Tensor, t: Tensor | None, y: Tensor, p: Params, scales: Any) -> dict[str, Tensor]:
    ce = ops.cross_entropy(p["ce_weight"], s, y)
    kd = p["kd_weight"] * ops.kd(s, t, p["temperature"], bool(p["logit_stand"]))
    return {"ce": ce, "kd": kd, "total": ce + kd}


def official_logit_stand(p: Params, base_temp: float, weight: float) -> dict:
    return {"logit_stand": True, "kd_weight": weight, "temperature": base_temp}


METHOD = Method(
    name="kd",
    title="Knowledge distillation (Hinton et al., 2015)",
    summary="CE plus the KL between teacher and student softmaxes at temperature T.",
    source="mdistiller/distillers/KD.py",
    options=(ce_weight(0.1), kd_weight(0.9), temperature(4.0), LOGIT_STAND),
    terms=("kd",),
    term_help={"kd": "kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))"},
    compute=compute,
    official_logit_stand=official_logit_stand,
    notes="No warm-up, as official. ImageNet configs: T 1, ce_weight 1 (ResNet34->18) or 0.5, kd_weight 0.5.",
)
