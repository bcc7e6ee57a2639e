"""The method registry and the official baselines (LA, RC, LR, MLKD) beside KD, DKD and RLD.

Expectations come from outside the implementation: a fixture of values and gradients made
by the OFFICIAL distillers (tests/fixtures/make_official_methods.py, zju-SWJ/RLD@d54578f,
float32), numpy re-computations that select rows and classes literally, hand-worked small
cases and finite differences.

Tolerances:
- against the official fixture, 1e-5 relative on the total and on each gradient (scaled by
  the gradient's largest entry): both sides compute in float32 (epsilon 6e-8) through ~100
  operations of softmaxes and reductions summed in other orders (LR's group means, KD's
  batchmean), which leaves ~1e-6 relative; 1e-5 is ten times that;
- float64 against numpy: 1e-10 relative (reduction orders and exp/log implementations);
- gradcheck: step 1e-6 in float64, atol 1e-6 / rtol 1e-4 (central differences are ~1e-8);
- 0 (exact) where both sides run the same float32 operations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.losses import DEFAULTS, METHODS, kd_loss, make_objective, rld_terms
from pipeline.methods import REGISTRY, get_method, ops

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "official_methods.npz")
META = json.loads(str(FIXTURE["meta"]))


def _objective(method: str, flags: list[str]):
    objective = make_objective(method)
    if "logit_stand" in flags:
        objective = objective.with_official_logit_stand()
    if "same_t" in flags:
        objective = objective.with_same_t()
    return objective


@pytest.mark.parametrize("case", META["cases"], ids=[c["name"] for c in META["cases"]])
def test_every_method_matches_the_official_code(case: dict) -> None:
    classes = case["classes"]
    s = torch.tensor(FIXTURE[f"student{classes}"], requires_grad=True)
    t = torch.tensor(FIXTURE[f"teacher{classes}"], requires_grad=True)
    y = torch.tensor(FIXTURE[f"labels{classes}"])
    out = _objective(case["method"], case["flags"])(s, t, y, META["epoch"])
    out["total"].backward()
    assert out["total"].dtype == torch.float32
    assert out["total"].item() == pytest.approx(case["value"], rel=1e-5)
    official = torch.from_numpy(FIXTURE[f"grad/{case['name']}"])
    torch.testing.assert_close(s.grad, official, rtol=1e-5, atol=1e-5 * official.abs().max().item())
    assert t.grad is None  # the teacher is a constant, as under the official no_grad


def test_the_fixture_covers_every_distilling_method_at_three_class_counts() -> None:
    covered = {(c["method"], c["classes"]) for c in META["cases"]}
    distilling = [m for m in METHODS if REGISTRY[m].needs_teacher]
    assert covered == {(m, c) for m in distilling for c in (10, 100, 1000)}
    stand = {c["method"] for c in META["cases"] if "logit_stand" in c["flags"]}
    assert stand == {m for m in distilling if REGISTRY[m].official_logit_stand is not None}
    # The fixture's batches hold what the official quirks act on: rows the teacher gets
    # wrong, true logits tied with another class, and ties for the teacher's top.
    for classes in (10, 100, 1000):
        t, y = FIXTURE[f"teacher{classes}"], FIXTURE[f"labels{classes}"]
        true = t[np.arange(len(y)), y]
        assert (t.argmax(1) != y).any() and (t.argmax(1) == y).any()
        assert ((t == true[:, None]).sum(1) > 1).any()
        assert ((t == t.max(1, keepdims=True)).sum(1) > 1).any()


# ---------------------------------------------------------------------------------------
# The registry


@pytest.mark.parametrize("method", METHODS)
def test_each_method_returns_its_declared_terms_in_order(method: str) -> None:
    s, t, y = _batch(8, 10, seed=1)
    objective = make_objective(method)
    out = objective(s, t, y, epoch=3)
    assert tuple(out) == objective.term_names == ("ce", *REGISTRY[method].terms, "total")
    parts = sum(v for k, v in out.items() if k != "total")
    assert out["total"].item() == pytest.approx(parts.item(), rel=1e-12)  # float64: the same sum up to rounding


@pytest.mark.parametrize("method", METHODS)
def test_every_option_is_checked_and_named_in_errors(method: str) -> None:
    spec = get_method(method)
    assert dict(DEFAULTS[method]) == dict(spec.defaults)
    with pytest.raises(ValueError) as err:
        make_objective(method, not_an_option=1.0)
    assert str(err.value) == (f"option 'not_an_option' does not apply to method {method!r}; "
                              f"valid options for {method!r}: {', '.join(spec.defaults)}")
    for option in spec.options:
        bad = {"weight": -1.0, "positive": 0.0, "fraction": 1.5, "flag": 1, "choice": "nope"}[option.kind]
        with pytest.raises(ValueError, match=rf"^option '{option.name}' for method '{method}' must be "):
            make_objective(method, **{option.name: bad})


def test_option_kinds_accept_their_ranges() -> None:
    assert make_objective("lr", eta=1).params["eta"] == 1.0  # (0, 1]
    assert make_objective("rld", mask="g").params["mask"] == "g"
    assert make_objective("la", ce_weight=0).params["ce_weight"] == 0.0
    with pytest.raises(ValueError, match=r"^option 'mask' for method 'rld' must be ge \| g, got 'gt'$"):
        make_objective("rld", mask="gt")
    with pytest.raises(ValueError, match=r"must be a number in \(0, 1\], got 0$"):
        make_objective("lr", eta=0)
    with pytest.raises(ValueError, match=r"must be a finite number >= 0, got inf$"):
        make_objective("rc", rc_weight=float("inf"))


@pytest.mark.slow
def test_the_registry_imports_no_torch() -> None:
    """`rld --help`, grid expansion and the workflow read the registry; torch takes ~2 s."""
    import subprocess
    import sys

    code = "import sys, pipeline.methods, pipeline.grid; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("method", [m for m in METHODS if REGISTRY[m].needs_teacher])
def test_teacher_is_required(method: str) -> None:
    s, _, y = _batch(4, 5, seed=0)
    with pytest.raises(ValueError, match=rf"method '{method}' needs teacher logits"):
        make_objective(method)(s, None, y, epoch=1)


def test_official_logit_stand_per_method() -> None:
    la = make_objective("la").with_official_logit_stand()
    assert (la.params["temperature"], la.params["kd_weight"], la.params["logit_stand"]) == (2.0, 1.0, True)
    rc = make_objective("rc").with_official_logit_stand()
    assert (rc.params["kd_weight"], rc.params["rc_weight"], rc.params["temperature"]) == (9.0, pytest.approx(0.9), 2.0)
    mlkd = make_objective("mlkd").with_official_logit_stand()
    assert (mlkd.params["kd_weight"], mlkd.params["temperature"], mlkd.params["ce_weight"]) == (9.0, 2.0, 0.1)
    with pytest.raises(ValueError, match=r"does not apply to method 'lr'; valid methods: dkd, kd, la, mlkd, rc, rld$"):
        make_objective("lr").with_official_logit_stand()


# ---------------------------------------------------------------------------------------
# Independent references, float64


def _batch(batch: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    t = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, classes, (batch,), generator=g)
    y[0] = (t[0].argmax() + 1) % classes  # at least one row the teacher gets wrong
    y[1] = t[1].argmax()  # and one it gets right
    return s, t, y


def np_softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    e = np.exp((z - z.max()) / temperature)
    return e / e.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    keep = p > 0
    return float(np.sum(p[keep] * (np.log(p[keep]) - np.log(q[keep]))))


def np_ce(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([-np.log(np_softmax(r)[k]) for r, k in zip(s, y)])


def np_kd(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    return temperature**2 * np.mean([np_kl(np_softmax(b, temperature), np_softmax(a, temperature)) for a, b in zip(s, t)])


def test_la_swaps_the_top_and_the_true_logit_then_distils_without_ce() -> None:
    t = torch.tensor([[1.0, 5.0, 2.0], [4.0, 0.0, 3.0], [2.0, 2.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([2, 0, 1])
    from pipeline.methods.la import swap

    # row 0: wrong (top 1, label 2): 5 and 2 trade places; row 1: right, unchanged; row 2: a
    # tie for the top between classes 0 and 1 (the label): the first one (0) is "the top".
    expected = torch.tensor([[1.0, 2.0, 5.0], [4.0, 0.0, 3.0], [2.0, 2.0, 1.0]], dtype=torch.float64)
    assert torch.equal(swap(t, y), expected)
    s = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = make_objective("la")(s, t, y, epoch=1)
    assert out["ce"].item() == 0.0
    assert out["total"].item() == pytest.approx(np_kd(s.numpy(), expected.numpy(), 4.0), rel=1e-10)


def test_rc_pulls_toward_the_students_own_logits_with_the_true_one_raised() -> None:
    s, t, y = _batch(6, 7, seed=3)
    out = make_objective("rc", rc_weight=0.5, kd_weight=2.0, ce_weight=0.25)(s, t, y, epoch=1)
    sn, tn, yn = s.numpy(), t.numpy(), y.numpy()
    raised = sn.copy()
    raised[np.arange(6), yn] += sn.max(1)
    assert out["ce"].item() == pytest.approx(0.25 * np_ce(sn, yn).mean(), rel=1e-10)
    assert out["kd"].item() == pytest.approx(2.0 * np_kd(sn, tn, 4.0), rel=1e-10)
    assert out["rc"].item() == pytest.approx(0.5 * np_kd(sn, raised, 4.0), rel=1e-10)
    # RC's target is the student's own, detached: its gradient is KD's toward a fixed target.
    s.requires_grad_(True)
    make_objective("rc", ce_weight=0, kd_weight=0)(s, t, y, epoch=1)["total"].backward()
    fixed = torch.tensor(raised)
    expected = torch.autograd.grad(0.1 * kd_loss(s, fixed, temperature=4.0), s)[0]
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-14)


def _np_lr(s: np.ndarray, t: np.ndarray, y: np.ndarray, mse_weight: float, revised_weight: float, eta: float):
    """REVISION by literally splitting the batch into the rows the teacher gets right and wrong."""
    right = t.argmax(1) == y
    classes = s.shape[1]
    ce = np_ce(s[right], y[right]).mean() if right.any() else 0.0
    mse = ((s[right] - t[right]) ** 2).mean() if right.any() else 0.0
    revised = 0.0
    if (~right).any():
        p_t = np.array([np_softmax(r) for r in t[~right]])
        p_s = np.array([np_softmax(r) for r in s[~right]])
        yw = y[~right]
        b = eta / (p_t.max(1) - p_t[np.arange(len(yw)), yw] + 1)
        target = b[:, None] * p_t + (1 - b[:, None]) * np.eye(classes)[yw]
        revised = ((p_s - target) ** 2).mean()
    return ce, mse_weight * mse, revised_weight * revised


@pytest.mark.parametrize("rows", ["mixed", "all right", "all wrong"])
def test_lr_splits_the_batch_by_the_teachers_correctness(rows: str) -> None:
    s, t, y = _batch(9, 6, seed=4)
    if rows == "all right":
        y = t.argmax(1)
    elif rows == "all wrong":
        y = (t.argmax(1) + 1) % 6
    out = make_objective("lr", mse_weight=3.0, revised_weight=2.0, eta=0.7)(s, t, y, epoch=1)
    ce, mse, revised = _np_lr(s.numpy(), t.numpy(), y.numpy(), 3.0, 2.0, 0.7)
    for key, value in (("ce", ce), ("mse", mse), ("revised", revised)):
        assert out[key].item() == pytest.approx(value, rel=1e-10, abs=0), key


@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_median_is_numpys_linear_percentile(size: int) -> None:
    g = torch.Generator().manual_seed(size)
    for values in (torch.rand(size, generator=g), torch.randint(0, 3, (size,), generator=g).float() / 3):
        got = ops.median(values)
        assert got.dtype == values.dtype
        assert got.item() == np.float32(np.percentile(values.numpy(), 50))


def test_mlkd_scales_each_term_by_its_masks_true_share() -> None:
    """Official quirk: batch scalars times a boolean mask, averaged -- not a selection of rows."""
    s, t, y = _batch(7, 5, seed=8)
    out = make_objective("mlkd", kd_weight=1.0, ce_weight=0.0)(s, t, y, epoch=1)
    sn, tn = s.numpy(), t.numpy()
    p_t = np.array([np_softmax(r) for r in tn])
    sample_share = np.mean(p_t.max(1) <= np.percentile(p_t.max(1), 50))  # 4 of 7
    class_share = np.mean(p_t.sum(0) <= np.percentile(p_t.sum(0), 50))  # 3 of 5
    assert (sample_share, class_share) == (4 / 7, 3 / 5)
    temperatures = (4.0, 3.0, 5.0, 2.0, 6.0)

    def gram(z: np.ndarray, tau: float, by: str) -> np.ndarray:
        p = np.array([np_softmax(r, tau) for r in z])
        return p.T @ p if by == "class" else p @ p.T

    kd = sum(np_kd(sn, tn, tau) for tau in temperatures) * sample_share
    cc = sum(((gram(tn, tau, "class") - gram(sn, tau, "class")) ** 2).sum() / 5 for tau in temperatures) * class_share
    bc = sum(((gram(tn, tau, "batch") - gram(sn, tau, "batch")) ** 2).sum() / 7 for tau in temperatures) * sample_share
    for key, value in (("kd", kd), ("cc", cc), ("bc", bc)):
        assert out[key].item() == pytest.approx(value, rel=1e-10), key


def test_rld_mask_g_keeps_the_true_class_in_mcd() -> None:
    s, t, y = _batch(8, 6, seed=11)
    t[2, 4] = t[2, y[2]]  # a tie with the true logit: M_ge masks it, M_g keeps it
    sn, tn, yn = s.numpy(), t.numpy(), y.numpy()
    for mask, keep in (("ge", lambda row, k: row < row[k]), ("g", lambda row, k: row <= row[k])):
        expected = 0.0
        for a, b, k in zip(sn, tn, yn):
            kept = keep(b, k)
            if kept.any():
                expected += np_kl(np_softmax(b[kept], 4.0), np_softmax(a[kept], 4.0))
        got = rld_terms(s, t, y, temperature=4.0, alpha_temperature=1.0, mask=mask)["mcd"]
        assert got.item() == pytest.approx(16.0 * expected / len(sn), rel=1e-10), mask
    # Where the teacher is right, M_g masks nothing: MCD is KD over every class.
    right = t.argmax(1)
    mcd = rld_terms(s, t, right, temperature=3.0, alpha_temperature=1.0, mask="g")["mcd"]
    assert mcd.item() == pytest.approx(kd_loss(s, t, temperature=3.0).item(), rel=1e-12)


# RC is left out on purpose: its target is the student's own logits, detached (official), so
# finite differences see a target that moves and the gradient does not; the RC test above
# checks its gradient against KD toward that target held fixed.
@pytest.mark.parametrize("method, options", [("la", {}), ("lr", {}), ("mlkd", {}), ("rld", {"mask": "g"}),
                                             ("la", {"logit_stand": True}), ("mlkd", {"logit_stand": True})])
def test_gradcheck(method: str, options: dict) -> None:
    s, t, y = _batch(4, 5, seed=5)
    s.requires_grad_(True)
    objective = make_objective(method, **options)
    assert torch.autograd.gradcheck(lambda a: objective(a, t, y, epoch=3)["total"], (s,), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(method: str, half: torch.dtype) -> None:
    s, t, y = _batch(8, 10, seed=2)
    s16, t16 = s.to(half), t.to(half)
    objective = make_objective(method)
    got = objective(s16, t16, y, epoch=2)
    ref = objective(s16.float(), t16.float(), y, epoch=2)
    for key in got:
        assert got[key].dtype == torch.float32
        assert torch.equal(got[key], ref[key]), key


@pytest.mark.parametrize("method", METHODS)
def test_scales_as_a_float32_tensor_give_bitwise_the_float_scales_terms(method: str) -> None:
    """A captured step reads the epoch's scales from a device tensor: same loss, same gradient."""
    s, t, y = _batch(16, 10, seed=21)
    s, t = s.float(), t.float()
    options = {"warmup": 7.0, "alpha": 0.3, "beta": 6.7} if REGISTRY[method].has_warmup else {}
    objective = make_objective(method, **options)
    floats = objective.scales(3)
    results = []
    for scales in (floats, torch.tensor(floats, dtype=torch.float32)):
        student = s.clone().requires_grad_(True)
        terms = objective.terms(student, t, y, scales)
        terms["total"].backward()
        results.append(({k: v.detach() for k, v in terms.items()}, student.grad))
    for key in results[0][0]:
        assert torch.equal(results[0][0][key], results[1][0][key]), key
    assert torch.equal(results[0][1], results[1][1])
