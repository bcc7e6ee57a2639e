"""Tests for pipeline.losses: KD, DKD, RLD and the per-method objective.

Expectations are derived independently of the implementation: literal hand-computed numbers,
plain ``math``/numpy computations that literally drop masked classes, finite differences,
and a fixture of values and gradients produced once by the OFFICIAL code
(zju-SWJ/RLD, ``mdistiller/distillers/{RLD,DKD,KD}.py``, float64) in tests/fixtures/.

Tolerances follow the precision of the computation under test:
- 0 (exact) where both sides run the same float32 operations (half-precision inputs are
  cast up first, so they must equal the float32 path bit for bit);
- float64 against float64: 1e-12 relative against literals and identities (a few dozen
  operations, float64 epsilon 1.1e-16), 1e-10 against numpy references and the official
  fixture (other reduction orders and log/exp implementations over a batch), gradients
  1e-9 relative / 1e-12 absolute (they pass through one more softmax);
- float32: 1e-5 relative against float64 truth (float32 epsilon 6e-8 times the ~100
  operations of a loss), 1e-6 where two float32 paths compute the same formula;
- finite differences: gradcheck with step 1e-6 in float64, whose central-difference error
  is ~1e-8 here; atol 1e-6 / rtol 1e-4 are its customary bounds;
- "> 1e-3": the gap a wrong formula (a dropped mask, a swapped bin) opens on these inputs,
  far above any rounding.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.losses import (
    DEFAULTS,
    METHODS,
    Objective,
    dkd_loss,
    dkd_terms,
    kd_loss,
    make_objective,
    rld_loss,
    rld_terms,
    standardize,
)

DATA = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: an OpenMP region per softmax costs ~10 ms on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------
# Independent numpy reference pieces (row by row, classes literally dropped)
# ---------------------------------------------------------------------------------------


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) over the support of p."""
    keep = p > 0
    return float(np.sum(p[keep] * (np.log(p[keep]) - np.log(q[keep]))))


def np_standardize(z: np.ndarray) -> np.ndarray:
    return (z - z.mean()) / (1e-7 + z.std(ddof=1))


def np_mcd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float) -> float:
    """MCD by literally removing every class the teacher ranks at or above the label."""
    total = 0.0
    for si, ti, yi in zip(s, t, y):
        keep = ti < ti[yi]
        if keep.any():
            total += np_kl(np_softmax(ti[keep] / temp), np_softmax(si[keep] / temp))
    return temp**2 * total / len(s)


def np_scd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float) -> float:
    total = 0.0
    for si, ti, yi in zip(s, t, y):
        pt, ps = np_softmax(ti / temp), np_softmax(si / temp)
        k = int(np.argmax(ti))
        b_t = np.array([pt[k], pt.sum() - pt[k]])
        b_s = np.array([ps[yi], ps.sum() - ps[yi]])
        total += np_kl(b_t, b_s)
    return temp**2 * total / len(s)


def np_nckd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float) -> float:
    total = 0.0
    for si, ti, yi in zip(s, t, y):
        keep = np.arange(len(si)) != yi
        total += np_kl(np_softmax(ti[keep] / temp), np_softmax(si[keep] / temp))
    return temp**2 * total / len(s)


def np_tckd(s: np.ndarray, t: np.ndarray, y: np.ndarray, temp: float) -> float:
    total = 0.0
    for si, ti, yi in zip(s, t, y):
        pt, ps = np_softmax(ti / temp), np_softmax(si / temp)
        total += np_kl(np.array([pt[yi], 1 - pt[yi]]), np.array([ps[yi], 1 - ps[yi]]))
    return temp**2 * total / len(s)


def random_batch(
    batch: int = 8, classes: int = 10, seed: int = 0, teacher_right: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    t = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, classes, (batch,), generator=g)
    rows = torch.arange(batch)
    if teacher_right is True:
        t[rows, y] = t.max(dim=1).values + 0.5
    elif teacher_right is False:
        top = t.argmax(dim=1)
        y = torch.where(y == top, (top + 1) % classes, y)
    return s, t, y


# ---------------------------------------------------------------------------------------
# Hand-computed small cases
# ---------------------------------------------------------------------------------------


