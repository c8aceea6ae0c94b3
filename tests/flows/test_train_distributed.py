"""Issue 12, point 6: `siit train_static` under torchrun (2 CPU processes, gloo) on synthetic
data. Both ranks train; rank 0 alone evaluates, writes the outputs and logs one MLflow run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.flows.test_pipeline_dvc import REPO, TINY_PARAMS, _merge, run

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def test_train_static_under_torchrun_logs_and_writes_on_rank_0_only(
    tmp_path: Path, prefect_env: dict[str, str]
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        **prefect_env,
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SIIT_LOG_FILE": str(root / "logs" / "siit.log"),
    }
    for stage in ("prepare", "validate", "tokenize"):
        run([str(BIN / "siit"), stage], root, env)

    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    proc = subprocess.run(
        [*launch, "--nproc_per_node", "2", str(BIN / "siit"), "train_static"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]

    report = json.loads((root / "reports/models/static.json").read_text())
    assert all(0.0 <= v <= 1.0 for v in report["test"].values())
    assert len(report["rounds"]) == params["siit"]["rounds"] + 1
    assert (root / "artifacts/models/static/token_map.parquet").exists()
    assert not (root / "artifacts/checkpoints/static").exists()  # cleared by rank 0 at the end
    log = (root / "logs" / "siit.log").read_text()
    assert "data-parallel over 2 processes" in log  # both ranks joined one process group

    with sqlite3.connect(root / "mlflow.db") as con:
        runs = con.execute(
            "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'stage' AND t.value = 'train_static'"
        ).fetchall()
        assert [status for _, status in runs] == ["FINISHED"]  # one run: rank 0's
        rounds = con.execute(
            "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'mlflow.parentRunId' AND t.value = ?",
            (runs[0][0],),
        ).fetchall()
        assert [s for (s,) in rounds] == ["FINISHED"] * len(report["rounds"])
        pids = con.execute(
            "SELECT DISTINCT value FROM tags WHERE key = 'siit.pid' AND run_uuid IN "
            "(SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = ?)",
            (runs[0][0],),
        ).fetchall()
        assert len(pids) == 1  # every round logged by the same process
