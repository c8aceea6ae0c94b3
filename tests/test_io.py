import json
from pathlib import Path

import polars as pl
import pytest

from components.io import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    read_parquet_metadata,
)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_write_bytes_and_text_replace_existing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert _leftovers(target.parent) == []


def test_write_json_sorted_and_indented(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    text = target.read_text()
    assert text.index('"a"') < text.index('"b"')
    assert '\n  "a"' in text and text.endswith("\n")
    assert json.loads(text) == {"a": [1, 2], "b": 1}


def test_failed_write_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert _leftovers(tmp_path) == []


def test_parquet_roundtrip_with_metadata(tmp_path: Path) -> None:
    df = pl.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    target = tmp_path / "t.parquet"
    atomic_write_parquet(df, target, metadata={"round": "3", "tokenizer": "rqvae"})
    assert pl.read_parquet(target).equals(df)
    assert read_parquet_metadata(target) == {"round": "3", "tokenizer": "rqvae"}
    atomic_write_parquet(df, tmp_path / "plain.parquet")
    assert read_parquet_metadata(tmp_path / "plain.parquet") == {}


def test_atomic_dir_replaces_old_tree(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp != out
        assert not (out / "new.txt").exists()  # nothing visible before the block ends
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == []


def test_atomic_dir_error_leaves_old_tree(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "partial.txt").write_text("x")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "never") as tmp:
        raise RuntimeError("boom")
    assert not (tmp_path / "never").exists()
