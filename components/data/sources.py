"""Raw sources: materialise them under `raw_dir` and load them onto the data contract.

Every source ends up as a `RawData`: an items table (item_id, title, text) and an
interactions table (user_id, item_id, timestamp, rating) whose rows are in file order, so
that a row number in an error message is the 0-based data row in the named file.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from components.config import ColumnNames, DataConfig, FilesSource
from components.io import atomic_dir

ITEM_SCHEMA = {"item_id": pl.Utf8, "title": pl.Utf8, "text": pl.Utf8}
INTERACTION_SCHEMA = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "timestamp": pl.Int64,
    "rating": pl.Float64,
}
EXAMPLES = 5  # offending rows quoted in an error message

_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


class DataError(ValueError):
    """Raw data that cannot be read or does not fit the data contract."""


@dataclass(frozen=True)
class RawData:
    """Raw tables on the data contract, rows in file order.

    items: item_id, title, text (Utf8); interactions: user_id, item_id (Utf8),
    timestamp (Int64 epoch seconds), rating (Float64, nullable). The file names are the
    ones error messages quote.
    """

    items: pl.DataFrame
    interactions: pl.DataFrame
    items_file: str
    interactions_file: str


def fetch_raw(cfg: DataConfig, raw_dir: Path) -> list[Path]:
    """Materialise the configured source under `raw_dir` (replaced atomically); return its files."""
    # The source modules import DataError/RawData from here, hence the local imports.
    from components.data import movielens, synthetic

    raw_dir = Path(raw_dir)
    with atomic_dir(raw_dir) as tmp:
        if cfg.source == "movielens100k":
            names = movielens.fetch_movielens100k(tmp)
        elif cfg.source == "synthetic":
            names = synthetic.write_synthetic(cfg.synthetic, tmp)
        elif cfg.source == "files":
            names = copy_inputs(
                {
                    "data.files.interactions": cfg.files.interactions,
                    "data.files.items": cfg.files.items,
                },
                tmp,
            )
        else:
            names = copy_inputs(
                {
                    "data.amazon.reviews": cfg.amazon.reviews,
                    "data.amazon.metadata": cfg.amazon.metadata,
                },
                tmp,
            )
    return [raw_dir / name for name in names]


def load_raw(cfg: DataConfig, raw_dir: Path) -> RawData:
    """Read what `fetch_raw` wrote under `raw_dir` onto the data contract."""
    from components.data import amazon, movielens, synthetic

    raw_dir = Path(raw_dir)
    if cfg.source == "movielens100k":
        return movielens.load_movielens100k(raw_dir)
    if cfg.source == "synthetic":
        return synthetic.load_synthetic(raw_dir)
    if cfg.source == "files":
        return load_files(cfg.files, raw_dir)
    return amazon.load_amazon(cfg.amazon, raw_dir)


def copy_inputs(files: dict[str, str], dest: Path) -> list[str]:
    """Copy the user's files (param name -> path) into `dest`, keeping their names."""
    names: list[str] = []
    for param, value in files.items():
        if not value:
            raise DataError(f"{param} is not set: give the path of the file in params.yaml")
        path = Path(value).expanduser()
        if not path.is_file():
            raise DataError(f"{param}: file not found: {path}")
        if path.name in names:
            raise DataError(
                f"{param}: {path}: two inputs share the file name {path.name!r}; rename one"
            )
        shutil.copyfile(path, dest / path.name)
        names.append(path.name)
    return names


def read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the file is gzip-compressed (whatever its extension)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip file: {exc}") from exc
    return data


def table_format(path: Path, fmt: str) -> str:
    """The file format: `fmt` unless "auto", else guessed from the extension (.gz ignored)."""
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in _FORMATS:
        return _FORMATS[suffixes[-1]]
    raise DataError(
        f"{path}: cannot tell the format from the extension; set data.files.format "
        f"to one of csv, tsv, parquet, jsonl"
    )