def test_kd_hand_computed() -> None:
    # T = 2; row 0: s/T = [0.5, 1, 1.5], t/T = [1.5, 0.5, 0]; row 1: s/T = [0, 0, 0.5], t uniform.
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    t = torch.tensor([[3.0, 1.0, 0.0], [5.0, 5.0, 5.0]])

    def sm(v: list[float]) -> list[float]:
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    rows = []
    for sv, tv in (([0.5, 1.0, 1.5], [1.5, 0.5, 0.0]), ([0.0, 0.0, 0.5], [2.5, 2.5, 2.5])):
        p, q = sm(tv), sm(sv)
        rows.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    expected = 4.0 * (rows[0] + rows[1]) / 2
    got = kd_loss(s, t, temperature=2.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6)  # float32, two rows of three classes


def test_rld_hand_computed_scd_binary_distributions() -> None:
    # Logits are logs of probabilities, so at temperature 1 the softmaxes are the literals.
    # Row 0, label 1, teacher WRONG: p_T = [.4, .3, .2, .1] (argmax 0), p_S = [.1, .5, .25, .15].
    #   SCD: b_T = [p_T(argmax)=.4, .6], b_S = [p_S(label)=.5, .5].
    #   MCD: t_c >= t_y masks {0, 1}; left {2, 3}: teacher [2/3, 1/3], student [.625, .375].
    # Row 1, label 0, teacher right: p_T = [.7, .1, .1, .1], p_S = [.25, .25, .25, .25].
    #   SCD: b_T = [.7, .3], b_S = [.25, .75]. MCD: only 0 masked; teacher and student uniform
    #   over {1, 2, 3} -> 0.
    f64 = torch.float64
    s = torch.log(torch.tensor([[0.1, 0.5, 0.25, 0.15], [0.25, 0.25, 0.25, 0.25]], dtype=f64))
    t = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.7, 0.1, 0.1, 0.1]], dtype=f64))
    y = torch.tensor([1, 0])
    scd_rows = [
        0.4 * math.log(0.4 / 0.5) + 0.6 * math.log(0.6 / 0.5),
        0.7 * math.log(0.7 / 0.25) + 0.3 * math.log(0.3 / 0.75),
    ]
    mcd_rows = [(2 / 3) * math.log((2 / 3) / 0.625) + (1 / 3) * math.log((1 / 3) / 0.375), 0.0]
    scd, mcd = sum(scd_rows) / 2, sum(mcd_rows) / 2
    terms = rld_terms(s, t, y, temperature=1.0, alpha_temperature=1.0)
    assert terms["scd"].item() == pytest.approx(scd, rel=1e-12)
    assert terms["mcd"].item() == pytest.approx(mcd, rel=1e-12)
    got = rld_loss(s, t, y, alpha=1.5, beta=8.0, temperature=1.0, alpha_temperature=1.0)
    assert got.item() == pytest.approx(1.5 * scd + 8.0 * mcd, rel=1e-12)
    # float32 inputs agree to float32 precision
    got32 = rld_loss(
        s.float(), t.float(), y, alpha=1.5, beta=8.0, temperature=1.0, alpha_temperature=1.0
    )
    assert got32.item() == pytest.approx(1.5 * scd + 8.0 * mcd, rel=1e-5)


def test_rld_temperatures_scale_and_apply_to_the_right_part() -> None:
    # Same row 0 as above; MCD at T = 2 and SCD at alpha_t = 3, each times its temperature^2.
    s = np.log(np.array([[0.1, 0.5, 0.25, 0.15]]))
    t = np.log(np.array([[0.4, 0.3, 0.2, 0.1]]))
    y = np.array([1])
    pt, ps = np_softmax(t[0] / 3), np_softmax(s[0] / 3)
    scd = 9 * np_kl(np.array([pt[0], 1 - pt[0]]), np.array([ps[1], 1 - ps[1]]))
    qt, qs = np_softmax(t[0, 2:] / 2), np_softmax(s[0, 2:] / 2)
    mcd = 4 * np_kl(qt, qs)
    terms = rld_terms(
        torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=2.0, alpha_temperature=3.0
    )
    assert terms["scd"].item() == pytest.approx(scd, rel=1e-12)
    assert terms["mcd"].item() == pytest.approx(mcd, rel=1e-12)


