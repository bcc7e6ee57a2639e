"""LR: label revision, the paper's "LR" baseline, as the official REVISION.py computes it.

Samples the teacher gets right (its first top class is the label) learn from CE and an MSE
between student and teacher logits; samples it gets wrong learn from an MSE between the
student's probabilities and the teacher's, revised toward the label:
``b * p_t + (1 - b) * onehot(y)`` with ``b = eta / (p_t(top) - p_t(y) + 1)``.

The official code selects the two groups with boolean indexing (a host sync, and shapes
that change every step); here each group's mean is a masked sum over the batch divided by
the group's size, the same value up to float rounding, with no sync. A group with no sample
contributes 0, as official. The class count comes from the logits (official: 100, or 1000
on ImageNet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline._lazy import F
from pipeline.methods.base import Method, Option, Params, ce_weight

if TYPE_CHECKING:
    from torch import Tensor


def _group_mean(per_row: Tensor, rows: Tensor, per_row_count: int) -> Tensor:
    """Mean over the selected rows of a per-row sum of `per_row_count` elements; 0 for none."""
    count = rows.sum().clamp(min=1) * per_row_count
    return (per_row * rows).sum() / count


def compute(s: Tensor, t: Tensor | None, y: Tensor, p: Params, scales: Any) -> dict[str, Tensor]:
    classes = s.shape[1]
    right = t.max(dim=1).indices == y
    wrong = ~right
    ce = p["ce_weight"] * _group_mean(F.cross_entropy(s, y, reduction="none"), right, 1)
    mse = p["mse_weight"] * _group_mean(((s - t) ** 2).sum(dim=1), right, classes)
    p_teacher, p_student = F.softmax(t, dim=1), F.softmax(s, dim=1)
    top = p_teacher.max(dim=1, keepdim=True).values
    on_label = p_teacher.gather(1, y.unsqueeze(1))
    b = p["eta"] / (top - on_label + 1)
    revised_target = b * p_teacher + (1 - b) * F.one_hot(y, classes)
    revised = p["revised_weight"] * _group_mean(((p_student - revised_target) ** 2).sum(dim=1), wrong, classes)
    return {"ce": ce, "mse": mse, "revised": revised, "total": ce + mse + revised}


METHOD = Method(
    name="lr",
    title="Label revision (LR; the RLD paper's baseline)",
    summary=("Samples the teacher gets right: CE and MSE to its logits; samples it gets wrong: MSE to its "
             "probabilities revised toward the label."),
    source="mdistiller/distillers/REVISION.py",
    options=(
        ce_weight(1.0, "weight of cross-entropy with the label, on the samples the teacher gets right"),
        Option("mse_weight", 4.0, "weight of the logit MSE on the samples the teacher gets right (official lambda1)"),
        Option("revised_weight", 1.0, "weight of the probability MSE on the samples it gets wrong (official lambda2)"),
        Option("eta", 0.8, "how much of the teacher the revised target keeps: b = eta / (p_t(top) - p_t(y) + 1)",
               kind="fraction"),
    ),
    terms=("mse", "revised"),
    term_help={
        "mse": "mse_weight * mean squared difference of student and teacher logits, over the samples the teacher gets right",
        "revised": "revised_weight * mean squared difference of student probabilities and the revised teacher's, over the others",
    },
    compute=compute,
    per_sample=False,
    notes=("Official quirks, kept: samples the teacher gets wrong get no cross-entropy, and neither part has a "
           "temperature or a warm-up; no `--logit-stand` (the official CLI does not apply it to REVISION). Its "
           "`ce` term is CE over the samples the teacher gets right only."),
)
