"""Great Expectations suite for token maps: nothing downstream trusts a map that fails it.

The map is checked against the dataset's item list, row by row (row i = item_idx i), so a
map built for another catalogue, a missing or extra item, a misaligned row, a duplicate
identifier or an out-of-range code all fail with the rows that show it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from components.tokenizers.token_map import TokenMap

EXAMPLES = 5


class TokenMapValidationError(ValueError):
    """A token map that is not a bijection onto the dataset's items, or has invalid codes."""


def _frame(token_map: TokenMap, item_ids: list[str]) -> pd.DataFrame:
    """Map rows side by side with the dataset's items; the shorter side is padded with nulls."""
    rows = max(token_map.n_items, len(item_ids))
    pad = rows - token_map.n_items
    frame = pd.DataFrame(
        {
            "item_id": pd.Series([*token_map.item_ids, *[None] * pad], dtype=object),
            "dataset_item_id": pd.Series(
                [*item_ids, *[None] * (rows - len(item_ids))], dtype=object
            ),
            "identifier": pd.Series([*token_map.identifiers(), *[None] * pad], dtype=object),
        }
    )
    for level in range(token_map.levels):
        frame[f"c{level}"] = pd.Series([*token_map.codes[:, level], *[None] * pad], dtype="Int64")
    return frame


def _suite(token_map: TokenMap) -> Any:
    import great_expectations as gx

    suite = gx.ExpectationSuite(name="token_map")
    expect = gx.expectations
    suite.add_expectation(expect.ExpectColumnValuesToNotBeNull(column="item_id"))
    suite.add_expectation(expect.ExpectColumnValuesToNotBeNull(column="dataset_item_id"))
    suite.add_expectation(expect.ExpectColumnValuesToBeUnique(column="item_id"))
    suite.add_expectation(
        expect.ExpectColumnPairValuesToBeEqual(column_A="item_id", column_B="dataset_item_id")
    )
    suite.add_expectation(expect.ExpectColumnValuesToBeUnique(column="identifier"))
    for level, size in enumerate(token_map.codebook_sizes):
        suite.add_expectation(expect.ExpectColumnValuesToNotBeNull(column=f"c{level}"))
        suite.add_expectation(
            expect.ExpectColumnValuesToBeBetween(
                column=f"c{level}", min_value=0, max_value=size - 1
            )
        )
    return suite


def _plain(value: Any) -> Any:
    """numpy scalars print as `np.int64(8)`; a message should read `8`."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def _describe(result: Any, frame: pd.DataFrame) -> str:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column") or f"{kwargs['column_A']} vs {kwargs['column_B']}"
    bounds = f" [{kwargs['min_value']:g}, {kwargs['max_value']:g}]" if "min_value" in kwargs else ""
    rows = result.result.get("partial_unexpected_index_list", [])[:EXAMPLES]
    values = result.result.get("partial_unexpected_list", [])[:EXAMPLES]
    examples = ", ".join(
        f"row {row} (item {frame.at[row, 'item_id'] or frame.at[row, 'dataset_item_id']!r}: "
        f"{_plain(value)!r})"
        for row, value in zip(rows, values, strict=False)
    )
    count = result.result.get("unexpected_count", "?")
    return f"  - column '{column}': {config.type}{bounds} failed on {count} rows, e.g. {examples}"


def passes_suite(token_map: TokenMap, item_ids: list[str]) -> bool:
    """Whether the map meets every expectation of `_suite` against `item_ids`, computed
    directly: row i is dataset item i, item ids unique, identifiers (code rows) unique, every
    code in its codebook (a TokenMap's codes are integers, never null). True exactly when
    Great Expectations' run of the suite succeeds (tests/tokenizers/test_tokenizer_validation.py
    holds the two to the same verdict on valid and broken maps)."""
    codes, ids = token_map.codes, list(token_map.item_ids)
    sizes = np.asarray(token_map.codebook_sizes, dtype=np.int64)
    return (
        ids == list(item_ids)  # same length, row by row (a map's ids are strings, never null)
        and len(set(ids)) == len(ids)
        and bool(((codes >= 0) & (codes < sizes)).all())
        and len(np.unique(codes, axis=0)) == len(codes)
    )


def validate_token_map(token_map: TokenMap, item_ids: list[str], token_map_file: str) -> None:
    """Raise TokenMapValidationError naming the file, the failing columns and example rows.

    A map that passes the suite's checks computed directly (`passes_suite`) returns at once:
    Great Expectations, whose import alone costs seconds in every stage that reads a map, runs
    the suite only when a check fails, and its results make the message."""
    item_ids = list(item_ids)
    if passes_suite(token_map, item_ids):
        return
    import great_expectations as gx  # imported here: it costs seconds, valid maps never need it
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = _frame(token_map, item_ids)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("token_map")
        .add_dataframe_asset("token_map")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    outcome = batch.validate(
        _suite(token_map),
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES},
    )
    if outcome.success:
        return
    failures = [_describe(r, frame) for r in outcome.results if not r.success]
    raise TokenMapValidationError(
        f"{token_map_file}: token map failed validation against {len(item_ids)} dataset items\n"
        + "\n".join(failures)
    )