def test_dkd_hand_computed() -> None:
    # T = 1, label 2. p_T = [.1, .2, .6, .1], p_S = [.3, .3, .2, .2].
    # TCKD: [.6, .4] vs [.2, .8].
    # NCKD over {0, 1, 3}: teacher [.25, .5, .25], student [3/8, 3/8, 2/8].
    s = torch.log(torch.tensor([[0.3, 0.3, 0.2, 0.2]]))
    t = torch.log(torch.tensor([[0.1, 0.2, 0.6, 0.1]]))
    y = torch.tensor([2])
    tckd = 0.6 * math.log(0.6 / 0.2) + 0.4 * math.log(0.4 / 0.8)
    nckd = (
        0.25 * math.log(0.25 / 0.375) + 0.5 * math.log(0.5 / 0.375) + 0.25 * math.log(0.25 / 0.25)
    )
    terms = dkd_terms(s, t, y, temperature=1.0)
    assert terms["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    got = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=1.0)
    assert got.item() == pytest.approx(tckd + 8 * nckd, rel=1e-5)


@pytest.mark.parametrize("logit_stand", [False, True])
def test_dkd_and_rld_match_numpy_on_random_batches(logit_stand: bool) -> None:
    s, t, y = random_batch(12, 9, seed=3)
    sn, tn, yn = s.numpy(), t.numpy(), y.numpy()
    if logit_stand:
        sn = np.stack([np_standardize(r) for r in sn])
        tn = np.stack([np_standardize(r) for r in tn])
    d = dkd_terms(s, t, y, temperature=4.0, logit_stand=logit_stand)
    assert d["tckd"].item() == pytest.approx(np_tckd(sn, tn, yn, 4.0), rel=1e-10)
    assert d["nckd"].item() == pytest.approx(np_nckd(sn, tn, yn, 4.0), rel=1e-10)
    r = rld_terms(s, t, y, temperature=4.0, alpha_temperature=1.0, logit_stand=logit_stand)
    assert r["scd"].item() == pytest.approx(np_scd(sn, tn, yn, 1.0), rel=1e-10)
    assert r["mcd"].item() == pytest.approx(np_mcd(sn, tn, yn, 4.0), rel=1e-10)


# ---------------------------------------------------------------------------------------
# RLD vs DKD, masks, ties
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("logit_stand", [False, True])
def test_rld_equals_dkd_when_teacher_is_right(logit_stand: bool) -> None:
    s, t, y = random_batch(16, 10, seed=1, teacher_right=True)
    s, t = s.float(), t.float()
    assert torch.equal(t.argmax(dim=1), y)
    kw = dict(temperature=4.0, logit_stand=logit_stand)
    r = rld_terms(s, t, y, alpha_temperature=4.0, **kw)
    d = dkd_terms(s, t, y, **kw)
    torch.testing.assert_close(r["scd"], d["tckd"], rtol=1e-6, atol=0)
    torch.testing.assert_close(r["mcd"], d["nckd"], rtol=1e-6, atol=0)
    torch.testing.assert_close(
        rld_loss(s, t, y, alpha=1.0, beta=8.0, alpha_temperature=4.0, **kw),
        dkd_loss(s, t, y, alpha=1.0, beta=8.0, **kw),
        rtol=1e-6,
        atol=0,
    )


def test_rld_differs_from_dkd_when_teacher_is_wrong() -> None:
    s, t, y = random_batch(16, 10, seed=1, teacher_right=True)
    y = y.clone()
    y[5] = (y[5] + 1) % 10  # teacher now wrong on row 5 only
    r = rld_terms(s, t, y, temperature=4.0, alpha_temperature=4.0)
    d = dkd_terms(s, t, y, temperature=4.0)
    assert abs(r["scd"].item() - d["tckd"].item()) > 1e-3
    assert abs(r["mcd"].item() - d["nckd"].item()) > 1e-3


def test_mcd_masks_classes_tied_with_the_label() -> None:
    # Teacher right on the label 1 but class 3 ties it exactly: both must be masked.
    s = torch.tensor([[0.3, -1.2, 2.0, 0.7, -0.4]], dtype=torch.float64)
    t = torch.tensor([[1.0, 3.0, -0.5, 3.0, 0.2]], dtype=torch.float64)
    y = torch.tensor([1])
    keep = [0, 2, 4]  # drop y = 1 and the tied class 3, by hand
    temp = 4.0
    expected = temp**2 * np_kl(
        np_softmax(t[0, keep].numpy() / temp), np_softmax(s[0, keep].numpy() / temp)
    )
    got = rld_terms(s, t, y, temperature=temp, alpha_temperature=1.0)["mcd"]
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # ... and NOT the loss with only the label removed (which is what DKD's NCKD does).
    keep_dkd = [0, 2, 3, 4]
    wrong = temp**2 * np_kl(
        np_softmax(t[0, keep_dkd].numpy() / temp), np_softmax(s[0, keep_dkd].numpy() / temp)
    )
    assert abs(got.item() - wrong) > 1e-3


def test_mcd_wrong_teacher_drops_every_class_ranked_at_or_above_label() -> None:
    s, t, y = random_batch(10, 12, seed=7, teacher_right=False)
    t[2, 4] = t[2, y[2]]  # an exact tie with the label somewhere below the top
    t[6, y[6]] = t[6].min() - 1.0  # label is the teacher's unique minimum: everything masked
    expected = np_mcd(s.numpy(), t.numpy(), y.numpy(), 4.0)
    got = rld_terms(s, t, y, temperature=4.0, alpha_temperature=1.0)["mcd"]
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_scd_uses_teacher_argmax_for_teacher_and_label_for_student() -> None:
    s, t, y = random_batch(6, 5, seed=11, teacher_right=False)
    expected = np_scd(s.numpy(), t.numpy(), y.numpy(), 2.0)
    got = rld_terms(s, t, y, temperature=4.0, alpha_temperature=2.0)["scd"]
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Using the label bin for the teacher too (i.e. TCKD) gives a different number.
    assert abs(got.item() - np_tckd(s.numpy(), t.numpy(), y.numpy(), 2.0)) > 1e-3


# ---------------------------------------------------------------------------------------
# Official-code fixture (values and gradients, float64)
# ---------------------------------------------------------------------------------------

_FIXTURE = json.loads((DATA / "official_losses.json").read_text())


@pytest.mark.parametrize(
    "case",
    _FIXTURE["cases"],
    ids=[
        f"{c['method']}-T{c['params']['temperature']}-stand{c['params']['logit_stand']}"
        + (f"-aT{c['params']['alpha_temperature']}" if "alpha_temperature" in c["params"] else "")
        for c in _FIXTURE["cases"]
    ],
)
def test_matches_official_code_fixture(case: dict) -> None:
    s = torch.tensor(_FIXTURE["student"], dtype=torch.float64, requires_grad=True)
    t = torch.tensor(_FIXTURE["teacher"], dtype=torch.float64, requires_grad=True)
    y = torch.tensor(_FIXTURE["target"])
    fn = {"rld": rld_loss, "dkd": dkd_loss, "kd": kd_loss}[case["method"]]
    value = fn(s, t, **case["params"]) if case["method"] == "kd" else fn(s, t, y, **case["params"])
    value.backward()
    assert value.item() == pytest.approx(case["value"], rel=1e-10)
    torch.testing.assert_close(
        s.grad, torch.tensor(case["grad_student"], dtype=torch.float64), rtol=1e-9, atol=1e-12
    )
    # The teacher is a constant target (detached, as upstream's no_grad teacher).
    assert t.grad is None


# ---------------------------------------------------------------------------------------
# Gradients by finite differences
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("logit_stand", [False, True])
@pytest.mark.parametrize("method", ["kd", "dkd", "rld"])
def test_gradcheck(method: str, logit_stand: bool) -> None:
    s, t, y = random_batch(3, 5, seed=5)
    y[0] = (t[0].argmax() + 2) % 5  # one wrong-teacher row
    s.requires_grad_(True)  # the teacher is a constant target: only the student has gradients
    if method == "kd":

        def f(a: torch.Tensor) -> torch.Tensor:
            return kd_loss(a, t, temperature=3.0, logit_stand=logit_stand)

    elif method == "dkd":

        def f(a: torch.Tensor) -> torch.Tensor:
            return dkd_loss(a, t, y, alpha=1.0, beta=8.0, temperature=3.0, logit_stand=logit_stand)

    else:

        def f(a: torch.Tensor) -> torch.Tensor:
            return rld_loss(
                a,
                t,
                y,
                alpha=1.0,
                beta=8.0,
                temperature=3.0,
                alpha_temperature=1.5,
                logit_stand=logit_stand,
            )

    assert torch.autograd.gradcheck(f, (s,), eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# Standardisation and dtypes
# ---------------------------------------------------------------------------------------


def test_standardize_uses_unbiased_std_and_epsilon() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    unbiased = math.sqrt(5.0 / 3.0)  # sum of squared deviations 5, over n - 1 = 3
    expected = torch.tensor([[-1.5, -0.5, 0.5, 1.5]], dtype=torch.float64) / (1e-7 + unbiased)
    torch.testing.assert_close(standardize(x), expected, rtol=1e-12, atol=0)
    # A row where the epsilon is visible: deviations +-1e-7, unbiased std sqrt(2)*1e-7, so the
    # result is +-1 / (1 + sqrt 2) = +-0.41421 (no epsilon: 0.7071; biased std: 0.5).
    z = torch.tensor([[0.0, 2e-7]], dtype=torch.float64)
    out = standardize(z)
    # float64 on values of 1e-7: squares of 1e-14 keep ~16 digits, 1e-9 is far above their rounding
    assert out[0, 1].item() == pytest.approx(1 / (1 + math.sqrt(2)), rel=1e-9)
    assert out[0, 0].item() == pytest.approx(-1 / (1 + math.sqrt(2)), rel=1e-9)


def test_logit_stand_equals_losses_on_standardized_inputs() -> None:
    s, t, y = random_batch(5, 8, seed=9)
    manual = rld_loss(
        standardize(s), standardize(t), y, alpha=1, beta=8, temperature=2, alpha_temperature=2
    )
    stand = rld_loss(
        s, t, y, alpha=1, beta=8, temperature=2, alpha_temperature=2, logit_stand=True
    )
    torch.testing.assert_close(stand, manual, rtol=1e-12, atol=0)
    # Standardisation makes the losses invariant to per-row shift and scale of the logits, up
    # to its 1e-7 epsilon added to std (~1): 1e-6 relative.
    shifted = rld_loss(
        3 * s + 7, t - 2, y, alpha=1, beta=8, temperature=2, alpha_temperature=2, logit_stand=True
    )
    torch.testing.assert_close(shifted, stand, rtol=1e-6, atol=0)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(half: torch.dtype) -> None:
    s, t, y = random_batch(8, 10, seed=2)
    s16, t16 = s.to(half), t.to(half)
    s32, t32 = s16.float(), t16.float()
    cases = [
        (lambda a, b: kd_loss(a, b, temperature=4.0)),
        (lambda a, b: dkd_loss(a, b, y, alpha=1.0, beta=8.0, temperature=4.0, logit_stand=True)),
        (
            lambda a, b: rld_loss(
                a, b, y, alpha=1.0, beta=8.0, temperature=4.0, alpha_temperature=1.0
            )
        ),
    ]
    for fn in cases:
        got = fn(s16, t16)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, fn(s32, t32), rtol=0, atol=0)
        # A float32 student with a stored fp16 teacher is the offline pipeline's normal case.
        mixed = fn(s32, t16)
        assert mixed.dtype == torch.float32
        torch.testing.assert_close(mixed, fn(s32, t32), rtol=0, atol=0)
    out = make_objective("rld")(s16, t16, y, epoch=30)
    assert all(v.dtype == torch.float32 for v in out.values())


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


def _call_all(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> list:
    return [
        lambda: dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
        lambda: rld_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0, alpha_temperature=1.0),
        lambda: make_objective("rld")(s, t, y, epoch=1),
    ]


def _good() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s, t, y = random_batch(6, 10, seed=4)
    return s.float(), t.float(), y


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda s, t, y: (s, t[:, :9], y),
            r"student logits shape \(6, 10\) does not match teacher logits shape \(6, 9\)",
        ),
        (
            lambda s, t, y: (s[0], t, y),
            r"student logits must be 2-D \(batch, classes\), got shape \(10,\)",
        ),
        (
            lambda s, t, y: (s, t.unsqueeze(0), y),
            r"teacher logits must be 2-D \(batch, classes\), got shape \(1, 6, 10\)",
        ),
        (
            lambda s, t, y: (s, t, y[:5]),
            r"target must have shape \(6,\) to match student logits shape \(6, 10\), "
            r"got shape \(5,\)",
        ),
        (
            lambda s, t, y: (s, t, y[:, None]),
            r"target must have shape \(6,\).*got shape \(6, 1\)",
        ),
        (
            lambda s, t, y: (s, t, y.float()),
            r"target must be an integer class-index tensor, got dtype torch.float32",
        ),
        (
            lambda s, t, y: (s, t, y.clone().index_fill_(0, torch.tensor([5]), 12)),
            r"target 12 at row 5 is out of range for 10 classes",
        ),
        (  # the first label past the end: labels counted from 1 instead of 0
            lambda s, t, y: (s, t, y.clone().index_fill_(0, torch.tensor([5]), 10)),
            r"target 10 at row 5 is out of range for 10 classes",
        ),
        (
            lambda s, t, y: (s, t, y.clone().index_fill_(0, torch.tensor([2, 4]), -1)),
            r"target -1 at row 2 is out of range for 10 classes",
        ),
        (
            lambda s, t, y: (s, t.clone().index_fill_(0, torch.tensor([3]), float("nan")), y),
            r"teacher logits row 3 has a non-finite value",
        ),
        (
            lambda s, t, y: (s.clone().index_fill_(0, torch.tensor([1, 4]), float("inf")), t, y),
            r"student logits row 1 has a non-finite value",
        ),
        (
            lambda s, t, y: (s.long(), t, y),
            r"student logits must be a floating-point tensor, got dtype torch.int64",
        ),
    ],
)
def test_bad_inputs_raise_informative_value_error(mutate, message: str) -> None:
    s, t, y = mutate(*_good())
    for call in _call_all(s, t, y):
        with pytest.raises(ValueError, match=message):
            call()


