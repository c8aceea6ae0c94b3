from __future__ import annotations

import numpy as np
import pytest

from components.tokenizers import TokenMap, TokenMapValidationError, validate_token_map

ITEMS = ["m1", "m2", "m3", "m4"]


def _map(codes: list[list[int]], item_ids: list[str] = ITEMS) -> TokenMap:
    return TokenMap(item_ids=tuple(item_ids), codes=np.array(codes), codebook_sizes=(4, 8))


def test_a_valid_map_passes() -> None:
    validate_token_map(_map([[0, 0], [0, 1], [3, 7], [1, 0]]), ITEMS, "initial.parquet")


def test_out_of_range_codes_name_file_column_and_rows(tmp_path) -> None:
    path = tmp_path / "initial.parquet"
    _map([[0, 0], [0, 1], [3, 8], [1, -1]]).save(path)
    with pytest.raises(TokenMapValidationError) as err:
        validate_token_map(TokenMap.load(path), ITEMS, str(path))
    message = str(err.value)
    assert str(path) in message
    assert "column 'c1'" in message and "expect_column_values_to_be_between [0, 7]" in message
    assert "row 2 (item 'm3': 8)" in message and "row 3 (item 'm4': -1)" in message
    assert "'c0'" not in message


def test_duplicate_identifiers_and_coverage_failures_are_reported() -> None:
    token_map = _map([[0, 0], [0, 0], [1, 1]], item_ids=["m1", "m2", "m9"])
    with pytest.raises(TokenMapValidationError) as err:
        validate_token_map(token_map, ITEMS, "round_1.parquet")
    message = str(err.value)
    assert message.startswith("round_1.parquet: token map failed validation")
    assert "column 'identifier': expect_column_values_to_be_unique" in message
    assert "rows, e.g. row 0 (item 'm1': '<a_0><b_0>')" in message
    assert "column 'item_id': expect_column_values_to_not_be_null" in message  # m4 missing
    assert "row 3 (item 'm4'" in message
    assert "column 'item_id vs dataset_item_id'" in message and "row 2 (item 'm9'" in message
