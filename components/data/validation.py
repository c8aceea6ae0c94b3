"""Validate raw data with Great Expectations (Core 1.x) before anything downstream is written.

A failure raises `DataValidationError` listing every failed expectation as
"<file>: column '<col>': <what failed> (N rows), e.g. rows [...]: values [...]", with rows
counted as 0-based data rows of the named file.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import pandas as pd
import polars as pl

from components.config import DataConfig
from components.data.sources import EXAMPLES, DataError, RawData, shown_values

# Expected pandas types ('str' also holds on pandas < 3, where GX checks each object value).
_COLUMN_TYPES = {
    "item_id": "str",
    "title": "str",
    "text": "str",
    "user_id": "str",
    "timestamp": "int64",
    "rating": "float64",
}
_PER_USER = "__interactions_of_user"  # derived column for the sequence-length expectation
FUTURE_SLACK_S = 86_400  # timestamps up to a day ahead are tolerated (clock skew, time zones)
MAX_ID_CHARS = 256  # longer "ids" are whole records or pages pasted into one cell
MAX_TEXT_CHARS = 100_000  # an item text beyond this is a broken quote or a scraped page
_LIMITS = [
    ("items", "item_id", MAX_ID_CHARS),
    ("items", "title", MAX_TEXT_CHARS),
    ("items", "text", MAX_TEXT_CHARS),
    ("interactions", "user_id", MAX_ID_CHARS),
    ("interactions", "item_id", MAX_ID_CHARS),
]
_EVENT = ["user_id", "item_id", "timestamp"]  # one interaction; repeated = a duplicate row


class DataValidationError(DataError):
    """Raw data that failed validation; `failures` has one line per failed expectation."""

    def __init__(self, failures: list[str], report: dict[str, Any]) -> None:
        self.failures = failures
        self.report = report
        lines = "\n".join(f"  {line}" for line in failures)
        super().__init__(
            f"data validation failed ({len(failures)} expectations; rows are 0-based data "
            f"rows, the header not counted):\n{lines}"
        )


@dataclass(frozen=True)
class _Check:
    table: str  # "items" | "interactions"
    column: str  # column named in the message (and whose values it quotes)
    what: str  # what a failure means, in words
    expectation: Any  # a great_expectations Expectation
    quote_values: bool = True
    quote_columns: tuple[str, ...] = ()  # quote these columns' values instead of `column`'s


def _to_pandas(df: pl.DataFrame) -> pd.DataFrame:
    """pandas copy with a 0-based RangeIndex (= file rows); integer columns stay integer."""
    out = df.to_pandas()
    for name, dtype in df.schema.items():
        if dtype.is_integer():
            out[name] = out[name].astype("Int64")
    return out


def _checks(
    frames: dict[str, pd.DataFrame], files: dict[str, str], cfg: DataConfig, now: int
) -> list[_Check]:
    import great_expectations.expectations as gxe

    required = {
        "items": ["item_id", "title", "text"],
        "interactions": ["user_id", "item_id", "timestamp", "rating"],
    }
    checks: list[_Check] = []
    for table, columns in required.items():
        available = [c for c in frames[table].columns if c != _PER_USER]
        for column in columns:
            checks.append(
                _Check(
                    table,
                    column,
                    f"missing (available columns: {available})",
                    gxe.ExpectColumnToExist(column=column),
                )
            )
            if column in frames[table].columns:
                checks.append(
                    _Check(
                        table,
                        column,
                        f"expected type {_COLUMN_TYPES[column]}",
                        gxe.ExpectColumnValuesToBeOfType(
                            column=column, type_=_COLUMN_TYPES[column]
                        ),
                    )
                )
    present = {table: set(df.columns) for table, df in frames.items()}
    for table, column in [
        ("items", "item_id"),
        ("items", "text"),
        ("interactions", "user_id"),
        ("interactions", "item_id"),
        ("interactions", "timestamp"),
    ]:
        if column in present[table]:
            checks.append(
                _Check(
                    table,
                    column,
                    "null values",
                    gxe.ExpectColumnValuesToNotBeNull(column=column),
                    quote_values=False,
                )
            )
    if "item_id" in present["items"]:
        checks.append(
            _Check(
                "items",
                "item_id",
                "duplicate item ids",
                gxe.ExpectColumnValuesToBeUnique(column="item_id"),
            )
        )
        if "item_id" in present["interactions"]:
            known = frames["items"]["item_id"].dropna().unique().tolist()
            checks.append(
                _Check(
                    "interactions",
                    "item_id",
                    f"item ids not found in {files['items']}",
                    gxe.ExpectColumnValuesToBeInSet(column="item_id", value_set=known),
                )
            )
    for table, column, limit in _LIMITS:
        if column in present[table] and frames[table][column].dtype != "Int64":
            checks.append(
                _Check(
                    table,
                    column,
                    f"values longer than {limit:,} characters",
                    gxe.ExpectColumnValueLengthsToBeBetween(
                        column=column, min_value=1, max_value=limit
                    ),
                )
            )
    if set(_EVENT) <= present["interactions"]:
        checks.append(
            _Check(
                "interactions",
                "user_id",
                "duplicate rows (same user_id, item_id and timestamp)",
                gxe.ExpectCompoundColumnsToBeUnique(column_list=_EVENT),
                quote_columns=tuple(_EVENT),
            )
        )
    if "timestamp" in present["interactions"]:
        latest = now + FUTURE_SLACK_S
        hint = ""
        stamps = frames["interactions"]["timestamp"]
        top = stamps.max(skipna=True) if stamps.dtype == "Int64" else pd.NA
        if top is not pd.NA and top > latest * 100:
            hint = "; epoch milliseconds or microseconds? timestamps must be in seconds"
        checks.append(
            _Check(
                "interactions",
                "timestamp",
                "timestamps negative or later than now + 1 day "
                f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(latest))}){hint}",
                gxe.ExpectColumnValuesToBeBetween(
                    column="timestamp", min_value=0, max_value=latest
                ),
            )
        )
    if _PER_USER in present["interactions"]:
        checks.append(
            _Check(
                "interactions",
                "user_id",
                f"users with fewer than {cfg.min_sequence_length} interactions "
                f"(data.min_sequence_length)",
                gxe.ExpectColumnValuesToBeBetween(
                    column=_PER_USER, min_value=cfg.min_sequence_length
                ),
            )
        )
    return checks


def validate_raw(raw: RawData, cfg: DataConfig) -> dict[str, Any]:
    """Run the expectations on `raw`; return a JSON-able report or raise DataValidationError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        files = {"items": raw.items_file, "interactions": raw.interactions_file}
        frames = {"items": _to_pandas(raw.items), "interactions": _to_pandas(raw.interactions)}
        inter = frames["interactions"]
        if "user_id" in inter.columns:
            inter[_PER_USER] = inter.groupby("user_id", dropna=True)["user_id"].transform("size")
        checks = _checks(frames, files, cfg, now=int(time.time()))

        context = gx.get_context(
            mode="ephemeral",
            project_config=DataContextConfig(
                analytics_enabled=False,
                progress_bars=ProgressBarsConfig(globally=False),
                store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            ),
        )
        source = context.data_sources.add_pandas("raw")
        # `meta` carries each check's position through GX, to match results back to checks.
        for i, check in enumerate(checks):
            check.expectation.meta = {"check": i}
        outcomes = []
        for table, df in frames.items():
            expectations = [c.expectation for c in checks if c.table == table]
            suite = gx.ExpectationSuite(name=table, expectations=expectations)
            batch = (
                source.add_dataframe_asset(table)
                .add_batch_definition_whole_dataframe("all")
                .get_batch(batch_parameters={"dataframe": df})
            )
            outcome = batch.validate(
                suite,
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES},
            )
            outcomes += outcome.results
    outcomes.sort(key=lambda r: int(r.expectation_config.meta["check"]))
    results = [(checks[int(r.expectation_config.meta["check"])], r) for r in outcomes]

    failures = [
        _describe(c, r, files[c.table], frames[c.table]) for c, r in results if not r.success
    ]
    report = {
        "success": not failures,
        "great_expectations_version": gx.__version__,
        "items_file": raw.items_file,
        "interactions_file": raw.interactions_file,
        "n_items": raw.items.height,
        "n_interactions": raw.interactions.height,
        "n_users": int(inter["user_id"].nunique()) if "user_id" in inter.columns else 0,
        "expectations": [
            {
                "file": files[c.table],
                "column": c.column,
                "expectation": r.expectation_config.type,
                "success": bool(r.success),
            }
            for c, r in results
        ],
        "failures": failures,
    }
    if failures:
        raise DataValidationError(failures, report)
    return report