def test_kd_validates_without_labels() -> None:
    s, t, _ = _good()
    with pytest.raises(ValueError, match=r"teacher logits row 0 has a non-finite value"):
        kd_loss(s, t.clone().fill_(float("-inf")), temperature=4.0)
    with pytest.raises(ValueError, match=r"does not match teacher logits shape"):
        kd_loss(s, t[:3], temperature=4.0)
    with pytest.raises(ValueError, match=r"temperature must be a positive finite number"):
        kd_loss(s, t, temperature=0.0)


def test_validate_false_skips_only_the_value_checks() -> None:
    s, t, y = _good()
    t_nan = t.clone().index_fill_(0, torch.tensor([3]), float("nan"))
    kw = dict(alpha=1.0, beta=8.0, temperature=4.0, alpha_temperature=1.0)
    # No value check: NaN goes through (and poisons the loss) instead of raising.
    assert torch.isnan(rld_loss(s, t_nan, y, validate=False, **kw))
    assert torch.isnan(dkd_loss(s, t_nan, y, alpha=1.0, beta=8.0, temperature=4.0, validate=False))
    assert torch.isnan(kd_loss(s, t_nan, temperature=4.0, validate=False))
    obj = make_objective("rld", validate=False)
    assert torch.isnan(obj(s, t_nan, y, epoch=1)["total"])
    assert obj.replace(beta=2.0).validate is False
    assert obj.replace(validate=True).validate is True
    assert obj.with_same_t().validate is False
    # Static checks (shapes, dims, dtypes) still run.
    with pytest.raises(ValueError, match=r"does not match teacher logits shape"):
        rld_loss(s, t[:, :9], y, validate=False, **kw)
    with pytest.raises(ValueError, match=r"target must have shape \(6,\)"):
        obj(s, t, y[:5], epoch=1)
    with pytest.raises(ValueError, match=r"validate must be a bool"):
        make_objective("rld", validate=1)  # type: ignore[arg-type]


