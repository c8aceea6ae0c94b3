"""Refinement on a tiny real model: well-formed, collision-free, diversity-aware."""

from __future__ import annotations

import numpy as np
import pytest

from components.config import ModelConfig, SiitConfig
from components.model.recommender import GenerativeRecommender
from components.siit.refine import load_penalty, propose_identifiers, refine_identifiers

SIZES = (4, 4, 4)


@pytest.fixture(scope="module")
def rec() -> GenerativeRecommender:
    cfg = ModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, text_vocab_size=200
    )
    texts = [f"item {i} colour {'red' if i % 2 else 'blue'}" for i in range(24)]
    return GenerativeRecommender.create(cfg, SIZES, texts, seed=0)


def texts() -> list[str]:
    return [f"item {i} colour {'red' if i % 2 else 'blue'}" for i in range(24)]


def current_codes() -> np.ndarray:
    flat = np.random.default_rng(0).choice(64, 24, replace=False)
    return np.stack([flat // 16, (flat // 4) % 4, flat % 4], axis=1)


def test_load_penalty() -> None:
    usage = np.array([0.0, 1.0, 3.0, 0.0])
    assert (load_penalty(usage, 4, 0.0) == 0).all()
    p = load_penalty(usage, 4, 1.0)
    assert p[0] == 0 and p[3] == 0 and p[2] < p[1] < 0


def test_refined_map_is_a_bijection_over_well_formed_identifiers(
    rec: GenerativeRecommender,
) -> None:
    cfg = SiitConfig(candidates=5, beam_size=8, batch_size=8)
    new, stats = refine_identifiers(rec, texts(), current_codes(), cfg, seed=0)
    assert new.shape == (24, 3)
    assert len({tuple(r) for r in new}) == 24
    assert ((new >= 0) & (new < 4)).all()
    assert 0.0 <= stats["churn"] <= 1.0 and 0.0 <= stats["collision_rate_before"] <= 1.0
    again, _ = refine_identifiers(rec, texts(), current_codes(), cfg, seed=0)
    assert (again == new).all()  # deterministic


def test_diversity_penalty_spreads_first_level_codes(rec: GenerativeRecommender) -> None:
    plain = propose_identifiers(
        rec, texts(), current_codes(), SiitConfig(candidates=3, diversity=0.0, batch_size=4), 0
    )
    spread = propose_identifiers(
        rec, texts(), current_codes(), SiitConfig(candidates=3, diversity=50.0, batch_size=4), 0
    )
    used_plain = len(set(plain.codes[:, 0, 0]))
    used_spread = len(set(spread.codes[:, 0, 0]))
    assert used_spread > used_plain
    # scores are the model's log-probabilities, without the penalty
    assert (spread.scores[:, 0] <= 0).all()
