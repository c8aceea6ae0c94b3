"""Raw sources: materialise them under `raw_dir` and load them onto the data contract.

Every source ends up as a `RawData`: an items table (item_id, title, text) and an
interactions table (user_id, item_id, timestamp, rating) whose rows are in file order, so
that a row number in an error message is the 0-based data row in the named file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
import zlib
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
MAX_SHOWN_CHARS = 60  # a quoted value is cut to this many characters
# Spellings of "no value" that spreadsheets, databases and scrapers write into text files.
NULL_MARKERS = ("", "null", "none", "nan", "n/a", "#n/a", "\\n", "<null>")
MAX_EPOCH_SECONDS = 10**15  # beyond any date (and Int64-safe): rejected as unparsable
BOM = b"\xef\xbb\xbf"

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
    """Materialise the configured source under `raw_dir` (replaced atomically); return its files.

    The user's files (sources `files` and `amazon`) are parsed before the snapshot replaces
    the previous one: a file that cannot be read leaves the last good snapshot in place.
    """
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
            load_raw(cfg, tmp)
        else:
            names = copy_inputs(
                {
                    "data.amazon.reviews": cfg.amazon.reviews,
                    "data.amazon.metadata": cfg.amazon.metadata,
                },
                tmp,
            )
            load_raw(cfg, tmp)
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


def shown_values(values: list) -> list:
    """Values for an error message: long strings cut to MAX_SHOWN_CHARS (with their length)."""
    out = []
    for value in values:
        if isinstance(value, str) and len(value) > MAX_SHOWN_CHARS:
            value = f"{value[:MAX_SHOWN_CHARS]}... ({len(value):,} characters)"
        out.append(value)
    return out


def read_bytes(path: Path, shown: str | None = None) -> bytes:
    """File contents, gunzipped when the file is gzip-compressed (whatever its extension).

    An empty file or a corrupt/truncated gzip stream is a DataError naming the file.
    """
    shown = shown or str(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{shown}: corrupt or truncated gzip file ({exc}); compress it again or "
                f"give the uncompressed file"
            ) from exc
    if not data.strip():
        raise DataError(f"{shown}: the file is empty")
    return data


def decode_utf8(data: bytes, shown: str) -> str:
    """Text of a UTF-8 file (a leading byte-order mark dropped); other encodings are a DataError
    quoting the line with the first undecodable byte."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(
            f"{shown}: the file is UTF-16 (e.g. Excel's 'Unicode Text' export): save it as "
            f"'CSV UTF-8'"
        )
    if data[:4] == b"PK\x03\x04":
        raise DataError(
            f"{shown}: the file is a zip archive (an Excel .xlsx workbook?), not a text table: "
            f"export the sheet as 'CSV UTF-8'"
        )
    try:
        return data.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + (len(BOM) if data.startswith(BOM) else 0)
        line_start = data.rfind(b"\n", 0, at) + 1
        line_end = data.find(b"\n", at)
        line = data[line_start : line_end if line_end >= 0 else len(data)]
        number = data.count(b"\n", 0, at) + 1
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        raise DataError(
            f"{shown}: line {number} is not UTF-8 (byte {data[at : at + 1]!r}): "
            f"{shown_values([text])[0]!r}; the file looks like Latin-1/Windows-1252: "
            f"save it as UTF-8"
        ) from None


def table_format(path: Path, fmt: str, shown: str | None = None) -> str:
    """The file format: `fmt` unless "auto", else guessed from the extension (.gz ignored)."""
    shown = shown or str(path)
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in _FORMATS:
        return _FORMATS[suffixes[-1]]
    if suffixes and suffixes[-1] in (".xlsx", ".xls", ".ods"):
        raise DataError(f"{shown}: spreadsheets are not read: export the sheet as 'CSV UTF-8'")
    raise DataError(
        f"{shown}: cannot tell the format from the extension; set data.files.format "
        f"to one of csv, tsv, parquet, jsonl"
    )


def _diagnose_csv(text: str, separator: str, quoting: bool, shown: str) -> str | None:
    """Why a CSV/TSV did not parse, as 'line N: ...' (1-based file lines), if it can be found."""
    reader = csv.reader(
        io.StringIO(text),
        delimiter=separator,
        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
        strict=True,
    )
    width, start = None, 1
    try:
        for row in reader:
            if width is None:
                width = len(row)
            elif row and len(row) != width:
                return (
                    f"{shown}: line {start} has {len(row)} fields, the header has {width}: "
                    f"{shown_values([separator.join(row)])[0]!r}"
                )
            start = reader.line_num + 1
    except csv.Error as exc:
        return f"{shown}: line {start}: {exc} (a quote opened on this line is never closed?)"
    return None