def test_bad_temperature_raises() -> None:
    s, t, y = _good()
    with pytest.raises(ValueError, match=r"alpha_temperature must be a positive"):
        rld_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0, alpha_temperature=-1.0)


def test_integer_label_dtypes_are_accepted() -> None:
    s, t, y = _good()
    ref = rld_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0, alpha_temperature=1.0)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        got = rld_loss(
            s, t, y.to(dtype), alpha=1.0, beta=8.0, temperature=4.0, alpha_temperature=1.0
        )
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# The objective
# ---------------------------------------------------------------------------------------


def test_defaults_table() -> None:
    assert METHODS == ("ce", "dkd", "kd", "la", "lr", "mlkd", "rc", "rld")
    assert dict(DEFAULTS["ce"]) == {"ce_weight": 1.0}
    assert dict(DEFAULTS["kd"]) == {
        "ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0, "logit_stand": False
    }
    assert dict(DEFAULTS["dkd"]) == {
        "ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20,
        "logit_stand": False,
    }
    assert dict(DEFAULTS["rld"]) == {
        "ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0,
        "alpha_temperature": 1.0, "warmup": 20, "logit_stand": False, "mask": "ge",
    }
    for method in METHODS:
        assert dict(make_objective(method).params) == dict(DEFAULTS[method])
    with pytest.raises(TypeError):
        DEFAULTS["rld"]["beta"] = 2.0  # type: ignore[index]


