"""DKD: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), as the official DKD.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline._lazy import ops
from pipeline.methods.base import LOGIT_STAND, Method, Option, Params, ce_weight, temperature, warmup

if TYPE_CHECKING:
    from torch import Tensor


def parts(s: Tensor, t: Tensor, y: Tensor, temperature: float, logit_stand: bool) -> dict[str, Tensor]:
    """TCKD and NCKD, unweighted, each already multiplied by ``T^2``."""
    if logit_stand:
        s, t = ops.standardize(s), ops.standardize(t)
    gt = ops.onehot(s, y)
    tckd = ops.binary_kl(s, t, gt, gt, temperature)
    suppress = 1000.0 * gt  # official: subtract 1000 after dividing by T (not a -1e9 fill)
    nckd = ops.logit_kl(s / temperature - suppress, t / temperature - suppress) * temperature**2
    return {"tckd": tckd, "nckd": nckd}


def alpha_beta_scales(p: Params, factor: float) -> tuple[float, ...]:
    """``(w, w * alpha, w * beta)``: what the total and the two logged parts are multiplied by."""
    return (factor, factor * p["alpha"], factor * p["beta"])


def weigh(ce: Tensor, a: Tensor, b: Tensor, names: tuple[str, str], p: Params, scales: Any) -> dict[str, Tensor]:
    """``ce + w * (alpha * a + beta * b)`` in the official order, and the parts as they enter it."""
    total = ce + scales[0] * (p["alpha"] * a + p["beta"] * b)
    return {"ce": ce, names[0]: scales[1] * a, names[1]: scales[2] * b, "total": total}


def compute(s: Tensor, t: Tensor | None, y: Tensor, p: Params, scales: Any) -> dict[str, Tensor]:
    ce = ops.cross_entropy(p["ce_weight"], s, y)
    terms = parts(s, t, y, p["temperature"], bool(p["logit_stand"]))
    return weigh(ce, terms["tckd"], terms["nckd"], ("tckd", "nckd"), p, scales)


def official_logit_stand(p: Params, base_temp: float, weight: float) -> dict:
    return {"logit_stand": True, "alpha": p["alpha"] * weight, "beta": p["beta"] * weight, "temperature": base_temp}


METHOD = Method(
    name="dkd",
    title="Decoupled knowledge distillation (Zhao et al., CVPR 2022)",
    summary="KD split into the target class's binary KL (TCKD) and the KL among the other classes (NCKD), weighted apart.",
    source="mdistiller/distillers/DKD.py",
    options=(
        ce_weight(1.0),
        Option("alpha", 1.0, "weight of TCKD"),
        Option("beta", 8.0, "weight of NCKD"),
        temperature(4.0, "softmax temperature of the KD terms"),
        warmup(20.0),
        LOGIT_STAND,
    ),
    terms=("tckd", "nckd"),
    term_help={
        "tckd": "w * alpha * T^2 * KL([p_t(y), 1 - p_t(y)] || [p_s(y), 1 - p_s(y)])",
        "nckd": "w * beta * T^2 * KL over the classes other than the label",
    },
    compute=compute,
    scales=alpha_beta_scales,
    official_logit_stand=official_logit_stand,
    notes=("The label is suppressed in NCKD by subtracting 1000 from z_y / T, as official. Per-pair CIFAR betas in "
           "the official configs: 8 (resnet32x4 teachers and most), 6 (vgg13, wrn_40_2 teachers), 2 (resnet56, "
           "resnet110 teachers); ImageNet: T 1, warmup 1, beta 0.5 (ResNet34->18) or 2 (ResNet50->MobileNetV1)."),
)
