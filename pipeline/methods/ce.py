"""CE: the student alone, cross-entropy with the label (no teacher)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline._lazy import ops
from pipeline.methods.base import Method, Params, ce_weight

if TYPE_CHECKING:
    from torch import Tensor


def compute(s: Tensor, t: Tensor | None, y: Tensor, p: Params, scales: Any) -> dict[str, Tensor]:
    ce = ops.cross_entropy(p["ce_weight"], s, y)
    return {"ce": ce, "total": ce}


METHOD = Method(
    name="ce",
    title="Cross-entropy",
    summary="The student alone: cross-entropy with the label, the baseline every method is paired with.",
    source="mdistiller/distillers/_base.py (Vanilla)",
    options=(ce_weight(1.0),),
    terms=(),
    term_help={},
    compute=compute,
    needs_teacher=False,
)
