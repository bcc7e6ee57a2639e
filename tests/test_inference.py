"""Evaluating a model over views (pipeline/inference.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest



def test_rank_correlation_is_spearman_over_the_classes_other_than_the_label():
    from pipeline.inference import rank_correlation

    def ranks(values):  # average ranks of ties, by counting (no sorting)
        return [sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]

    def spearman(a, b):
        ra, rb = ranks(a), ranks(b)
        ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
        cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
        var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
        return cov / var if var else None

    rng = np.random.default_rng(0)
    student, teacher = rng.integers(0, 4, (30, 6)).astype(float), rng.normal(size=(30, 6))  # many ties
    teacher[:, 2] = teacher[:, 3]
    student[0] = 1.0  # a constant ranking: left out
    labels = rng.integers(0, 6, 30)
    values = [spearman([x for c, x in enumerate(s) if c != y], [x for c, x in enumerate(t) if c != y])
              for s, t, y in zip(student, teacher, labels)]
    expected = np.mean([v for v in values if v is not None])
    # float64 sums of a few dozen terms in another order: 1e-12
    assert rank_correlation(student, teacher, labels, rows_per_block=7) == pytest.approx(expected, rel=1e-12)
    assert rank_correlation(teacher, teacher, labels) == pytest.approx(1.0, rel=1e-12)
    assert rank_correlation(-teacher, teacher, labels) == pytest.approx(-1.0, rel=1e-12)