def _diagnose_jsonl(text: str, shown: str) -> str | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            return (
                f"{shown}: line {number} is not valid JSON ({exc.msg}): {shown_values([line])[0]!r}"
            )
        if not isinstance(record, dict):
            return f"{shown}: line {number} is not a JSON object: {shown_values([line])[0]!r}"
    return None


def _blank_rows(df: pl.DataFrame, shown: str) -> pl.DataFrame:
    """Drop trailing rows whose every field is blank (what spreadsheets append); blank rows
    elsewhere are a DataError (dropping them would shift the row numbers quoted later)."""
    if df.width == 0 or df.height == 0:
        return df
    blank = pl.all_horizontal(
        (pl.col(c).str.strip_chars() == "").fill_null(True) if t == pl.Utf8 else pl.col(c).is_null()
        for c, t in df.schema.items()
    )
    mask = df.select(blank).to_series()
    keep = df.height
    while keep and mask[keep - 1]:
        keep -= 1
    rows = mask.head(keep).arg_true()
    if len(rows):
        raise DataError(
            f"{shown}: empty rows (every field blank) ({len(rows)} rows), "
            f"e.g. rows {rows.head(EXAMPLES).to_list()}: delete them"
        )
    return df.head(keep)


def read_table(path: Path, fmt: str, shown: str) -> pl.DataFrame:
    """Read a CSV/TSV (every column as text, no type guessing), Parquet or JSONL table.

    Text files must be UTF-8 (a byte-order mark and CRLF line ends are fine); trailing blank
    rows are dropped; an empty file, a header without rows or a malformed line is a
    DataError naming the file and the line.
    """
    kind = table_format(path, fmt, shown)
    try:
        if kind == "parquet":
            df = pl.read_parquet(path)
        else:
            data = read_bytes(path, shown)
            decode_utf8(data, shown)  # raises on other encodings; the text itself is not kept
            data = data.removeprefix(BOM)
            if kind == "jsonl":
                try:
                    df = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None)
                except pl.exceptions.PolarsError:
                    diagnosis = _diagnose_jsonl(data.decode(), shown)
                    if diagnosis:
                        raise DataError(diagnosis) from None
                    raise
            else:
                separator, quoting = ("\t", False) if kind == "tsv" else (",", True)
                try:
                    df = pl.read_csv(
                        data,
                        separator=separator,
                        quote_char='"' if quoting else None,
                        infer_schema=False,
                    )
                except pl.exceptions.PolarsError:
                    diagnosis = _diagnose_csv(data.decode(), separator, quoting, shown)
                    if diagnosis:
                        raise DataError(diagnosis) from None
                    raise
                repeated = sorted(
                    {
                        c.rsplit("_duplicated_", 1)[0]
                        for c in df.columns
                        if re.search(r"_duplicated_\d+$", c)
                    }
                )
                if repeated:
                    raise DataError(f"{shown}: the header repeats the column names {repeated}")
    except (pl.exceptions.PolarsError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{shown}: cannot read as {kind}: {reason}") from exc
    df = _blank_rows(df, shown)
    if df.height == 0:
        raise DataError(f"{shown}: no data rows (only a header): columns {df.columns}")
    return df


def require_column(df: pl.DataFrame, column: str, shown: str, param: str) -> pl.Series:
    """The column, or a DataError naming the file, the column and the columns there are."""
    if column not in df.columns:
        hint = ""
        if len(df.columns) == 1:
            for separator, name in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
                if separator in df.columns[0]:
                    hint = (
                        f"; the file looks {name}-separated: save it with ',' separators "
                        f"(or tabs and data.files.format: tsv)"
                    )
                    break
        raise DataError(
            f"{shown}: column '{column}' not found (set {param}); available columns: "
            f"{shown_values(df.columns)}{hint}"
        )
    return df.get_column(column)


def _null_markers(text: pl.Series) -> pl.Series:
    """Stripped text with blank cells and NULL-like spellings ('NULL', 'NaN', 'N/A', ...) as null."""
    text = text.str.strip_chars()
    return text.set(text.str.to_lowercase().is_in(list(NULL_MARKERS)).fill_null(False), None)


def as_id(series: pl.Series) -> pl.Series:
    """Identifiers as strings; integral floats (e.g. ids with nulls from pandas) lose their '.0'.

    Surrounding whitespace is dropped and NULL-like cells are nulls (validation reports them).
    """
    if series.dtype.is_float():
        values = series.drop_nulls()
        if (values == values.round()).all() and (values.abs() < 2**63).all():
            series = series.cast(pl.Int64)
    if series.dtype != pl.Utf8:
        series = series.cast(pl.Utf8)
    return _null_markers(series)


def _fail_unparsed(
    original: pl.Series, parsed: pl.Series, shown: str, what: str, hint: str = ""
) -> None:
    """Raise if a non-null value did not survive parsing, quoting the offending rows."""
    bad = (original.is_not_null() & parsed.is_null()).arg_true()
    if len(bad):
        rows = bad.head(EXAMPLES).to_list()
        values = shown_values(original.gather(rows).to_list())
        if original.name in values:
            hint += "; the header line appears again inside the file (files concatenated?)"
        raise DataError(
            f"{shown}: column '{original.name}': cannot parse as {what} ({len(bad)} rows), "
            f"e.g. rows {rows}: values {values}{hint}"
        )


def as_float(series: pl.Series, shown: str) -> pl.Series:
    """Numbers (e.g. ratings) as Float64; NULL-like cells are nulls, other unparsable values an error."""
    if series.dtype == pl.Utf8:
        series = _null_markers(series)
    parsed = series.cast(pl.Float64, strict=False)
    _fail_unparsed(series, parsed, shown, "a number")
    return parsed


def _seconds(values: pl.Series) -> pl.Series:
    """Float epoch seconds rounded to Int64; NaN, infinite or absurdly large values -> null."""
    finite = values.is_finite() & (values.abs() < MAX_EPOCH_SECONDS)
    return values.set(~finite.fill_null(False), None).round().cast(pl.Int64, strict=False)


def as_epoch_seconds(series: pl.Series, shown: str) -> pl.Series:
    """Timestamps as Int64 epoch seconds, from integers, floats, datetimes or date strings.

    A text column may mix epoch numbers and dates, but its dates must share one format
    (inferred from the first one); NULL-like cells are nulls, any other value that is
    neither is an error quoting its rows.
    """
    dtype, what = series.dtype, "a timestamp (epoch seconds or a date)"
    if dtype.is_integer():
        parsed = series.cast(pl.Int64, strict=False)
        parsed = parsed.set((parsed.abs() >= MAX_EPOCH_SECONDS).fill_null(False), None)
        _fail_unparsed(series, parsed, shown, what)
        return parsed
    if dtype.is_float():
        original = series.fill_nan(None)  # NaN = missing, reported as a null by validation
        parsed = _seconds(original)
        _fail_unparsed(original, parsed, shown, what)
        return parsed
    if dtype == pl.Date:
        return series.cast(pl.Datetime("us")).dt.epoch("s")
    if isinstance(dtype, pl.Datetime):
        return series.dt.epoch("s")
    if dtype != pl.Utf8:
        raise DataError(
            f"{shown}: column '{series.name}': timestamps of type {dtype} are not supported "
            f"(expected epoch seconds or date strings), e.g. rows [0]: values "
            f"{shown_values([series[0]])}"
        )
    text = _null_markers(series)
    parsed = _seconds(text.cast(pl.Float64, strict=False))
    dates = text.is_not_null() & parsed.is_null()
    if dates.any():
        others = text.filter(dates)
        try:
            parsed_dates = others.str.to_datetime(strict=False, time_unit="us").dt.epoch("s")
        except pl.exceptions.PolarsError:
            parsed_dates = pl.Series([None] * len(others), dtype=pl.Int64)
        parsed = parsed.scatter(dates.arg_true(), parsed_dates)
        good = (dates & parsed.is_not_null()).arg_true()
        if len(good) and (dates & parsed.is_null()).any():
            row = int(good[0])
            hint = f"; the dates in a column must share one format, like row {row}: {text[row]!r}"
            _fail_unparsed(text, parsed, shown, what, hint)
    _fail_unparsed(text, parsed, shown, what)
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
