from __future__ import annotations

import numpy as np
import pytest

from components.io import read_parquet_metadata
from components.tokenizers import TokenMap, code_token
from components.tokenizers.token_map import METADATA_KEY


def _map() -> TokenMap:
    return TokenMap(
        item_ids=("x", "y", "z"),
        codes=np.array([[12, 7, 201], [0, 0, 0], [3, 1, 5]]),
        codebook_sizes=(16, 8, 256),
        metadata={"method": "random", "round": 0, "stats": {"entropy_bits": np.array([1.5])}},
    )


def test_tokens_and_identifiers_are_level_specific() -> None:
    token_map = _map()
    assert code_token(0, 12) == "<a_12>"
    assert token_map.identifier(0) == "<a_12><b_7><c_201>"
    assert token_map.levels == 3 and token_map.n_items == 3
    tokens = token_map.all_tokens()
    assert len(tokens) == 16 + 8 + 256 == len(set(tokens))
    assert tokens[0] == "<a_0>" and tokens[16] == "<b_0>" and tokens[-1] == "<c_255>"


def test_codes_are_read_only_int64() -> None:
    token_map = _map()
    assert token_map.codes.dtype == np.int64
    with pytest.raises(ValueError):
        token_map.codes[0, 0] = 1


def test_structure_is_checked() -> None:
    with pytest.raises(ValueError, match="code rows"):
        TokenMap(item_ids=("x",), codes=np.zeros((2, 1)), codebook_sizes=(4,))
    with pytest.raises(ValueError, match="codebook sizes"):
        TokenMap(item_ids=("x",), codes=np.zeros((1, 2)), codebook_sizes=(4,))


def test_save_load_round_trip_keeps_codes_and_metadata(tmp_path) -> None:
    token_map = _map()
    path = tmp_path / "maps" / "initial.parquet"
    token_map.save(path)
    loaded = TokenMap.load(path)
    assert loaded.item_ids == token_map.item_ids
    np.testing.assert_array_equal(loaded.codes, token_map.codes)
    assert loaded.codebook_sizes == token_map.codebook_sizes
    assert loaded.metadata == {"method": "random", "round": 0, "stats": {"entropy_bits": [1.5]}}
    assert METADATA_KEY in read_parquet_metadata(path)
    assert [p.name for p in path.parent.iterdir()] == ["initial.parquet"]  # no temp files left


def test_load_rejects_a_parquet_that_is_not_a_token_map(tmp_path) -> None:
    import polars as pl

    path = tmp_path / "other.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(path)
    with pytest.raises(ValueError, match="not a token map"):
        TokenMap.load(path)


def test_with_codes_is_a_new_map_with_merged_metadata() -> None:
    token_map = _map()
    refined = token_map.with_codes(
        np.array([[1, 1, 1], [0, 0, 0], [3, 1, 5]]), round=1, churn=1 / 3
    )
    assert refined.metadata["round"] == 1 and refined.metadata["method"] == "random"
    assert refined.item_ids == token_map.item_ids and token_map.codes[0, 0] == 12
    extended = token_map.with_codes(np.zeros((3, 4)), codebook_sizes=(16, 8, 256, 2))
    assert extended.levels == 4