def read_table(path: Path, fmt: str, shown: str) -> pl.DataFrame:
    """Read a CSV/TSV (every column as text, no type guessing), Parquet or JSONL table."""
    kind = table_format(path, fmt)
    try:
        if kind == "parquet":
            return pl.read_parquet(path)
        if kind == "jsonl":
            return pl.read_ndjson(read_bytes(path), infer_schema_length=None)
        return pl.read_csv(
            read_bytes(path),
            separator="\t" if kind == "tsv" else ",",
            quote_char=None if kind == "tsv" else '"',
            infer_schema=False,
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{shown}: cannot read as {kind}: {exc}") from exc


def require_column(df: pl.DataFrame, column: str, shown: str, param: str) -> pl.Series:
    """The column, or a DataError naming the file, the column and the columns there are."""
    if column not in df.columns:
        raise DataError(
            f"{shown}: column '{column}' not found (set {param}); available columns: {df.columns}"
        )
    return df.get_column(column)


def as_id(series: pl.Series) -> pl.Series:
    """Identifiers as strings; integral floats (e.g. ids with nulls from pandas) lose their '.0'."""
    if series.dtype.is_float():
        values = series.drop_nulls()
        if (values == values.round()).all():
            series = series.cast(pl.Int64)
    return series.cast(pl.Utf8)


def _fail_unparsed(original: pl.Series, parsed: pl.Series, shown: str, what: str) -> None:
    """Raise if a non-null value did not survive parsing, quoting the offending rows."""
    bad = (original.is_not_null() & parsed.is_null()).arg_true()
    if len(bad):
        rows = bad.head(EXAMPLES).to_list()
        values = original.gather(rows).to_list()
        raise DataError(
            f"{shown}: column '{original.name}': cannot parse as {what} ({len(bad)} rows), "
            f"e.g. rows {rows}: values {values}"
        )


def as_float(series: pl.Series, shown: str) -> pl.Series:
    """Numbers (e.g. ratings) as Float64; unparsable values are an error."""
    parsed = (series.str.strip_chars() if series.dtype == pl.Utf8 else series).cast(
        pl.Float64, strict=False
    )
    _fail_unparsed(series, parsed, shown, "a number")
    return parsed


def as_epoch_seconds(series: pl.Series, shown: str) -> pl.Series:
    """Timestamps as Int64 epoch seconds, from integers, floats, datetimes or date strings."""
    dtype = series.dtype
    if dtype.is_integer():
        return series.cast(pl.Int64)
    if dtype.is_float():
        return series.fill_nan(None).round().cast(pl.Int64)
    if dtype == pl.Date:
        return series.cast(pl.Datetime("us")).dt.epoch("s")
    if isinstance(dtype, pl.Datetime):
        return series.dt.epoch("s")
    if dtype != pl.Utf8:
        raise DataError(
            f"{shown}: column '{series.name}': timestamps of type {dtype} are not supported"
        )
    text = series.str.strip_chars()
    numeric = text.cast(pl.Float64, strict=False).fill_nan(None)
    if numeric.is_not_null().sum() == text.is_not_null().sum():
        parsed = numeric.round().cast(pl.Int64)
    else:
        try:
            parsed = text.str.to_datetime(strict=False, time_unit="us").dt.epoch("s")
        except pl.exceptions.PolarsError:
            parsed = pl.Series(series.name, [None] * len(series), dtype=pl.Int64)
    _fail_unparsed(series, parsed, shown, "a timestamp (epoch seconds or a date)")
    return parsed.alias(series.name)


def item_text(df: pl.DataFrame, columns: list[str]) -> pl.Series:
    """'<first> | <name>: <value> | ...' over the non-blank parts; null when every part is blank.

    List columns (e.g. genres, categories) are joined with ', '.
    """

    def part(name: str) -> pl.Expr:
        expr = pl.col(name)
        if isinstance(df.schema[name], pl.List):
            expr = expr.list.eval(pl.element().cast(pl.Utf8)).list.join(", ")
        expr = expr.cast(pl.Utf8).str.strip_chars()
        return pl.when(expr != "").then(expr)

    parts = [part(columns[0])] + [pl.lit(f"{name}: ") + part(name) for name in columns[1:]]
    text = pl.concat_str(parts, separator=" | ", ignore_nulls=True)
    return df.select(pl.when(text != "").then(text).alias("text")).to_series()


def load_files(src: FilesSource, raw_dir: Path) -> RawData:
    """Load the `files` source: the user's tables copied into `raw_dir`, columns as configured."""
    items_path = raw_dir / Path(src.items).name
    inter_path = raw_dir / Path(src.interactions).name
    items_df = read_table(items_path, src.format, src.items)
    inter_df = read_table(inter_path, src.format, src.interactions)
    return RawData(
        items=_items_frame(items_df, src, src.items),
        interactions=_interactions_frame(inter_df, src.columns, src.interactions),
        items_file=src.items,
        interactions_file=src.interactions,
    )


def _items_frame(df: pl.DataFrame, src: FilesSource, shown: str) -> pl.DataFrame:
    item_id = as_id(require_column(df, src.columns.item_id, shown, "data.files.columns.item_id"))
    title = require_column(df, src.title_column, shown, "data.files.title_column").cast(pl.Utf8)
    if not src.text_columns:
        raise DataError(f"{shown}: data.files.text_columns is empty; name at least one column")
    for column in src.text_columns:
        require_column(df, column, shown, "data.files.text_columns")
    items = pl.DataFrame(
        {"item_id": item_id, "title": title, "text": item_text(df, src.text_columns)},
        schema=ITEM_SCHEMA,
    )
    return items.with_columns(pl.coalesce("title", "item_id").alias("title"))  # untitled -> its id


def _interactions_frame(df: pl.DataFrame, columns: ColumnNames, shown: str) -> pl.DataFrame:
    def col(field: str) -> pl.Series:
        return require_column(df, getattr(columns, field), shown, f"data.files.columns.{field}")

    # The rating is optional: only a rating column the user named explicitly must exist.
    rating_explicit = "rating" in columns.model_fields_set
    if columns.rating is not None and (rating_explicit or columns.rating in df.columns):
        rating = as_float(col("rating"), shown)
    else:
        rating = pl.Series([None] * df.height, dtype=pl.Float64)
    return pl.DataFrame(
        {
            "user_id": as_id(col("user_id")),
            "item_id": as_id(col("item_id")),
            "timestamp": as_epoch_seconds(col("timestamp"), shown),
            "rating": rating,
        },
        schema=INTERACTION_SCHEMA,
    )
