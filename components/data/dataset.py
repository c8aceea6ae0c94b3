"""The processed dataset: an indexed catalogue and per-user chronological sequences.

Evaluation is leave-one-out per user (DESIGN.md section 4): the last item is the test
target, the second-to-last the validation target, the rest is training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from components.config import DataConfig
from components.data.sources import EXAMPLES, DataError, RawData
from components.io import atomic_dir, atomic_write_parquet, read_parquet_metadata

ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"
SEQUENCES_FILE = "sequences.parquet"
MIN_SEQUENCE = 3  # one training item, one validation target, one test target
_HELD_OUT = {"valid": 2, "test": 1}  # the target's distance from the end of the sequence


@dataclass(frozen=True)
class EvalSplit:
    """One leave-one-out split; row i belongs to user_ids[i]. All item indices are int64.

    histories: the most recent max_history items before the target, oldest first;
    seen: every distinct item the user had before the target, except the target itself
    (excluded from rankings: a repeat consumption of the target stays rankable, the other
    items already seen do not).
    """

    user_ids: list[str]
    histories: list[np.ndarray]
    targets: np.ndarray
    seen: list[np.ndarray]


def natural_order(ids: pl.Series) -> pl.Series:
    """Sort permutation of string ids: numerically when all are integers, else lexicographic."""
    frame = pl.DataFrame({"s": ids}).with_row_index("i")
    if ids.str.contains(r"^\d+$").all():
        numbers = ids.cast(pl.Int64, strict=False)  # null when beyond Int64
        if numbers.null_count() == 0:
            return frame.with_columns(n=numbers).sort(["n", "s"]).get_column("i")
    return frame.sort("s").get_column("i")


def _split_lists(column: pl.Series) -> list[np.ndarray]:
    """A list column as one int64 array per row."""
    if column.len() == 0:
        return []
    lengths = column.list.len().to_numpy()
    flat = column.explode().to_numpy().astype(np.int64)
    return np.split(flat, np.cumsum(lengths)[:-1])


@dataclass(frozen=True)
class Dataset:
    """Catalogue (item_idx 0..N-1 in natural item_id order) + one chronological sequence per user."""

    items: pl.DataFrame  # item_idx, item_id, title, text
    user_ids: list[str]
    sequences: list[np.ndarray]  # int64 item_idx, oldest first
    max_history: int  # history length in evaluation splits

    def __post_init__(self) -> None:
        idx = self.items.get_column("item_idx").to_numpy()
        if not np.array_equal(idx, np.arange(len(idx))):
            raise ValueError("items.item_idx must be 0..N-1 in row order")
        if len(self.user_ids) != len(self.sequences):
            raise ValueError(f"{len(self.user_ids)} user ids but {len(self.sequences)} sequences")
        for user, seq in zip(self.user_ids, self.sequences, strict=True):
            if len(seq) < MIN_SEQUENCE:
                raise ValueError(
                    f"user {user!r}: {len(seq)} items, leave-one-out needs {MIN_SEQUENCE}"
                )
            if seq.min() < 0 or seq.max() >= len(idx):
                raise ValueError(f"user {user!r}: item_idx outside 0..{len(idx) - 1}")

    @property
    def n_items(self) -> int:
        return self.items.height

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def item_ids(self) -> list[str]:
        return self.items.get_column("item_id").to_list()

    def item_titles(self) -> list[str]:
        return self.items.get_column("title").to_list()

    def item_texts(self) -> list[str]:
        return self.items.get_column("text").to_list()

    def train_sequences(self, hold_out_last: int = 0) -> list[np.ndarray]:
        """Each user's sequence without its validation and test targets; with `hold_out_last`
        (train.hold_out_last: true or a number n) without its last training item (its last n)
        too, which then only validation's history holds (a user may be left with no item)."""
        if hold_out_last < 0:
            raise ValueError(f"hold_out_last must be 0 or more, not {hold_out_last}")
        cut = 2 + int(hold_out_last)
        return [seq[: max(len(seq) - cut, 0)] for seq in self.sequences]

    def eval_split(self, split: Literal["valid", "test"]) -> EvalSplit:
        """Targets with their histories: valid sees the training part, test everything before the last item."""
        if split not in _HELD_OUT:
            raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
        return self.target_split(_HELD_OUT[split])

    def target_split(self, target_at: int, history_end: int | None = None) -> EvalSplit:
        """Each user's item `target_at` positions from the end (1 = the last) as the target;
        history: the most recent max_history items before position len - `history_end`
        (default `target_at`: the items right before the target); seen: every item before the
        target except the target itself. Every sequence must be longer than `target_at - 1`."""
        history_end = target_at if history_end is None else history_end
        targets = np.array([seq[len(seq) - target_at] for seq in self.sequences], dtype=np.int64)
        return EvalSplit(
            user_ids=list(self.user_ids),
            histories=[
                seq[: len(seq) - history_end][-self.max_history :] for seq in self.sequences
            ],
            targets=targets,
            seen=[
                np.setdiff1d(seq[: len(seq) - target_at], [t])
                for seq, t in zip(self.sequences, targets, strict=True)
            ],
        )

    def popularity(self) -> np.ndarray:
        """Interaction counts per item_idx over the training sequences (float64)."""
        train = self.train_sequences()
        flat = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=self.n_items).astype(np.float64)

    def interactions(self) -> pl.DataFrame:
        """Long view of the sequences: user_id, position, item_idx, item_id, split (train/valid/test)."""
        lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        flat = np.concatenate(self.sequences) if self.sequences else np.zeros(0, dtype=np.int64)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        position = np.arange(len(flat)) - starts
        from_end = np.repeat(lengths, lengths) - position
        split = np.where(from_end == 1, "test", np.where(from_end == 2, "valid", "train"))
        return pl.DataFrame(
            {
                "user_id": np.repeat(np.asarray(self.user_ids, dtype=object), lengths).tolist(),
                "position": position.astype(np.int32),
                "item_idx": flat,
                "item_id": self.items.get_column("item_id").gather(flat),
                "split": split.tolist(),
            },
            schema={
                "user_id": pl.Utf8,
                "position": pl.Int32,
                "item_idx": pl.Int64,
                "item_id": pl.Utf8,
                "split": pl.Utf8,
            },
        )

    def write(self, out_dir: Path) -> None:
        """Write items, interactions and sequences Parquet files; `out_dir` is replaced atomically."""
        sequences = pl.DataFrame(
            {"user_id": self.user_ids, "items": [s.astype(np.int32) for s in self.sequences]},
            schema={"user_id": pl.Utf8, "items": pl.List(pl.Int32)},
        )
        meta = {"max_history": str(self.max_history), "n_items": str(self.n_items)}
        with atomic_dir(out_dir) as tmp:
            atomic_write_parquet(self.items, tmp / ITEMS_FILE, metadata=meta)
            atomic_write_parquet(self.interactions(), tmp / INTERACTIONS_FILE)
            atomic_write_parquet(sequences, tmp / SEQUENCES_FILE, metadata=meta)

    @classmethod
    def read(cls, out_dir: Path) -> Dataset:
        """Read what `write` wrote."""
        out_dir = Path(out_dir)
        sequences = pl.read_parquet(out_dir / SEQUENCES_FILE)
        meta = read_parquet_metadata(out_dir / SEQUENCES_FILE)
        return cls(
            items=pl.read_parquet(out_dir / ITEMS_FILE),
            user_ids=sequences.get_column("user_id").to_list(),
            sequences=_split_lists(sequences.get_column("items")),
            max_history=int(meta["max_history"]),
        )


