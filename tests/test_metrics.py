"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.metrics import (
    METRIC_NAMES,
    cross_fitted_metrics,
    metrics_from_ranks,
    ranking_metrics,
    target_ranks,
    user_gains,
)


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


def _noise_ranks(rng: np.random.Generator, epochs: int, users: int) -> np.ndarray:
    """Every epoch equally good in expectation: a hit (rank 1-10) with probability 0.15."""
    hit = rng.random((epochs, users)) < 0.15
    return np.where(hit, rng.integers(1, 11, size=(epochs, users)), 0)


def test_metrics_from_ranks_match_ranking_metrics() -> None:
    rng = np.random.default_rng(3)
    ranked = np.stack([rng.permutation(50)[:10] for _ in range(200)])
    targets = rng.integers(0, 50, size=200)
    assert metrics_from_ranks(target_ranks(ranked, targets)) == ranking_metrics(ranked, targets)
    per_user = user_gains(target_ranks(ranked, targets))
    assert list(per_user) == list(METRIC_NAMES)
    assert per_user["ndcg@10"].shape == (200,)


def test_cross_fitting_scores_the_epoch_that_wins_everywhere() -> None:
    """An epoch better for every user is chosen on every half: the cross-fitted metrics are
    exactly its own."""
    rng = np.random.default_rng(0)
    ranks = _noise_ranks(rng, 4, 300)
    ranks[2] = np.where(rng.random(300) < 0.6, 1, 2)  # every user ranked 1 or 2
    assert cross_fitted_metrics(ranks) == pytest.approx(metrics_from_ranks(ranks[2]), abs=1e-12)


def test_cross_fitting_removes_the_best_epochs_optimism() -> None:
    """Ten epochs of the same quality: the best epoch's score exceeds what any of them is
    worth, the cross-fitted score does not."""
    ranks = _noise_ranks(np.random.default_rng(7), 10, 2000)
    per_epoch = [metrics_from_ranks(r)["ndcg@10"] for r in ranks]
    worth = float(np.mean(per_epoch))
    best = max(per_epoch)
    fitted = cross_fitted_metrics(ranks)
    assert best - worth > 0.005  # the maximum of ten noisy, equal scores
    assert abs(fitted["ndcg@10"] - worth) < (best - worth) / 2
    assert set(fitted) == set(METRIC_NAMES)
    assert cross_fitted_metrics(ranks) == fitted  # a fixed seed: deterministic
    assert cross_fitted_metrics(ranks, seed=1) != fitted


def test_cross_fitting_rejects_bad_shapes_and_criteria() -> None:
    with pytest.raises(ValueError, match="candidates >= 1, users >= 2"):
        cross_fitted_metrics(np.zeros((0, 5), dtype=int))
    with pytest.raises(ValueError, match="candidates >= 1, users >= 2"):
        cross_fitted_metrics(np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="unknown criterion"):
        cross_fitted_metrics(np.zeros((2, 5), dtype=int), criterion="mrr")
