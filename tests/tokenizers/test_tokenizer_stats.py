from __future__ import annotations

import numpy as np
import pytest

from components.tokenizers import token_map_stats


def test_entropy_perplexity_and_usage_against_hand_computation() -> None:
    codes = np.array([[0, 0], [0, 1], [1, 2], [1, 3]])
    stats = token_map_stats(codes, (4, 4))
    # level a: two codes, 2 items each -> 1 bit; level b: 4 codes, 1 item each -> 2 bits
    assert stats["entropy_bits"] == pytest.approx([1.0, 2.0])
    assert stats["perplexity"] == pytest.approx([2.0, 4.0])
    assert stats["used_codes"] == [2, 4]
    assert stats["distinct_prefixes"] == [2, 4]
    assert stats["collision_rate"] == 0.0
    assert "churn" not in stats


def test_skewed_usage_and_collisions() -> None:
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0]])
    stats = token_map_stats(codes, (2, 2))
    h = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))  # p = (3/4, 1/4) at both levels
    assert stats["entropy_bits"] == pytest.approx([h, h])
    assert stats["distinct_prefixes"] == [2, 3]
    assert stats["collision_rate"] == pytest.approx(0.5)


def test_churn_counts_items_whose_identifier_changed() -> None:
    previous = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    now = np.array([[0, 0], [0, 1], [1, 1], [1, 0]])
    assert token_map_stats(now, (2, 2), previous)["churn"] == pytest.approx(0.5)
    extra = np.concatenate([previous, np.zeros((4, 1), dtype=int)], axis=1)
    assert token_map_stats(extra, (2, 2, 1), previous)["churn"] == 1.0