def np_ce(s: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([-np.log(np_softmax(r)[k]) for r, k in zip(s, y)]))


@pytest.mark.parametrize("epoch, factor", [(1, 0.05), (10, 0.5), (20, 1.0), (25, 1.0)])
def test_rld_objective_warmup_and_terms(epoch: int, factor: float) -> None:
    s, t, y = random_batch(8, 10, seed=6, teacher_right=False)
    obj = make_objective("rld", beta=6.0)
    assert obj.warmup_factor(epoch) == pytest.approx(factor)  # epoch / warmup in float64
    out = obj(s, t, y, epoch)
    assert set(out) == {"ce", "scd", "mcd", "total"}
    sn, tn, yn = s.numpy(), t.numpy(), y.numpy()
    ce = np_ce(sn, yn)
    scd, mcd = np_scd(sn, tn, yn, 1.0), np_mcd(sn, tn, yn, 4.0)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-10)  # CE is never warmed up
    assert out["scd"].item() == pytest.approx(factor * 1.0 * scd, rel=1e-10)
    assert out["mcd"].item() == pytest.approx(factor * 6.0 * mcd, rel=1e-10)
    assert out["total"].item() == pytest.approx(ce + factor * (scd + 6.0 * mcd), rel=1e-10)
    assert out["total"].item() == pytest.approx(
        (out["ce"] + out["scd"] + out["mcd"]).item(), rel=1e-12
    )


