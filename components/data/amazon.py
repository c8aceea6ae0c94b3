"""Amazon-reviews source (McAuley 2014 / 2018 dumps): 5-core reviews + item metadata.

Both files are JSON lines, optionally gzipped. The 2014 metadata lines are Python dict
literals rather than strict JSON, so each line is read as JSON first, then as a literal.
The catalogue is the reviewed items only (a category's metadata lists many more).
"""

from __future__ import annotations

import ast
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl

from components.config import AmazonSource
from components.data.sources import (
    INTERACTION_SCHEMA,
    ITEM_SCHEMA,
    DataError,
    RawData,
    as_epoch_seconds,
    as_float,
    item_text,
    shown_values,
)


def _open_text(path: Path) -> IO[str]:
    with path.open("rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig")


def iter_records(path: Path, shown: str) -> Iterator[dict[str, Any]]:
    """One dict per non-blank line: strict JSON, or a Python dict literal (2014 metadata).

    A truncated gzip stream, bytes that are not UTF-8 or a file without any record is a
    DataError naming the file (and the line).
    """
    number, count = 0, 0
    try:
        with _open_text(path) as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    try:
                        record = ast.literal_eval(line.strip())
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        record = None
                if not isinstance(record, dict):
                    raise DataError(
                        f"{shown}: line {number}: neither a JSON object nor a Python dict: "
                        f"{shown_values([line.strip()])[0]!r}"
                    )
                count += 1
                yield record
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{shown}: corrupt or truncated gzip file after line {number} ({exc}); "
            f"compress it again or give the uncompressed file"
        ) from exc
    except UnicodeDecodeError:
        raise DataError(
            f"{shown}: line {number + 1} is not UTF-8: save the file as UTF-8"
        ) from None
    if count == 0:
        raise DataError(f"{shown}: the file is empty (no records)")


def _text_or_none(value: Any) -> str | None:
    """A field as stripped text; missing or blank -> None."""
    text = "" if value is None else str(value).strip()
    return text or None


def _flatten(value: Any) -> list[str]:
    """Category lists, flat (2014 nests them: [["Beauty", "Makeup"], ["Beauty"]]), unique, in order."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(dict.fromkeys(v for item in value for v in _flatten(item)))


def _description(value: Any) -> str | None:
    """2014 descriptions are strings, 2018 ones lists of paragraphs."""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return _text_or_none(value)


def load_reviews(path: Path, shown: str) -> pl.DataFrame:
    """Reviews onto the interaction contract: reviewerID, asin, unixReviewTime, overall."""
    fields: dict[str, list[str | None]] = {
        "reviewerID": [],
        "asin": [],
        "unixReviewTime": [],
        "overall": [],
    }
    for record in iter_records(path, shown):
        for field, values in fields.items():
            values.append(_text_or_none(record.get(field)))
    columns = {field: pl.Series(field, values, dtype=pl.Utf8) for field, values in fields.items()}
    return pl.DataFrame(
        {
            "user_id": columns["reviewerID"],
            "item_id": columns["asin"],
            "timestamp": as_epoch_seconds(columns["unixReviewTime"], shown),
            "rating": as_float(columns["overall"], shown),
        },
        schema=INTERACTION_SCHEMA,
    )


def load_metadata(path: Path, shown: str, asins: set[str]) -> pl.DataFrame:
    """Items for the reviewed `asins` (first record of each), in file order.

    Text = title | brand | categories | description, whichever exist; an item without any
    falls back to its title, and an untitled item to its asin.
    """
    rows: dict[str, dict[str, Any]] = {}
    for record in iter_records(path, shown):
        asin = _text_or_none(record.get("asin"))
        if asin in asins and asin not in rows:  # 2018 metadata repeats some items
            rows[asin] = {
                "item_id": asin,
                "title": _text_or_none(record.get("title")),
                "brand": _text_or_none(record.get("brand")),
                "categories": _flatten(record.get("categories", record.get("category"))),
                "description": _description(record.get("description")),
            }
    schema = {
        "item_id": pl.Utf8,
        "title": pl.Utf8,
        "brand": pl.Utf8,
        "categories": pl.List(pl.Utf8),
        "description": pl.Utf8,
    }
    frame = pl.DataFrame(list(rows.values()), schema=schema)
    frame = frame.with_columns(
        text=item_text(frame, ["title", "brand", "categories", "description"]),
        title=pl.coalesce("title", "item_id"),
    )
    return frame.select("item_id", "title", text=pl.coalesce("text", "title")).cast(ITEM_SCHEMA)


def load_amazon(src: AmazonSource, raw_dir: Path) -> RawData:
    """Load the reviews and metadata files `fetch_raw` copied into `raw_dir`."""
    interactions = load_reviews(raw_dir / Path(src.reviews).name, src.reviews)
    asins = set(interactions.get_column("item_id").drop_nulls().to_list())
    items = load_metadata(raw_dir / Path(src.metadata).name, src.metadata, asins)
    return RawData(
        items=items,
        interactions=interactions,
        items_file=src.metadata,
        interactions_file=src.reviews,
    )
