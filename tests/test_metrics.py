"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.metrics import ranking_metrics, target_ranks


def test_target_ranks() -> None:
    ranked = np.array([[3, 1, 2], [5, 6, 7], [9, -1, -1]])
    assert target_ranks(ranked, np.array([2, 4, 9])).tolist() == [3, 0, 1]


def test_hand_computed_values() -> None:
    # user 0: target at rank 1, user 1: rank 4, user 2: rank 7, user 3: absent
    ranked = np.array(
        [
            [10, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            [1, 2, 3, 11, 4, 5, 6, 7, 8, 9],
            [1, 2, 3, 4, 5, 6, 12, 7, 8, 9],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 0],
        ]
    )
    m = ranking_metrics(ranked, np.array([10, 11, 12, 13]))
    assert m["recall@5"] == pytest.approx(2 / 4)
    assert m["recall@10"] == pytest.approx(3 / 4)
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(5)) / 4)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5) + 1 / math.log2(8)) / 4)
    assert list(m) == ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]


def test_lists_shorter_than_k_are_rejected() -> None:
    with pytest.raises(ValueError, match="@10"):
        ranking_metrics(np.zeros((2, 5), dtype=int), np.zeros(2, dtype=int))
