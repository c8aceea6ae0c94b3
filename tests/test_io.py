import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from components.io import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    read_parquet_metadata,
    remove_stale_siblings,
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


def test_csv_roundtrip_and_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "rounds.csv"
    df = pl.DataFrame({"round": [0, 1], "churn": [0.25, None]})
    atomic_write_csv(df, target)
    assert pl.read_csv(target).equals(df)
    with pytest.raises(pl.exceptions.PolarsError):  # an object column has no CSV form
        atomic_write_csv(pl.DataFrame({"o": [object()]}, schema={"o": pl.Object}), target)
    assert pl.read_csv(target).equals(df)
    assert _leftovers(tmp_path) == []


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


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from components.io import _temp_sibling, atomic_dir
target = Path(sys.argv[1])
if sys.argv[2] == "file":
    with _temp_sibling(target) as tmp:
        tmp.write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
with atomic_dir(target) as tmp:
    (tmp / "half.txt").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_writer(target: Path, kind: str) -> int:
    """The pid of a writer SIGKILLed mid-write of `target` (it is dead and reaped)."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), kind], cwd=root)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return proc.pid


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    target, tree = tmp_path / "m.json", tmp_path / "out"
    atomic_write_json(target, {"ok": 1})
    dead = _killed_writer(target, "file")
    _killed_writer(tree, "dir")
    assert [n for n in _leftovers(tmp_path) if n.startswith(f".m.json.{dead}.")]
    assert [n for n in _leftovers(tmp_path) if n.startswith(".out.")]
    live = tmp_path / f".m.json.{os.getpid()}.abc123.tmp"  # a writer still running
    live.write_bytes(b"in progress")
    other = tmp_path / f".m.json.x.{dead}.abc.tmp"  # another target's temporary
    other.write_bytes(b"")

    atomic_write_json(target, {"ok": 2})
    with atomic_dir(tree) as tmp:
        (tmp / "new.txt").write_text("new")

    assert json.loads(target.read_text()) == {"ok": 2}
    assert sorted(p.name for p in tree.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == sorted([live.name, other.name])


def test_a_tree_moved_aside_by_a_killed_writer_is_put_back(tmp_path: Path) -> None:
    out, dead = tmp_path / "out", _killed_writer(tmp_path / "elsewhere" / "unused", "file")
    aside = tmp_path / f".out.{dead}.k3y.old"
    (aside / "out").mkdir(parents=True)  # killed between atomic_dir's two renames
    (aside / "out" / "keep.txt").write_text("previous")
    assert remove_stale_siblings(out) == [aside]
    assert (out / "keep.txt").read_text() == "previous"
    assert _leftovers(tmp_path) == []
