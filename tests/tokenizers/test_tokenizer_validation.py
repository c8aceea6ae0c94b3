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


def _gx_verdict(token_map: TokenMap, item_ids: list[str], monkeypatch) -> bool:
    """Great Expectations' own run of the suite (the direct checks switched off)."""
    import components.tokenizers.validation as validation

    with monkeypatch.context() as patch:
        patch.setattr(validation, "passes_suite", lambda *_: False)
        try:
            validate_token_map(token_map, item_ids, "map.parquet")
        except TokenMapValidationError:
            return False
    return True


def _broken(kind: str, rng: np.random.Generator) -> tuple[TokenMap, list[str]]:
    """A random map of 6-12 items over 2 levels of (3, 5) codes, then one kind of damage."""
    n = int(rng.integers(6, 13))
    flat = rng.choice(15, n, replace=False)
    codes = np.stack([flat // 5, flat % 5], axis=1)
    ids = [f"i{k}" for k in rng.permutation(40)[:n]]
    dataset = list(ids)
    r, other = (int(x) for x in rng.choice(n, 2, replace=False))
    if kind == "duplicate identifier":
        codes[r] = codes[other]
    elif kind == "code too large":
        codes[r, int(rng.integers(2))] = (3, 5)[int(rng.integers(2))]
    elif kind == "negative code":
        codes[r, 1] = -1
    elif kind == "rows swapped":
        ids[r], ids[other] = ids[other], ids[r]
    elif kind == "foreign item":
        ids[r] = "stranger"
    elif kind == "duplicate item":
        ids[r] = ids[other]
        dataset[r] = dataset[other]
    elif kind == "missing item":
        dataset = dataset + ["late"]
    elif kind == "extra item":
        dataset = dataset[:-1]
    token_map = TokenMap(item_ids=tuple(ids), codes=codes, codebook_sizes=(3, 5))
    return token_map, dataset


KINDS = [
    "valid",
    "duplicate identifier",
    "code too large",
    "negative code",
    "rows swapped",
    "foreign item",
    "duplicate item",
    "missing item",
    "extra item",
]


@pytest.mark.parametrize("kind", KINDS)
def test_the_direct_checks_and_great_expectations_give_the_same_verdict(
    kind: str, monkeypatch
) -> None:
    from components.tokenizers.validation import passes_suite

    rng = np.random.default_rng(KINDS.index(kind))
    for _ in range(2):
        token_map, dataset = _broken(kind, rng)
        direct = passes_suite(token_map, dataset)
        assert direct is (kind == "valid")
        assert _gx_verdict(token_map, dataset, monkeypatch) is direct
        if not direct:  # and the message is still Great Expectations'
            with pytest.raises(TokenMapValidationError, match="token map failed validation"):
                validate_token_map(token_map, dataset, "map.parquet")
