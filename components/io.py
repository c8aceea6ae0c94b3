"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every writer goes to a temporary sibling in the same directory (same filesystem) and then
`os.replace`s it into place, so a crash or an exception leaves no partial output behind.
A temporary sibling is named `.<target>.<pid>.<random>.tmp` (`.old` for a directory moved
aside): what a killed writer left is removed by the next write of the same target, once its
pid is no longer running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def remove_stale_siblings(path: Path) -> list[Path]:
    """Remove the temporary siblings of `path` (files or directories) left by writers that
    were killed: their name carries a pid that no longer runs. A previous tree moved aside by
    a writer killed before the new one took its place is put back first. Returns what was
    removed."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.(tmp|old)")
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for sibling in path.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match is None or process_alive(int(match.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            moved_aside = sibling / path.name  # killed between atomic_dir's two renames
            if match.group(2) == "old" and moved_aside.exists() and not path.exists():
                os.replace(moved_aside, path)
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


@contextlib.contextmanager
def _temp_sibling(path: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; replace `path` with it if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with _temp_sibling(Path(path)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as JSON (sorted keys, indent 2, trailing newline) atomically."""
    atomic_write_text(path, json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


def atomic_write_parquet(
    df: pl.DataFrame, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write `df` to Parquet atomically, with optional key-value metadata in the file footer."""
    table = df.to_arrow()
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with _temp_sibling(Path(path)) as tmp:
        pq.write_table(table, tmp)


def atomic_write_csv(df: pl.DataFrame, path: str | Path) -> None:
    """Write `df` as CSV (header, comma-separated) atomically."""
    with _temp_sibling(Path(path)) as tmp:
        df.write_csv(tmp)


def read_parquet_metadata(path: str | Path) -> dict[str, str]:
    """Key-value metadata of a Parquet file (without the Arrow schema entry pyarrow adds)."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"ARROW:schema"}


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it replaces `path`.

    On error the temporary directory is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            # Move the old tree aside first so the swap itself is two renames.
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
