"""LA: label-swapped KD, the paper's "LA" baseline, as the official SWAP.py computes it.

Where the teacher is wrong, its top logit and its true-class logit trade places, so the
teacher's top-1 becomes the label; then plain KD. Official quirks kept: no cross-entropy
term (``ce_weight`` 0) and weight 1; the official ``--logit-stand`` sets T 2 and a KD weight
of 9 that SWAP.py never reads, so only T changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline._lazy import ops
from pipeline.methods.base import LOGIT_STAND, Method, Params, ce_weight, kd_weight, temperature

if TYPE_CHECKING:
    from torch import Tensor


def swap(t: Tensor, y: Tensor) -> Tensor:
    """The teacher's logits with its (first) top logit and its true-class logit exchanged."""
    true_index = y.unsqueeze(1)
    true_value = t.gather(1, true_index)
    top_value, top_index = t.max(dim=1, keepdim=True)
    return t.clone().scatter_(1, top_index, true_value).scatter_(1, true_index, top_value)


def compute(s: Tensor, t: Tensor | None, y: Tensor, p: Params, scales: Any) -> dict[str, Tensor]:
    ce = ops.cross_entropy(p["ce_weight"], s, y)
    kd = p["kd_weight"] * ops.kd(s, swap(t, y), p["temperature"], bool(p["logit_stand"]))
    return {"ce": ce, "kd": kd, "total": ce + kd}


def official_logit_stand(p: Params, base_temp: float, weight: float) -> dict:
    return {"logit_stand": True, "temperature": base_temp}  # the official KD weight does not reach SWAP


METHOD = Method(
    name="la",
    title="Label-swapped KD (LA; the RLD paper's baseline)",
    summary="KD from the teacher's logits with its top logit and its true-class logit swapped; no CE, as official.",
    source="mdistiller/distillers/SWAP.py",
    options=(
        ce_weight(0.0),
        kd_weight(1.0),
        temperature(4.0),
        LOGIT_STAND,
    ),
    terms=("kd",),
    term_help={"kd": "kd_weight * T^2 * KL(softmax(swap(t)/T) || softmax(s/T))"},
    compute=compute,
    official_logit_stand=official_logit_stand,
    notes=("Official quirks, kept: no CE term (ce_weight 0) and KD weight 1; `--logit-stand` in the official CLI sets "
           "T 2 and a KD weight of 9 that SWAP.py does not read. Ties for the teacher's top logit go to the first class, "
           "as torch.max. Official ImageNet configs: T 1."),
)
