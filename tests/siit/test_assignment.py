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


@pytest.mark.parametrize("method", ["greedy", "exact"])
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


@pytest.mark.parametrize("method", ["greedy", "exact"])
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
        for method in ("greedy", "exact"):
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
