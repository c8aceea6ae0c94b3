"""A SIIT run killed mid-way resumes at the round it was in and ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.conftest import copy_prepared
from tests.flows.test_pipeline_dvc import TINY_PARAMS, _merge, run

BIN = Path(sys.executable).parent
PARAMS = _merge(TINY_PARAMS, {"train": {"epochs": 3}, "siit": {"rounds": 2}})


@pytest.fixture(scope="module")
def prepared(
    tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]
) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("resume") / "project"
    return root, copy_prepared(tiny_prepared, root, {**os.environ, **prefect_env}, PARAMS)


def copy_inputs(src: Path, dst: Path, env: dict[str, str]) -> dict[str, str]:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "mlruns"))
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{dst / 'mlflow.db'}"}


def start_train_siit(cwd: Path, env: dict[str, str], **popen) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "siit"), "train_siit"], cwd=cwd, env=env, **popen)


def comparable(report: dict) -> dict:
    rounds = [{k: v for k, v in r.items() if k != "seconds"} for r in report["rounds"]]
    return {
        "valid": report["valid"],
        "test": report["test"],
        "best_round": report["best_round"],
        "rounds": rounds,
    }


def test_killed_run_resumes_and_matches(
    prepared: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = prepared
    straight_dir = tmp_path / "straight"
    env_a = copy_inputs(root, straight_dir, env)
    # the uninterrupted run trains meanwhile (same thread settings: the same results)
    straight = start_train_siit(
        straight_dir, env_a, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    killed_dir = tmp_path / "killed"
    env_b = copy_inputs(root, killed_dir, env)
    state_file = killed_dir / "artifacts/checkpoints/siit/state.json"
    proc = start_train_siit(
        killed_dir,
        env_b,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not (state_file.exists() and json.loads(state_file.read_text())["next_round"] >= 1):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # dies during round 1 (round 0 is checkpointed)
    proc.wait()
    assert not (killed_dir / "reports/models/siit.json").exists()
    interrupted_at = json.loads(state_file.read_text())["next_round"]
    assert interrupted_at in (1, 2)

    resumed = run([str(BIN / "siit"), "train_siit"], killed_dir, env_b)
    output, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, output[-5000:]
    expected = json.loads((straight_dir / "reports/models/siit.json").read_text())
    assert f"resuming siit at round {interrupted_at}" in resumed.stdout + resumed.stderr
    got = json.loads((killed_dir / "reports/models/siit.json").read_text())
    assert comparable(got) == comparable(expected)
    maps_a = sorted(p.name for p in (straight_dir / "artifacts/token_maps").iterdir())
    maps_b = sorted(p.name for p in (killed_dir / "artifacts/token_maps").iterdir())
    assert maps_a == maps_b == ["round_000.parquet", "round_001.parquet", "round_002.parquet"]
    assert not state_file.exists()  # a finished run leaves no checkpoint behind