def _fail_rows(df: pl.DataFrame, mask: pl.Series, file: str, column: str, what: str) -> None:
    """Raise a DataError quoting the rows of `df` (file rows) where `mask` holds."""
    rows = mask.arg_true()
    if len(rows):
        head = rows.head(EXAMPLES).to_list()
        values = df.get_column(column).gather(head).to_list()
        raise DataError(
            f"{file}: column '{column}': {what} ({len(rows)} rows), e.g. rows {head}: values {values}"
        )


def build_dataset(raw: RawData, cfg: DataConfig) -> Dataset:
    """Index the catalogue and build chronological per-user sequences from validated raw data.

    Ties in timestamp keep file order. Users with fewer than `cfg.min_sequence_length`
    interactions are dropped (validation reports them first).
    """
    items, inter = raw.items, raw.interactions
    _fail_rows(
        items,
        items.get_column("item_id").is_duplicated(),
        raw.items_file,
        "item_id",
        "duplicate item ids",
    )
    for column in ("user_id", "item_id", "timestamp"):
        _fail_rows(
            inter, inter.get_column(column).is_null(), raw.interactions_file, column, "null values"
        )

    items = (
        items.select("item_id", "title", "text")[natural_order(items.get_column("item_id"))]
        .with_row_index("item_idx")
        .with_columns(pl.col("item_idx").cast(pl.Int64))
    )
    indexed = inter.with_row_index("row").join(
        items.select("item_id", "item_idx"), on="item_id", how="left", maintain_order="left"
    )
    _fail_rows(
        indexed,
        indexed.get_column("item_idx").is_null(),
        raw.interactions_file,
        "item_id",
        f"item ids not found in {raw.items_file}",
    )

    users = indexed.get_column("user_id").unique(maintain_order=True)
    user_rank = pl.DataFrame({"user_id": users[natural_order(users)]}).with_row_index("user_rank")
    grouped = (
        indexed.join(user_rank, on="user_id")
        .sort(["user_rank", "timestamp", "row"])
        .group_by("user_rank", maintain_order=True)
        .agg(pl.col("user_id").first(), pl.col("item_idx"))
        .filter(pl.col("item_idx").list.len() >= cfg.min_sequence_length)
    )
    if grouped.height == 0:
        raise DataError(
            f"{raw.interactions_file}: no user has data.min_sequence_length = "
            f"{cfg.min_sequence_length} interactions"
        )
    return Dataset(
        items=items,
        user_ids=grouped.get_column("user_id").to_list(),
        sequences=_split_lists(grouped.get_column("item_idx")),
        max_history=cfg.max_history,
    )
