"""Issue 13, point 3: SIGKILL at random points of tokenize, training (with refinement) and
report, then a re-run. The re-run completes with the same token maps and metrics as an
uninterrupted run; after the kill no file under data/, artifacts/ or reports/ is half
written; no MLflow run is left RUNNING once the re-run is done.

Slow (every stage runs several times on CPU): `make test-all` or `pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.flows.test_pipeline_dvc import REPO, TINY_PARAMS, _merge

pytestmark = pytest.mark.slow

SIIT = str(Path(sys.executable).parent / "siit")
STAGES = ["tokenize", "train_static", "train_siit", "report"]
KILLS_PER_STAGE = 2
OUTPUT_TOPS = ("data", "artifacts", "reports")


def _env(project: Path, prefect_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **prefect_env, "OMP_NUM_THREADS": "1"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    return env


def _run(project: Path, env: dict[str, str], stage: str, check: bool = True) -> float | str:
    """Seconds the stage took; with check=False the error line instead when it failed."""
    start = time.monotonic()
    proc = subprocess.run(
        [SIIT, stage], cwd=project, env=_env(project, env), capture_output=True, text=True
    )
    if proc.returncode and not check:
        errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
        return (errors or [proc.stderr[-300:]])[-1][:300]
    assert proc.returncode == 0, proc.stderr[-4000:]
    return time.monotonic() - start


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("logs"))
    return dst


def _without_timings(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: _without_timings(v)
            for k, v in value.items()
            if not any(word in k for word in ("second", "time", "duration", "run_id"))
        }
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _results(project: Path, stage: str) -> dict[str, object]:
    """What an uninterrupted and a resumed run must agree on."""
    out: dict[str, object] = {}
    maps = [project / "artifacts/tokenize/token_map.parquet"]
    maps += sorted((project / "artifacts/token_maps").glob("*.parquet"))
    for path in maps:
        if path.exists():
            out[str(path.relative_to(project))] = path.read_bytes()
    reports = [project / "reports/tokenize.json", project / "reports/metrics.json"]
    reports += sorted((project / "reports/models").glob("*.json"))
    for path in reports:
        if path.exists():
            out[str(path.relative_to(project))] = _without_timings(json.loads(path.read_text()))
    return out


def _half_written(project: Path) -> list[str]:
    """Visible files (not dot-named temporaries) under the outputs that do not read back."""
    bad = []
    for top in OUTPUT_TOPS:
        for path in (project / top).rglob("*"):
            hidden = any(part.startswith(".") for part in path.relative_to(project).parts)
            if not path.is_file() or hidden:
                continue
            try:
                if path.suffix == ".parquet":
                    pq.read_table(path)
                elif path.suffix == ".json":
                    json.loads(path.read_text())
                elif path.suffix in (".csv", ".txt"):
                    path.read_text()
                elif path.suffix == ".safetensors":
                    from safetensors.numpy import load_file

                    load_file(str(path))
            except Exception as exc:  # any failure to read back is a half-written file
                bad.append(f"{path.relative_to(project)}: {type(exc).__name__}")
    return bad


def _leftovers(project: Path) -> list[str]:
    """Temporary siblings (atomic writes) a killed process could not remove."""
    return sorted(
        str(p.relative_to(project))
        for top in OUTPUT_TOPS
        for p in (project / top).rglob(".*")
        if p.name.endswith((".tmp", ".old"))
    )


def _running_runs(project: Path) -> list[str]:
    db = project / "mlflow.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute("SELECT name FROM runs WHERE status = 'RUNNING'").fetchall()
    except sqlite3.Error:  # the schema is not there (yet)
        return []
    return [row[0] for row in rows]


def _kill_when(project: Path, env: dict[str, str], stage: str, condition: object) -> bool:
    """Start the stage and SIGKILL it as soon as `condition()` holds; False if it never did."""
    proc = subprocess.Popen(
        [SIIT, stage],
        cwd=project,
        env=_env(project, env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if condition():
                os.killpg(proc.pid, signal.SIGKILL)
                return True
            time.sleep(0.02)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]) -> Path:
    root = tmp_path_factory.mktemp("sigkill") / "project"
    root.mkdir()
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("prepare", "validate"):
        _run(root, prefect_env, stage)
    return root


@pytest.fixture(scope="module")
def campaign(
    prepared: Path, prefect_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[str]]:
    """Kill every stage at KILLS_PER_STAGE random points, re-run it, collect the problems:
    'outputs' (maps, metrics, files) and 'tracking' (MLflow)."""
    rng = random.Random(13)
    work = tmp_path_factory.mktemp("kills")
    base = prepared
    problems: dict[str, list[str]] = {"outputs": [], "tracking": []}
    for stage in STAGES:
        straight = _copy(base, work / f"{stage}-straight")
        duration = float(_run(straight, prefect_env, stage))
        expected = _results(straight, stage)
        for k in range(KILLS_PER_STAGE):
            at = rng.uniform(0.15, 0.95) * duration
            killed = _copy(base, work / f"{stage}-killed-{k}")
            proc = subprocess.Popen(
                [SIIT, stage],
                cwd=killed,
                env=_env(killed, prefect_env),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            time.sleep(at)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            where = f"{stage} killed after {at:.1f}s of {duration:.1f}s"
            problems["outputs"] += [f"{where}: half-written {p}" for p in _half_written(killed)]
            rerun = _run(killed, prefect_env, stage, check=False)
            if isinstance(rerun, str):
                problems["tracking" if "sqlite" in rerun.lower() else "outputs"].append(
                    f"{where}: the re-run fails: {rerun}"
                )
                continue
            got = _results(killed, stage)
            problems["outputs"] += [
                f"{where}: {key} differs from the uninterrupted run"
                for key in sorted(set(expected) | set(got))
                if expected.get(key) != got.get(key)
            ]
            problems["outputs"] += [
                f"{where}, then re-run: left behind {p}" for p in _leftovers(killed)
            ]
            problems["tracking"] += [
                f"{where}, then re-run: MLflow run {name!r} still RUNNING"
                for name in _running_runs(killed)
            ]
        base = straight  # the next stage starts from this one's uninterrupted outputs
    return problems


def test_a_killed_stage_reruns_to_the_same_outputs_and_leaves_no_partial_file(
    campaign: dict[str, list[str]],
) -> None:
    assert not campaign["outputs"], "\n".join(campaign["outputs"])


def test_a_killed_stage_leaves_no_mlflow_run_running(campaign: dict[str, list[str]]) -> None:
    assert not campaign["tracking"], "\n".join(campaign["tracking"])


def test_the_mlflow_run_of_a_killed_stage_does_not_stay_running(
    prepared: Path, prefect_env: dict[str, str], tmp_path: Path
) -> None:
    project = _copy(prepared, tmp_path / "project")
    _run(project, prefect_env, "tokenize")  # mlflow.db exists: the kill lands in a run
    assert _kill_when(project, prefect_env, "tokenize", lambda: len(_running_runs(project)) > 0)
    rerun = _run(project, prefect_env, "tokenize", check=False)
    assert not isinstance(rerun, str), rerun
    assert _running_runs(project) == []
