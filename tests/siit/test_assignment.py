"""Collision-free assignment: unique identifiers, score-maximising, fall back to the current one."""

from __future__ import annotations

import numpy as np
import pytest

from components.siit.assignment import assign_identifiers

SIZES = (4, 4)


def ids(*pairs: tuple[int, int]) -> np.ndarray:
    return np.array(pairs, dtype=np.int64)


def unique_rows(codes: np.ndarray) -> bool:
    return len({tuple(r) for r in codes}) == len(codes)


@pytest.mark.parametrize("method", ["greedy", "exact", "balanced"])
def test_everyone_gets_their_favourite_when_there_is_no_conflict(method: str) -> None:
    current = ids((0, 0), (0, 1), (0, 2))
    candidates = np.stack([ids((1, 0), (0, 0)), ids((1, 1), (0, 0)), ids((1, 2), (0, 0))])
    scores = np.array([[-0.1, -2.0], [-0.2, -2.0], [-0.3, -2.0]])
    new = assign_identifiers(current, candidates, scores, np.full(3, -5.0), SIZES, method=method)
    assert new.tolist() == [[1, 0], [1, 1], [1, 2]]


def test_greedy_is_best_first_and_exact_maximises_the_total() -> None:
    # both want (1,0); item 0 wants it more, but item 1 has no good alternative
    current = ids((0, 0), (0, 1))
    candidates = np.stack([ids((1, 0), (2, 0)), ids((1, 0), (3, 3))])
    scores = np.array([[-0.1, -0.2], [-0.15, -9.0]])
    greedy = assign_identifiers(
        current, candidates, scores, np.full(2, -10.0), SIZES, method="greedy"
    )
    exact = assign_identifiers(
        current, candidates, scores, np.full(2, -10.0), SIZES, method="exact"
    )
    assert greedy.tolist() == [[1, 0], [3, 3]]  # total -9.1
    assert exact.tolist() == [[2, 0], [1, 0]]  # total -0.35


@pytest.mark.parametrize("method", ["greedy", "exact", "balanced"])
def test_an_item_without_a_free_candidate_keeps_its_identifier(method: str) -> None:
    # item 0 wants item 1's current identifier; item 1's only candidate is item 2's identifier, ...
    current = ids((0, 0), (0, 1), (0, 2))
    candidates = np.stack([ids((0, 1)), ids((0, 2)), ids((0, 2))])
    scores = np.array([[-0.1], [-0.1], [-0.05]])
    new = assign_identifiers(current, candidates, scores, np.full(3, -1.0), SIZES, method=method)
    assert unique_rows(new)
    for row in range(3):
        assert any((new[row] == c).all() for c in [*candidates[row], current[row]])


def test_fallback_chain_evicts_whoever_holds_the_identifier() -> None:
    # greedy: item 2 takes (0,1) (item 1's current), item 1's candidates all taken -> item 1 must
    # go home to (0,1), so item 2 is evicted and goes home to (0,2)
    current = ids((0, 0), (0, 1), (0, 2))
    candidates = np.stack([ids((3, 3)), ids((3, 3)), ids((0, 1))])
    scores = np.array([[-0.01], [-0.5], [-0.02]])
    new = assign_identifiers(current, candidates, scores, np.full(3, -1.0), SIZES, method="greedy")
    assert new.tolist() == [[3, 3], [0, 1], [0, 2]]


def test_churn_cap_keeps_the_largest_gains() -> None:
    current = ids((0, 0), (0, 1), (0, 2), (0, 3))
    candidates = np.stack([ids((1, r)) for r in range(4)])
    scores = np.array([[-1.0], [-0.1], [-2.0], [-0.5]])
    current_scores = np.full(4, -3.0)
    new = assign_identifiers(current, candidates, scores, current_scores, SIZES, max_churn=0.5)
    changed = (new != current).any(axis=1)
    assert changed.tolist() == [False, True, False, True]


def test_random_instances_are_always_bijections() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, b = 30, 5
        current = np.stack([np.arange(n) // 8, np.arange(n) % 8], axis=1)
        candidates = rng.integers(0, 8, size=(n, b, 2))
        scores = np.sort(rng.normal(size=(n, b)), axis=1)[:, ::-1]
        for method in ("greedy", "exact", "balanced"):
            new = assign_identifiers(
                current, candidates, scores, rng.normal(size=n) - 2, (8, 8), method=method
            )
            assert unique_rows(new)


@pytest.mark.parametrize("method", ["greedy", "exact"])
def test_an_item_moves_only_for_at_least_min_gain(method: str) -> None:
    current = ids((0, 0), (0, 1), (0, 2))
    candidates = np.stack([ids((1, 0), (0, 0)), ids((1, 1), (0, 1)), ids((1, 2), (0, 2))])
    scores = np.array([[-1.0, -2.0], [-1.9, -2.0], [-1.5, -2.0]])
    current_scores = np.full(3, -2.0)
    args = (current, candidates, scores, current_scores, SIZES)
    moved = assign_identifiers(*args, method=method, min_gain=0.0)
    assert moved.tolist() == [[1, 0], [1, 1], [1, 2]]
    gated = assign_identifiers(*args, method=method, min_gain=0.4)
    assert gated.tolist() == [[1, 0], [0, 1], [1, 2]]  # item 1 gains only 0.1
    assert unique_rows(gated)


def crowding_instance() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """8 items, all best under first-level code 0 (a free identifier each), next best under
    1 or 2; each now at (3, i)."""
    n = 8
    current = np.stack([np.full(n, 3), np.arange(n)], axis=1)
    candidates = np.stack([ids((0, i), (1 + i % 2, i)) for i in range(n)])
    scores = np.tile([-0.1, -0.3], (n, 1))
    return current, candidates, scores, np.full(n, -5.0)


def test_balanced_spreads_items_that_all_prefer_one_prefix() -> None:
    current, candidates, scores, current_scores = crowding_instance()
    args = (current, candidates, scores, current_scores, (4, 8))
    greedy = assign_identifiers(*args, method="greedy")
    balanced = assign_identifiers(*args, method="balanced", strength=1.0)
    assert (greedy[:, 0] == 0).all()  # everyone takes the favourite: one crowded prefix
    assert unique_rows(balanced)
    # a second item under code 0 costs log(1 + 1 / (1/4)) = 1.6 nats > the 0.2 it gains
    assert np.bincount(balanced[:, 0], minlength=4).tolist() == [3, 2, 3, 0]
    # the price grows with the strength; at 0 it is the greedy assignment
    assert (assign_identifiers(*args, method="balanced", strength=0.0) == greedy).all()
    weak = assign_identifiers(*args, method="balanced", strength=0.05)
    assert (weak[:, 0] == 0).sum() > 3


def test_balanced_counts_the_items_that_cannot_move() -> None:
    # items 0-3 stay under code 0 (no candidate); item 4 prefers a free (0, 5) to (1, 5)
    current = ids((0, 0), (0, 1), (0, 2), (0, 3), (3, 0))
    candidates = np.stack([ids((2, 2), (2, 3))] * 4 + [ids((0, 5), (1, 5))])
    scores = np.full((5, 2), -np.inf)
    scores[4] = [-0.1, -0.3]
    args = (current, candidates, scores, np.full(5, -5.0), (4, 8))
    assert assign_identifiers(*args, method="greedy")[4].tolist() == [0, 5]
    balanced = assign_identifiers(*args, method="balanced", strength=1.0)
    assert balanced[:4].tolist() == current[:4].tolist()
    assert balanced[4].tolist() == [1, 5]