def test_dkd_objective_warmup_and_terms() -> None:
    s, t, y = random_batch(8, 10, seed=6)
    out = make_objective("dkd", warmup=4)(s, t, y, epoch=1)
    assert set(out) == {"ce", "tckd", "nckd", "total"}
    sn, tn, yn = s.numpy(), t.numpy(), y.numpy()
    assert out["ce"].item() == pytest.approx(np_ce(sn, yn), rel=1e-10)
    assert out["tckd"].item() == pytest.approx(0.25 * np_tckd(sn, tn, yn, 4.0), rel=1e-10)
    assert out["nckd"].item() == pytest.approx(0.25 * 8.0 * np_nckd(sn, tn, yn, 4.0), rel=1e-10)
    assert out["total"].item() == pytest.approx(
        (out["ce"] + out["tckd"] + out["nckd"]).item(), rel=1e-12
    )


def test_kd_and_ce_objectives() -> None:
    s, t, y = random_batch(8, 10, seed=8)
    sn, tn, yn = s.numpy(), t.numpy(), y.numpy()
    kd_np = 16.0 * np.mean([np_kl(np_softmax(b / 4), np_softmax(a / 4)) for a, b in zip(sn, tn)])
    out = make_objective("kd")(s, t, y, epoch=1)  # no warmup for KD: full weight at epoch 1
    assert set(out) == {"ce", "kd", "total"}
    assert out["ce"].item() == pytest.approx(0.1 * np_ce(sn, yn), rel=1e-10)
    assert out["kd"].item() == pytest.approx(0.9 * kd_np, rel=1e-10)
    assert out["total"].item() == pytest.approx(0.1 * np_ce(sn, yn) + 0.9 * kd_np, rel=1e-10)

    ce_obj = make_objective("ce", ce_weight=2.0)
    assert not ce_obj.needs_teacher
    out = ce_obj(s, None, y, epoch=3)
    assert set(out) == {"ce", "total"}
    assert out["total"].item() == pytest.approx(2.0 * np_ce(sn, yn), rel=1e-10)


def test_objective_gradient_flows_to_student_only_through_total() -> None:
    s, t, y = random_batch(4, 6, seed=12)
    s.requires_grad_(True)
    make_objective("rld")(s, t, y, epoch=5)["total"].backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


@pytest.mark.parametrize(
    "method, option",
    [("kd", "beta"), ("kd", "warmup"), ("dkd", "alpha_temperature"), ("ce", "temperature"),
     ("ce", "logit_stand"), ("rld", "kd_weight")],
)
def test_inapplicable_option_is_rejected(method: str, option: str) -> None:
    with pytest.raises(ValueError) as err:
        make_objective(method, **{option: 1.0})
    msg = str(err.value)
    assert repr(option) in msg and repr(method) in msg
    for valid in DEFAULTS[method]:
        assert valid in msg


