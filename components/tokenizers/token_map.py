"""Token maps: the bijection item_id <-> identifier (one code per level), stored as Parquet.

An identifier is rendered with level-specific tokens (`<a_12><b_7><c_201>`), so the same
code at two levels is two different tokens and the LM can tell the levels apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from components.io import atomic_write_parquet, read_parquet_metadata

LEVEL_LETTERS = "abcdefgh"
METADATA_KEY = "siit.token_map"
FORMAT_VERSION = 1


def code_token(level: int, code: int) -> str:
    """The vocabulary token for `code` at `level`: level 0 code 12 -> "<a_12>"."""
    return f"<{LEVEL_LETTERS[level]}_{int(code)}>"


@dataclass(frozen=True, eq=False)
class TokenMap:
    """Row i is the item with item_idx i; `codes[i]` is its identifier.

    Only the structure is checked here (shapes, level count): uniqueness and code ranges
    are the job of `validate_token_map`, so that a corrupted map can be loaded and reported.
    """

    item_ids: tuple[str, ...]
    codes: np.ndarray
    codebook_sizes: tuple[int, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = np.array(self.codes, dtype=np.int64, copy=True)
        if codes.ndim != 2:
            raise ValueError(f"codes must be [n_items, levels]; got shape {codes.shape}")
        if codes.shape[0] != len(self.item_ids):
            raise ValueError(f"{codes.shape[0]} code rows for {len(self.item_ids)} item ids")
        if codes.shape[1] != len(self.codebook_sizes):
            raise ValueError(
                f"codes have {codes.shape[1]} levels but {len(self.codebook_sizes)} codebook sizes"
            )
        if not 1 <= codes.shape[1] <= len(LEVEL_LETTERS):
            raise ValueError(f"levels must be in [1, {len(LEVEL_LETTERS)}]; got {codes.shape[1]}")
        codes.setflags(write=False)
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "item_ids", tuple(str(i) for i in self.item_ids))
        object.__setattr__(self, "codebook_sizes", tuple(int(s) for s in self.codebook_sizes))
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    def identifier(self, item_idx: int) -> str:
        """The token string of one item, e.g. "<a_12><b_7><c_201>"."""
        return "".join(code_token(level, code) for level, code in enumerate(self.codes[item_idx]))

    def identifiers(self) -> list[str]:
        """Every item's identifier, in item_idx order."""
        return [self.identifier(i) for i in range(self.n_items)]

    def all_tokens(self) -> list[str]:
        """Every possible code token, level by level: the tokens to add to the LM vocabulary."""
        return [
            code_token(level, code)
            for level, size in enumerate(self.codebook_sizes)
            for code in range(size)
        ]

    def with_codes(
        self, codes: np.ndarray, *, codebook_sizes: tuple[int, ...] | None = None, **metadata: Any
    ) -> TokenMap:
        """A new map for the same items (e.g. the next SIIT round), metadata updated."""
        return TokenMap(
            item_ids=self.item_ids,
            codes=codes,
            codebook_sizes=self.codebook_sizes if codebook_sizes is None else codebook_sizes,
            metadata={**self.metadata, **metadata},
        )

    def save(self, path: str | Path) -> None:
        """Atomic Parquet write: item_id, item_idx, c0..c{L-1}; metadata as JSON in the footer."""
        frame = pl.DataFrame(
            {
                "item_id": pl.Series(self.item_ids, dtype=pl.String),
                "item_idx": np.arange(self.n_items, dtype=np.int64),
                **{f"c{level}": self.codes[:, level] for level in range(self.levels)},
            }
        )
        header = {
            "format_version": FORMAT_VERSION,
            "codebook_sizes": list(self.codebook_sizes),
            "metadata": self.metadata,
        }
        atomic_write_parquet(frame, path, {METADATA_KEY: json.dumps(header, default=_jsonable)})

    @classmethod
    def load(cls, path: str | Path) -> TokenMap:
        path = Path(path)
        raw = read_parquet_metadata(path).get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{path}: not a token map (no '{METADATA_KEY}' Parquet metadata)")
        header = json.loads(raw)
        if header.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: token map format {header['format_version']} is newer than this code "
                f"reads ({FORMAT_VERSION})"
            )
        table = pq.read_table(path)
        order = np.argsort(table.column("item_idx").to_numpy(), kind="stable")
        sizes = tuple(header["codebook_sizes"])
        codes = np.stack(
            [table.column(f"c{level}").to_numpy() for level in range(len(sizes))], axis=1
        )
        item_ids = table.column("item_id").to_pylist()
        return cls(
            item_ids=tuple(item_ids[i] for i in order),
            codes=codes[order],
            codebook_sizes=sizes,
            metadata=header["metadata"],
        )


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays in metadata (stats) serialise as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__} in token map metadata")
