import json
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from components.config import DataConfig, FilesSource
from components.data import (
    DataError,
    DataValidationError,
    RawData,
    fetch_raw,
    load_raw,
    validate_raw,
)

CFG = DataConfig(source="files")
INTER_SCHEMA = {"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, "rating": pl.Float64}


def _clean() -> RawData:
    items = pl.DataFrame(
        {"item_id": ["a", "b", "c"], "title": ["A", "B", "C"], "text": ["A x", "B y", "C z"]}
    )
    inter = pl.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", "u2"],
            "item_id": ["a", "b", "c", "c", "b", "a"],
            "timestamp": [10, 20, 30, 10, 10, 15],
            "rating": [5.0, None, 3.0, 1.0, 2.0, 4.0],
        },
        schema=INTER_SCHEMA,
    )
    return RawData(items, inter, "items.csv", "events.csv")


def _set(frame: str, column: str, row: int, value: object) -> Callable[[RawData], RawData]:
    def corrupt(raw: RawData) -> RawData:
        df = getattr(raw, frame)
        values = df.get_column(column).to_list()
        values[row] = value
        df = df.with_columns(pl.Series(column, values, dtype=df.schema[column]))
        return RawData(**{**raw.__dict__, frame: df})

    return corrupt


def _drop_rows(rows: list[int]) -> Callable[[RawData], RawData]:
    def corrupt(raw: RawData) -> RawData:
        keep = [i for i in range(raw.interactions.height) if i not in rows]
        return RawData(**{**raw.__dict__, "interactions": raw.interactions[keep]})

    return corrupt


def test_clean_data_passes_with_json_report() -> None:
    report = validate_raw(_clean(), CFG)
    assert report["success"] is True and report["failures"] == []
    assert report["n_items"] == 3 and report["n_interactions"] == 6 and report["n_users"] == 2
    assert all(e["success"] for e in report["expectations"])
    kinds = {e["expectation"] for e in report["expectations"]}
    assert {
        "expect_column_to_exist",
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
    } <= kinds
    json.dumps(report)


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (
            _set("interactions", "user_id", 4, None),
            "events.csv: column 'user_id': null values (1 rows), e.g. rows [4]",
        ),
        (
            _set("items", "item_id", 1, None),
            # also breaks the reference from events.csv rows 1 and 4 to item 'b'
            "items.csv: column 'item_id': null values (1 rows), e.g. rows [1]",
        ),
        (
            _set("items", "item_id", 2, "a"),
            "items.csv: column 'item_id': duplicate item ids (2 rows), e.g. rows [0, 2]: values ['a', 'a']",
        ),
        (
            _set("items", "text", 0, None),
            "items.csv: column 'text': null values (1 rows), e.g. rows [0]",
        ),
        (
            _set("interactions", "item_id", 3, "zz"),
            "events.csv: column 'item_id': item ids not found in items.csv (1 rows), e.g. rows [3]: values ['zz']",
        ),
        (
            _set("interactions", "timestamp", 5, -1),
            "events.csv: column 'timestamp': timestamps negative or later than now + 1 day",
        ),
        (
            _drop_rows([4]),
            "events.csv: column 'user_id': users with fewer than 3 interactions "
            "(data.min_sequence_length) (2 rows), e.g. rows [3, 4]: values ['u2', 'u2']",
        ),
    ],
    ids=[
        "null-user",
        "null-item-id",
        "duplicate-item",
        "null-text",
        "unknown-item",
        "negative-ts",
        "short-user",
    ],
)
def test_each_corruption_is_reported(corrupt: Callable[[RawData], RawData], expected: str) -> None:
    with pytest.raises(DataValidationError) as err:
        validate_raw(corrupt(_clean()), CFG)
    assert any(line.startswith(expected) for line in err.value.failures), err.value.failures
    assert expected.split(" (")[0] in str(err.value)
    assert err.value.report["success"] is False
    assert isinstance(err.value, DataError)


def test_timestamps_in_the_future_and_negative_are_listed_together() -> None:
    future = int(time.time()) + 3 * 86_400
    raw = _set("interactions", "timestamp", 2, future)(
        _set("interactions", "timestamp", 0, -5)(_clean())
    )
    with pytest.raises(DataValidationError) as err:
        validate_raw(raw, CFG)
    (line,) = err.value.failures
    assert line.startswith(
        "events.csv: column 'timestamp': timestamps negative or later than now + 1 day ("
    )
    assert line.endswith(f"(2 rows), e.g. rows [0, 2]: values [-5, {future}]")


def test_schema_problems_are_reported() -> None:
    clean = _clean()
    raw = RawData(
        clean.items.drop("text"),
        clean.interactions.with_columns(pl.col("timestamp").cast(pl.Utf8)),
        "items.csv",
        "events.csv",
    )
    with pytest.raises(DataValidationError) as err:
        validate_raw(raw, CFG)
    message = str(err.value)
    assert "items.csv: column 'text': missing (available columns: ['item_id', 'title'])" in message
    assert "events.csv: column 'timestamp': expected type int64, found str" in message
    assert "events.csv: column 'timestamp': timestamps negative" in message
    assert "the check could not run" in message  # a range check on strings


def test_min_sequence_length_follows_config() -> None:
    with pytest.raises(DataValidationError, match="users with fewer than 4 interactions"):
        validate_raw(_clean(), CFG.model_copy(update={"min_sequence_length": 4}))


def test_rows_are_file_rows_end_to_end(tmp_path: Path) -> None:
    """From a user's CSV through load_raw: the row numbers point at the file's data rows."""
    events = tmp_path / "events.csv"
    events.write_text(
        "user_id,item_id,timestamp\n"
        + "".join(f"u1,{i},{t}\n" for i, t in [("a", 1), ("b", 2), ("c", 3)])
        + "u2,a,1\n,b,2\nu2,nope,3\nu2,c,4\n"
    )
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\na,A\nb,B\nc,C\n")
    cfg = DataConfig(source="files", files=FilesSource(interactions=str(events), items=str(items)))
    fetch_raw(cfg, tmp_path / "raw")
    with pytest.raises(DataValidationError) as err:
        validate_raw(load_raw(cfg, tmp_path / "raw"), cfg)
    assert err.value.failures == [
        f"{events}: column 'user_id': null values (1 rows), e.g. rows [4]",
        f"{events}: column 'item_id': item ids not found in {items} (1 rows), e.g. rows [5]: values ['nope']",
    ]
