"""A run checkpoint is resumed only with the data, parameters and code it was written with;
otherwise the run starts over and the log names what changed."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import pytest

from components.siit.checkpoint import STATE_FILE, RunCheckpoint, RunState
from components.siit.fingerprint import code_fingerprint, combine, run_fingerprints


def _project(root: Path) -> Path:
    for name in ("components", "flows"):
        (root / name).mkdir(parents=True)
        (root / name / "a.py").write_text(f"X = '{name}'\n")
    (root / "components" / "notes.txt").write_text("not code")
    return root


def test_code_fingerprint_follows_the_python_code_only(tmp_path: Path) -> None:
    root = _project(tmp_path)
    before = code_fingerprint(root)
    (root / "components" / "notes.txt").write_text("still not code")
    assert code_fingerprint(root) == before
    (root / "flows" / "a.py").write_text("X = 'changed'\n")
    assert code_fingerprint(root) != before
    assert len(code_fingerprint()) == 64  # the installed project's own code


def test_parts_tell_data_params_and_code_apart(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"one")
    base = run_fingerprints("siit", {"epochs": 2}, [data])
    assert set(base) == {"data", "params", "code"}
    assert run_fingerprints("siit", {"epochs": 2}, [data]) == base
    assert run_fingerprints("static", {"epochs": 2}, [data])["params"] != base["params"]
    data.write_bytes(b"two")
    changed = run_fingerprints("siit", {"epochs": 2}, [data])
    assert changed["data"] != base["data"] and changed["params"] == base["params"]
    assert combine(changed) != combine(base)


@pytest.mark.parametrize("changed", ["code", "params", "data"])
def test_a_checkpoint_of_other_inputs_is_not_resumed_and_the_log_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, changed: str
) -> None:
    parts = {"data": "d", "params": "p", "code": "c"}
    state = RunState(fingerprint=combine(parts), next_round=2, parts=parts)
    (tmp_path / STATE_FILE).write_text(json.dumps(asdict(state)))
    ckpt = RunCheckpoint(tmp_path)
    resumed = ckpt.load_state(combine(parts), parts)
    assert resumed is not None and resumed.next_round == 2
    now = {**parts, changed: "new"}
    with caplog.at_level(logging.WARNING, logger="components.siit.checkpoint"):
        assert ckpt.load_state(combine(now), now) is None
    assert f"written with other {changed}; starting over" in caplog.text
