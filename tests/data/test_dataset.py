from pathlib import Path

import numpy as np
import polars as pl
import pytest

from components.config import DataConfig
from components.data import DataError, Dataset, RawData, build_dataset
from components.data.dataset import natural_order

CFG = DataConfig(source="files", max_history=2)


def _raw() -> RawData:
    items = pl.DataFrame(
        {
            "item_id": ["10", "9", "2", "100"],
            "title": ["Ten", "Nine", "Two", "Hundred"],
            "text": ["ten", "nine", "two", "hundred"],
        }
    )
    rows = [  # (user, item, timestamp) in file order
        ("10", "10", 5),
        ("2", "9", 1),
        ("10", "2", 5),  # same time as row 0: file order puts it after
        ("10", "9", 1),
        ("2", "100", 3),
        ("2", "2", 2),
        ("10", "100", 9),
        ("10", "10", 7),  # a repeat
        ("3", "2", 1),  # too short: dropped
        ("2", "10", 4),
    ]
    inter = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "rating": [None] * len(rows),
        },
        schema={
            "user_id": pl.Utf8,
            "item_id": pl.Utf8,
            "timestamp": pl.Int64,
            "rating": pl.Float64,
        },
    )
    return RawData(items, inter, "items.csv", "events.csv")


def _lists(arrays: list[np.ndarray]) -> list[list[int]]:
    return [a.tolist() for a in arrays]


def test_items_are_indexed_in_natural_order() -> None:
    ds = build_dataset(_raw(), CFG)
    assert ds.items.columns == ["item_idx", "item_id", "title", "text"]
    assert ds.item_ids() == ["2", "9", "10", "100"]
    assert ds.items.get_column("item_idx").to_list() == [0, 1, 2, 3]
    assert ds.item_titles() == ["Two", "Nine", "Ten", "Hundred"]
    assert ds.item_texts() == ["two", "nine", "ten", "hundred"]
    assert (ds.n_items, ds.n_users) == (4, 2)


def test_natural_order() -> None:
    def order(ids: list[str]) -> list[str]:
        return [ids[i] for i in natural_order(pl.Series(ids)).to_list()]

    assert order(["10", "9", "007", "7"]) == ["007", "7", "9", "10"]
    assert order(["b10", "a", "b9", "10"]) == ["10", "a", "b10", "b9"]


def test_sequences_are_chronological_with_file_order_ties() -> None:
    ds = build_dataset(_raw(), CFG)
    assert ds.user_ids == ["2", "10"]  # natural order; user "3" has too few interactions
    assert _lists(ds.sequences) == [[1, 0, 3, 2], [1, 2, 0, 2, 3]]
    assert all(s.dtype == np.int64 for s in ds.sequences)


def test_leave_one_out_splits() -> None:
    ds = build_dataset(_raw(), CFG)
    assert _lists(ds.train_sequences()) == [[1, 0], [1, 2, 0]]

    valid = ds.eval_split("valid")
    assert valid.user_ids == ["2", "10"]
    assert valid.targets.tolist() == [3, 2] and valid.targets.dtype == np.int64
    assert _lists(valid.histories) == [[1, 0], [2, 0]]  # most recent max_history=2 training items
    # seen = items before the target, less the target itself: user 10 had consumed item 2
    # before its validation target 2, and a repeat is never masked (a guaranteed miss)
    assert _lists(valid.seen) == [[0, 1], [0, 1]]

    test = ds.eval_split("test")
    assert test.targets.tolist() == [2, 3]
    assert _lists(test.histories) == [[0, 3], [0, 2]]  # includes the validation target
    assert _lists(test.seen) == [[0, 1, 3], [0, 1, 2]]

    with pytest.raises(ValueError, match="split must be"):
        ds.eval_split("train")  # type: ignore[arg-type]


def test_popularity_counts_training_part_only() -> None:
    pop = build_dataset(_raw(), CFG).popularity()
    assert pop.dtype == np.float64
    assert pop.tolist() == [2.0, 2.0, 1.0, 0.0]


def test_write_read_roundtrip(tmp_path: Path) -> None:
    ds = build_dataset(_raw(), CFG)
    ds.write(tmp_path / "processed")
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == [
        "interactions.parquet",
        "items.parquet",
        "sequences.parquet",
    ]
    back = Dataset.read(tmp_path / "processed")
    assert back.items.equals(ds.items)
    assert back.user_ids == ds.user_ids and back.max_history == 2
    assert _lists(back.sequences) == _lists(ds.sequences)
    assert all(s.dtype == np.int64 for s in back.sequences)

    sequences = pl.read_parquet(tmp_path / "processed" / "sequences.parquet")
    assert sequences.schema == pl.Schema({"user_id": pl.Utf8, "items": pl.List(pl.Int32)})
    inter = pl.read_parquet(tmp_path / "processed" / "interactions.parquet")
    assert inter.filter(pl.col("user_id") == "2").rows() == [
        ("2", 0, 1, "9", "train"),
        ("2", 1, 0, "2", "train"),
        ("2", 2, 3, "100", "valid"),
        ("2", 3, 2, "10", "test"),
    ]
    assert inter.height == 9


def test_unknown_item_is_a_data_error() -> None:
    raw = _raw()
    inter = raw.interactions.with_columns(
        pl.when(pl.int_range(pl.len()) == 6)
        .then(pl.lit("404"))
        .otherwise(pl.col("item_id"))
        .alias("item_id")
    )
    with pytest.raises(DataError) as err:
        build_dataset(RawData(raw.items, inter, raw.items_file, raw.interactions_file), CFG)
    assert str(err.value) == (
        "events.csv: column 'item_id': item ids not found in items.csv (1 rows), e.g. rows [6]: values ['404']"
    )


def test_no_user_long_enough_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no user has data.min_sequence_length = 9"):
        build_dataset(_raw(), CFG.model_copy(update={"min_sequence_length": 9}))


def test_dataset_invariants() -> None:
    items = build_dataset(_raw(), CFG).items
    with pytest.raises(ValueError, match="leave-one-out needs 3"):
        Dataset(items=items, user_ids=["u"], sequences=[np.array([0, 1])], max_history=5)
    with pytest.raises(ValueError, match="outside 0..3"):
        Dataset(items=items, user_ids=["u"], sequences=[np.array([0, 1, 4])], max_history=5)
    with pytest.raises(ValueError, match="item_idx must be 0..N-1"):
        Dataset(items=items.reverse(), user_ids=[], sequences=[], max_history=5)
