from __future__ import annotations

import numpy as np
import pytest

from components.tokenizers import resolve_collisions


def _unique_rows(codes: np.ndarray) -> bool:
    return len(np.unique(codes, axis=0)) == len(codes)


def test_unique_codes_are_returned_unchanged() -> None:
    codes = np.array([[0, 1], [0, 2], [1, 1]])
    out, sizes, report = resolve_collisions(codes, (2, 4))
    np.testing.assert_array_equal(out, codes)
    assert sizes == (2, 4)
    assert report == {"collision_rate_before": 0.0, "n_moved": 0, "extra_level": False}


def test_mover_takes_the_nearest_free_last_level_code_of_its_prefix() -> None:
    # items 0 and 1 share <0,5>; codes 4 and 6 are taken in prefix 0 -> nearest free is 3 or 7
    codes = np.array([[0, 5], [0, 5], [0, 4], [0, 6], [1, 5]])
    out, sizes, report = resolve_collisions(codes, (2, 10))
    assert sizes == (2, 10) and not report["extra_level"]
    assert report["collision_rate_before"] == pytest.approx(2 / 5)
    assert report["n_moved"] == 1
    np.testing.assert_array_equal(out[0], [0, 5])  # the lowest index keeps its code
    np.testing.assert_array_equal(out[1], [0, 3])  # tie 3 vs 7 -> lower code
    np.testing.assert_array_equal(out[2:], codes[2:])  # prefix never changes, others untouched


def test_scores_choose_who_stays_and_where_the_mover_goes() -> None:
    codes = np.array([[0, 1], [0, 1], [0, 2]])
    scores = np.array(
        [
            [0.0, 0.9, 0.5, 0.1],  # item 0 fits code 1 worse than item 1 does -> it moves
            [0.0, 0.2, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    out, _, report = resolve_collisions(codes, (1, 4), scores)
    np.testing.assert_array_equal(out[1], [0, 1])
    np.testing.assert_array_equal(out[0], [0, 0])  # cheapest free code for item 0 (not 3)
    assert report["n_moved"] == 1


def test_extra_level_only_when_the_prefix_is_full() -> None:
    # prefix 0 holds 3 items but has 2 last-level codes: one cannot move
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [1, 0]])
    out, sizes, report = resolve_collisions(codes, (2, 2))
    assert report == {"collision_rate_before": 1.0, "n_moved": 2, "extra_level": True}
    assert sizes == (2, 2, 2)
    assert _unique_rows(out)
    np.testing.assert_array_equal(out[3:], [[1, 0, 0], [1, 1, 0]])  # prefix 1 resolved by moving
    assert sorted(out[:3, 2].tolist()) == [0, 0, 1]  # only the leftover pair is disambiguated


def test_single_level_maps_use_one_shared_prefix() -> None:
    out, sizes, report = resolve_collisions(np.array([[2], [2], [2]]), (4,))
    assert _unique_rows(out) and sizes == (4,) and report["n_moved"] == 2


def test_scores_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="scores"):
        resolve_collisions(np.zeros((2, 2), dtype=int), (2, 2), np.zeros((2, 3)))
