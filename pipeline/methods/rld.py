"""RLD: Refined Logit Distillation (Sun et al., arXiv 2408.07703), as the official RLD.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline._lazy import ops
from pipeline.methods.base import LOGIT_STAND, Method, Option, Params, ce_weight, temperature, warmup
from pipeline.methods.dkd import alpha_beta_scales, weigh

if TYPE_CHECKING:
    from torch import Tensor

MASKS = ("ge", "g")


def parts(s: Tensor, t: Tensor, y: Tensor, temperature: float, alpha_temperature: float, logit_stand: bool,
          mask: str = "ge") -> dict[str, Tensor]:
    """SCD and MCD, unweighted, each already multiplied by its temperature squared.

    ``scd`` (temperature ``alpha_temperature``): the teacher's confidence in ITS top class
    (first argmax) taught as the student's confidence in the TRUE class, as a two-bin KL.
    ``mcd`` (temperature ``temperature``): the classes of the mask are filled with -1e9 on
    both ``s/T`` and ``t/T`` before the KL. ``mask="ge"`` (official, the paper's M_ge): every
    class with ``t_c >= t_y``, the label and ties included. ``mask="g"`` (Table 6's M_g):
    only ``t_c > t_y``, so the label stays in MCD.
    """
    if logit_stand:
        s, t = ops.standardize(s), ops.standardize(t)
    scd = ops.binary_kl(s, t, ops.onehot(s, y), ops.onehot(t, t.argmax(dim=1)), alpha_temperature)
    true_logit = t.gather(1, y.unsqueeze(1))
    masked = t >= true_logit if mask == "ge" else t > true_logit
    mcd = ops.logit_kl(
        (s / temperature).masked_fill(masked, -1e9),
        (t / temperature).masked_fill(masked, -1e9),
    )
    return {"scd": scd, "mcd": mcd * temperature**2}


def compute(s: Tensor, t: Tensor | None, y: Tensor, p: Params, scales: Any) -> dict[str, Tensor]:
    ce = ops.cross_entropy(p["ce_weight"], s, y)
    terms = parts(s, t, y, p["temperature"], p["alpha_temperature"], bool(p["logit_stand"]), str(p["mask"]))
    return weigh(ce, terms["scd"], terms["mcd"], ("scd", "mcd"), p, scales)


def official_logit_stand(p: Params, base_temp: float, weight: float) -> dict:
    return {"logit_stand": True, "alpha": p["alpha"] * weight, "beta": p["beta"] * weight,
            "temperature": base_temp, "alpha_temperature": base_temp}


METHOD = Method(
    name="rld",
    title="Refined logit distillation (Sun et al., arXiv 2408.07703)",
    summary=("The teacher's confidence taught on the true class (SCD), and its class ranking with every class it "
             "ranks at or above the label masked out (MCD)."),
    source="mdistiller/distillers/RLD.py",
    options=(
        ce_weight(1.0),
        Option("alpha", 1.0, "weight of SCD"),
        Option("beta", 8.0, "weight of MCD"),
        temperature(4.0, "softmax temperature of MCD"),
        Option("alpha_temperature", 1.0, "softmax temperature of SCD", kind="positive"),
        warmup(20.0),
        LOGIT_STAND,
        Option("mask", "ge", "classes MCD drops: ge = ranked at or above the label, the label too (official M_ge); "
               "g = ranked strictly above it (the paper's Table 6 M_g)", kind="choice", choices=MASKS),
    ),
    terms=("scd", "mcd"),
    term_help={
        "scd": "w * alpha * aT^2 * KL([p_t(argmax t), rest] || [p_s(y), rest]) at aT = alpha_temperature",
        "mcd": "w * beta * T^2 * KL over the classes the teacher ranks below the label",
    },
    compute=compute,
    scales=alpha_beta_scales,
    official_logit_stand=official_logit_stand,
    notes=("Where the teacher is right and alpha_temperature equals temperature, SCD and MCD equal DKD's TCKD and "
           "NCKD. Official `--same-t` sets alpha_temperature to temperature (`rld student train --same-t`). "
           "ImageNet configs: T 1, warmup 1, beta 0.5 (ResNet34->18) or 2 (ResNet50->MobileNetV1)."),
)
