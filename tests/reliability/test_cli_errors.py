"""The `siit` console script itself (a subprocess): one message on stderr, exit 1, the
traceback in logs/siit.log; bad parameters stop before Prefect starts anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

SIIT = str(Path(sys.executable).parent / "siit")
BAD = Path(__file__).parents[1] / "data" / "fixtures" / "bad"


def _siit(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
    env.pop("SIIT_LOG_FILE", None)
    return subprocess.run(
        [SIIT, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


def _one_error(stderr: str, command: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith(f"siit {command}: error: "), stderr
    return stderr[stderr.index(f"siit {command}: error: ") :]


def test_bad_parameters_stop_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"data": {"source": "synthetic", "max_histroy": 5}, "train": {"lr": 0}})
    )
    # no Prefect server: the stage would start a temporary one if it got that far
    result = _siit(tmp_path, {"PREFECT_HOME": str(tmp_path / ".prefect")}, "prepare")
    assert result.returncode == 1
    message = _one_error(result.stderr, "prepare")
    assert "data.max_histroy: unknown key; did you mean 'max_history'?" in message
    assert (
        "train.lr: 0 is not allowed: Input should be greater than 0; allowed: a number > 0"
        in message
    )
    assert "Prefect" not in result.stderr and "flow run" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing ran


def test_bad_data_through_the_console_script(tmp_path: Path, prefect_env: dict[str, str]) -> None:
    data = {
        "source": "files",
        "files": {
            "interactions": str(BAD / "mixed_date_formats" / "interactions.csv"),
            "items": str(BAD / "_good" / "items.csv"),
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    result = _siit(tmp_path, prefect_env, "prepare")
    assert result.returncode == 1
    message = _one_error(result.stderr, "prepare")
    assert message.startswith(
        f"siit prepare: error: {BAD / 'mixed_date_formats' / 'interactions.csv'}: column "
        "'timestamp': cannot parse as a timestamp (epoch seconds or a date) (1 rows), e.g. "
        "rows [2]: values ['13/09/2020 12:30']"
    )
    assert not (tmp_path / "data" / "raw").exists()
    log = (tmp_path / "logs" / "siit.log").read_text()
    assert "siit prepare failed" in log and "Traceback (most recent call last)" in log


def test_siit_repro_checks_the_parameters_before_starting_anything(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"siit": {"rounds": -1}}))
    result = _siit(tmp_path, {"PREFECT_HOME": str(tmp_path / ".prefect")}, "repro")
    assert result.returncode == 1
    message = _one_error(result.stderr, "repro")
    assert "siit.rounds: -1 is not allowed" in message and "allowed: an integer >= 0" in message
    assert not (tmp_path / ".prefect").exists()  # no Prefect server was started
