"""Every method: a bijection, deterministic under a seed, within its levels and code ranges."""

from __future__ import annotations

import numpy as np
import pytest

from components.tokenizers import METHODS, build_token_map
from components.tokenizers.cid import cid_codes, cooccurrence_graph
from components.tokenizers.random_ids import random_codes


def _build(method: str, catalogue: dict, cfg, **overrides):
    return build_token_map(method, cfg, **{**catalogue, **overrides})


def _assert_bijection(token_map) -> None:
    assert len(np.unique(token_map.codes, axis=0)) == token_map.n_items
    assert len(set(token_map.identifiers())) == token_map.n_items
    for level, size in enumerate(token_map.codebook_sizes):
        assert token_map.codes[:, level].min() >= 0 and token_map.codes[:, level].max() < size


@pytest.mark.parametrize("method", METHODS)
def test_bijection_within_levels_and_codebook_sizes(method, catalogue, small_config) -> None:
    cfg = small_config(method)
    token_map = _build(method, catalogue, cfg)
    _assert_bijection(token_map)
    assert token_map.item_ids == tuple(catalogue["item_ids"])
    # 60 items in 4**3 = 64 identifiers: a semantic method may fill a prefix, and then
    # (only then) one disambiguation level is appended
    extra_level = token_map.metadata["stats"]["extra_level"]
    assert token_map.codebook_sizes[:3] == (4, 4, 4)
    assert token_map.levels == 3 + extra_level
    meta = token_map.metadata
    assert meta["method"] == method and meta["round"] == 0 and meta["seed"] == 7
    assert meta["params"]["levels"] == 3 and meta["params"]["method"] == method
    stats = meta["stats"]
    assert 0.0 <= stats["collision_rate_before"] <= 1.0 and stats["collision_rate"] == 0.0
    assert len(stats["entropy_bits"]) == token_map.levels
    assert stats["distinct_prefixes"][-1] == 60


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_under_a_seed(method, catalogue, small_config) -> None:
    first = _build(method, catalogue, small_config(method))
    again = _build(method, catalogue, small_config(method))
    np.testing.assert_array_equal(first.codes, again.codes)


def test_random_codes_depend_on_the_seed(catalogue, small_config) -> None:
    a = _build("random", catalogue, small_config("random", seed=1))
    b = _build("random", catalogue, small_config("random", seed=2))
    assert not np.array_equal(a.codes, b.codes)


def test_rqkmeans_duplicated_embeddings_give_the_known_collision_rate(small_config) -> None:
    # 12 distinct points, one level of 16 codes: each distinct point is its own cluster, so
    # exactly the 4 duplicated pairs collide (8/16) and 4 items move to the 4 free codes.
    rng = np.random.default_rng(3)
    distinct = rng.normal(size=(12, 8)).astype(np.float32)
    embeddings = np.concatenate([distinct, distinct[:4]])
    cfg = small_config("rqkmeans", levels=1, codebook_size=16)
    token_map = build_token_map(
        "rqkmeans",
        cfg,
        item_ids=[str(i) for i in range(16)],
        texts=[""] * 16,
        train_sequences=[],
        embeddings=embeddings,
    )
    assert token_map.metadata["stats"]["collision_rate_before"] == pytest.approx(0.5)
    assert token_map.metadata["stats"]["n_moved"] == 4
    _assert_bijection(token_map)


def test_rqvae_duplicated_embeddings_always_collide(catalogue, small_config) -> None:
    # Every item has an exact twin, so every item shares its identifier: rate 1.0.
    half = catalogue["embeddings"][:20]
    embeddings = np.concatenate([half, half])
    ids = [str(i) for i in range(40)]
    token_map = build_token_map(
        "rqvae",
        small_config("rqvae"),
        item_ids=ids,
        texts=ids,
        train_sequences=[],
        embeddings=embeddings,
    )
    assert token_map.metadata["stats"]["collision_rate_before"] == 1.0
    assert token_map.metadata["training"]["epochs_run"] == 30
    _assert_bijection(token_map)


def test_cid_uses_training_cooccurrence_only() -> None:
    graph = cooccurrence_graph([np.array([0, 1, 1, 2]), np.array([3])], n_items=5)
    assert graph.toarray().tolist() == [
        [0, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]


def test_cid_separates_disconnected_communities() -> None:
    # two communities of 6 never co-occurring: level 0 must put them in different clusters
    rings = [np.array([0, 1, 2, 3, 4, 5] * 3), np.array([6, 7, 8, 9, 10, 11] * 3)]
    codes = cid_codes(rings, n_items=12, levels=2, codebook_size=2, seed=0)
    assert len(set(codes[:6, 0])) == 1 and len(set(codes[6:, 0])) == 1
    assert codes[0, 0] != codes[6, 0]


@pytest.mark.parametrize(("n_items", "expected_rate"), [(10, 0.0), (20, 0.4)])
def test_cid_cold_items_fill_the_tree_evenly(n_items, expected_rate, small_config) -> None:
    # No co-occurrence at all: items are spread 5/5/5/5 (or 3/3/2/2) over 4 level-0 codes;
    # with 16 identifiers for 20 items, each level-0 group of 5 has exactly one extra pair.
    cfg = small_config("cid", levels=2, codebook_size=4)
    ids = [str(i) for i in range(n_items)]
    token_map = build_token_map("cid", cfg, item_ids=ids, texts=ids, train_sequences=[])
    assert token_map.metadata["stats"]["collision_rate_before"] == pytest.approx(expected_rate)
    _assert_bijection(token_map)


def test_random_fills_an_exactly_sized_code_space_without_collisions(small_config) -> None:
    ids = [str(i) for i in range(27)]
    cfg = small_config("random", levels=3, codebook_size=3)
    token_map = build_token_map("random", cfg, item_ids=ids, texts=ids, train_sequences=[])
    assert token_map.metadata["stats"]["collision_rate_before"] == 0.0
    assert sorted(map(tuple, token_map.codes.tolist())) == [
        (a, b, c) for a in range(3) for b in range(3) for c in range(3)
    ]


def test_random_more_items_than_identifiers_needs_the_extra_level(small_config) -> None:
    ids = [str(i) for i in range(10)]
    token_map = build_token_map(
        "random",
        small_config("random", levels=1, codebook_size=4),
        item_ids=ids,
        texts=ids,
        train_sequences=[],
    )
    assert token_map.metadata["stats"]["extra_level"] and token_map.levels == 2
    _assert_bijection(token_map)


def test_random_codes_in_a_code_space_beyond_int64() -> None:
    codes = random_codes(50, levels=8, codebook_size=1024, seed=0)
    assert codes.shape == (50, 8) and len(np.unique(codes, axis=0)) == 50
    assert codes.max() < 1024


def test_embedding_methods_require_embeddings(catalogue, small_config) -> None:
    with pytest.raises(ValueError, match="needs one embedding per item"):
        _build("rqvae", catalogue, small_config("rqvae"), embeddings=None)
    with pytest.raises(ValueError, match="unknown tokenize method"):
        _build("bpe", catalogue, small_config("random"))
