"""models.recall.metrics.catalogue_coverage: the share of the catalogue a channel returns."""

import numpy as np
import pytest

from models.recall import metrics


def test_catalogue_coverage_counts_distinct_items_over_the_catalogue():
    topk = np.array([[0, 2, -1],
                     [2, 3, 1]])
    # all columns: {0, 1, 2, 3} of 10; -1 (an empty slot) is no item
    assert metrics.catalogue_coverage(topk, 10) == pytest.approx(0.4)
    assert metrics.catalogue_coverage(topk, 10, k=1) == pytest.approx(0.2)  # {0, 2}
    assert metrics.catalogue_coverage(topk, 10, k=2) == pytest.approx(0.3)  # {0, 2, 3}
    assert metrics.catalogue_coverage(topk, 4) == pytest.approx(1.0)
    assert metrics.catalogue_coverage(np.full((2, 3), -1), 10) == 0.0
    assert metrics.catalogue_coverage(topk, 0) == 0.0


def test_evaluate_reports_the_same_coverage():
    topk = np.array([[0, 2, -1], [2, 3, 1]])
    out = metrics.evaluate(topk, [np.array([2]), np.array([5])], 10, ks=(1, 3))
    # users with a target only: both; coverage@1 = {0, 2} / 10, coverage@3 = 4 / 10
    assert out["coverage@1"] == pytest.approx(0.2) and out["coverage@3"] == pytest.approx(0.4)