def test_unknown_method_and_bad_values() -> None:
    with pytest.raises(ValueError, match=r"unknown method 'crd'; valid methods: ce, dkd, kd, la, lr, mlkd, rc, rld$"):
        make_objective("crd")
    with pytest.raises(ValueError, match=r"option 'warmup' for method 'rld' must be a positive finite number, got 0$"):
        make_objective("rld", warmup=0)
    with pytest.raises(ValueError, match=r"'beta' for method 'dkd' must be a finite number >= 0"):
        make_objective("dkd", beta=-1.0)
    with pytest.raises(ValueError, match=r"option 'logit_stand' for method 'rld' must be true or false, got 1$"):
        make_objective("rld", logit_stand=1)
    with pytest.raises(ValueError, match=r"epoch must be an int >= 1"):
        make_objective("rld").warmup_factor(0)
    with pytest.raises(ValueError, match=r"epoch must be an int >= 1"):
        make_objective("rld").warmup_factor(2.5)  # type: ignore[arg-type]
    assert make_objective("rld").warmup_factor(np.int64(5)) == 0.25


def test_teacher_required_except_for_ce() -> None:
    s, _, y = _good()
    for method in ("kd", "dkd", "rld"):
        with pytest.raises(ValueError, match=rf"method '{method}' needs teacher logits"):
            make_objective(method)(s, None, y, epoch=1)


def test_official_cli_conventions() -> None:
    rld = make_objective("rld", beta=6.0).with_official_logit_stand()
    assert dict(rld.params) == {
        "ce_weight": 1.0, "alpha": 9.0, "beta": 54.0, "temperature": 2.0,
        "alpha_temperature": 2.0, "warmup": 20.0, "logit_stand": True, "mask": "ge",
    }
    dkd = make_objective("dkd").with_official_logit_stand()
    assert (dkd.params["alpha"], dkd.params["beta"], dkd.params["temperature"]) == (9.0, 72.0, 2.0)
    kd = make_objective("kd").with_official_logit_stand()
    assert (kd.params["kd_weight"], kd.params["temperature"], kd.params["logit_stand"]) == (
        9.0, 2.0, True,
    )
    same = make_objective("rld", temperature=3.0).with_same_t()
    assert same.params["alpha_temperature"] == 3.0
    with pytest.raises(ValueError, match="same-t applies only to method 'rld'"):
        make_objective("dkd").with_same_t()
    with pytest.raises(ValueError, match="does not apply to method 'ce'"):
        make_objective("ce").with_official_logit_stand()
    assert isinstance(rld, Objective)


@pytest.mark.parametrize("method", ["ce", "kd", "dkd", "rld"])
def test_term_names_are_the_objectives_keys_in_order(method: str) -> None:
    s, t, y = random_batch(8, 10, seed=3)
    assert tuple(make_objective(method)(s, t, y, epoch=2)) == make_objective(method).term_names


@pytest.mark.parametrize("method", ["dkd", "rld"])
def test_scales_as_a_float32_tensor_give_bitwise_the_float_scales_terms(method: str) -> None:
    """A captured training step reads the epoch's scales from a device tensor; its loss and
    gradient must be exactly those of the Python floats eager training passes. Odd weights
    and warm-up so that w * alpha and w * beta are not exact in float32."""
    s, t, y = random_batch(64, 100, seed=21)
    s, t = s.float(), t.float()
    obj = make_objective(method, alpha=0.3, beta=6.7, warmup=7.0)
    for epoch in (1, 3, 6, 7, 30):
        floats = obj.scales(epoch)
        assert floats[1] == pytest.approx(floats[0] * 0.3) and floats[2] == pytest.approx(floats[0] * 6.7)
        out = {}
        for name, scales in (("floats", floats), ("tensor", torch.tensor(floats, dtype=torch.float32))):
            student = s.clone().requires_grad_(True)
            terms = obj.terms(student, t, y, scales)
            terms["total"].backward()
            out[name] = ({k: v.detach() for k, v in terms.items()}, student.grad)
        assert out["floats"][0] == obj(s, t, y, epoch)  # __call__ is terms() with scales(epoch)
        for key in out["floats"][0]:
            assert torch.equal(out["floats"][0][key], out["tensor"][0][key]), (epoch, key)
        assert torch.equal(out["floats"][1], out["tensor"][1]), epoch
