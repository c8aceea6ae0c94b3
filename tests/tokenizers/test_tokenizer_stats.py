from __future__ import annotations

import numpy as np
import pytest

from components.tokenizers import text_coherence, token_map_stats


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


def _coherence_by_pairs(codes: np.ndarray, vectors: np.ndarray) -> list[float]:
    """The definition, pair by pair."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = unit @ unit.T
    off = ~np.eye(len(codes), dtype=bool)
    out = []
    for depth in range(1, codes.shape[1]):
        same = (codes[:, None, :depth] == codes[None, :, :depth]).all(-1) & off
        out.append(sim[same].mean() - sim[off].mean())
    return out


def test_text_coherence_is_the_pairwise_definition():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(30, 3))
    vectors = rng.normal(size=(30, 5))
    np.testing.assert_allclose(
        text_coherence(codes, vectors), _coherence_by_pairs(codes, vectors), atol=1e-12
    )


def test_text_coherence_tells_a_text_built_map_from_a_random_one():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16))
    topic = np.repeat(np.arange(4), 25)
    vectors = centres[topic] + 0.3 * rng.normal(size=(100, 16))
    built = np.stack([topic, np.arange(100) % 25, np.zeros(100, dtype=int)], axis=1)
    shuffled = built[rng.permutation(100)]
    by_text = text_coherence(built, vectors)
    by_chance = text_coherence(shuffled, vectors)
    assert by_text[0] > 0.5  # a prefix is a topic: items under it are alike
    assert abs(by_chance[0]) < 0.1  # a prefix says nothing about the text
    assert len(by_text) == 2


def test_text_coherence_without_pairs_and_with_misaligned_rows():
    codes = np.array([[0, 0], [1, 0], [2, 0]])
    assert text_coherence(codes, np.eye(3)) == [None]  # no two items share a level-0 code
    with pytest.raises(ValueError, match="2 embedding rows for 3 identifiers"):
        text_coherence(codes, np.eye(3)[:2])
