"""RC: KD plus a KL toward the student's own logits with the true class raised (official RC.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline._lazy import ops
from pipeline.methods.base import LOGIT_STAND, Method, Option, Params, ce_weight, kd_weight, temperature

if TYPE_CHECKING:
    from torch import Tensor


def rc(s: Tensor, y: Tensor, temperature: float, logit_stand: bool) -> Tensor:
    """``T^2 * KL(softmax(z~/T) || softmax(s/T))``, z~ = the student's own detached logits with
    the true logit raised by the row's maximum (standardised first with ``logit_stand``)."""
    if logit_stand:
        s = ops.standardize(s)
    top = s.max(dim=1, keepdim=True).values
    true_index = y.unsqueeze(1)
    raised = (s.gather(1, true_index) + top).detach()
    target = s.detach().clone().scatter_(1, true_index, raised)
    return ops.logit_kl(s / temperature, target / temperature) * temperature**2


def compute(s: Tensor, t: Tensor | None, y: Tensor, p: Params, scales: Any) -> dict[str, Tensor]:
    stand = bool(p["logit_stand"])
    ce = ops.cross_entropy(p["ce_weight"], s, y)
    kd = p["kd_weight"] * ops.kd(s, t, p["temperature"], stand)
    rc_term = p["rc_weight"] * rc(s, y, p["temperature"], stand)
    return {"ce": ce, "kd": kd, "rc": rc_term, "total": ce + kd + rc_term}


def official_logit_stand(p: Params, base_temp: float, weight: float) -> dict:
    return {"logit_stand": True, "kd_weight": p["kd_weight"] * weight, "rc_weight": p["rc_weight"] * weight,
            "temperature": base_temp}


METHOD = Method(
    name="rc",
    title="Rectified KD with a raised true logit (RC; the RLD paper's baseline)",
    summary="CE plus KD plus a KL toward the student's own logits with the true logit raised by the maximum.",
    source="mdistiller/distillers/RC.py",
    options=(
        ce_weight(1.0),
        kd_weight(1.0),
        Option("rc_weight", 0.1, "weight of the RC term"),
        temperature(4.0, "softmax temperature of the KD and RC terms"),
        LOGIT_STAND,
    ),
    terms=("kd", "rc"),
    term_help={
        "kd": "kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))",
        "rc": "rc_weight * T^2 * KL(softmax(z~/T) || softmax(s/T)), z~ = detached s with z~_y = s_y + max(s)",
    },
    compute=compute,
    official_logit_stand=official_logit_stand,
    notes="RC's target is built from the student's own logits and does not depend on the teacher. Official ImageNet configs: T 1.",
)