def _describe(check: _Check, result: Any, file: str, df: pd.DataFrame) -> str:
    """One readable line for a failed expectation."""
    head = f"{file}: column '{check.column}': {check.what}"
    error = _exception_message(result.exception_info or {})
    if error:
        return f"{head}: the check could not run ({error})"
    details = result.result or {}
    if "unexpected_count" not in details:
        observed = details.get("observed_value")
        return head if observed is None else f"{head}, found {observed}"
    rows = [int(i) for i in details.get("partial_unexpected_index_list") or []][:EXAMPLES]
    line = f"{head} ({details['unexpected_count']} rows), e.g. rows {rows}"
    if check.quote_values and rows:
        if check.quote_columns:
            values = [
                tuple(shown_values([v.item() if hasattr(v, "item") else v for v in row]))
                for row in df.loc[rows, list(check.quote_columns)].itertuples(index=False)
            ]
        else:
            values = shown_values(df[check.column].iloc[rows].tolist())
        line += f": values {values}"
    return line


def _exception_message(info: dict[str, Any]) -> str | None:
    """The first line of an error GX caught, whether reported flat or per metric."""
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    for candidate in candidates:
        if candidate.get("raised_exception") and candidate.get("exception_message"):
            return str(candidate["exception_message"]).splitlines()[0]
    return None
