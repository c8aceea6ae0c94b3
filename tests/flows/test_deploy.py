"""`siit deploy`: a served Prefect deployment (real local server) running `dvc repro` inside.

One story on a tiny synthetic pipeline read from CSV files: the deployment exists with its
cron schedule; a triggered run completes and registers a model; a second trigger re-runs no
stage; a run that finds the pipeline lock taken refuses without touching anything; after new
interactions are appended to the source file two runs triggered at once complete one after
the other, the first re-running from `prepare` and producing a new model, the second finding
nothing to do. Then the DVC side: stage runs share one pipeline tag in MLflow, DVC metrics
carry no timings, and `dvc push` / `dvc pull` move data and models through a local remote.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from components.tracking import dvc_md5
from tests.flows.test_pipeline_dvc import REPO, init_project, run

BIN = Path(sys.executable).parent
DEPLOYMENT = "retrain/test-retrain"
CRON = "0 3 * * 1"
SLOW = pytest.mark.slow  # two full pipeline runs: about 3 min quiet, 6 min on 2 busy cores


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]):
    from components.config import SyntheticSource
    from components.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("deploy")
    items, interactions = generate_synthetic(
        SyntheticSource(n_users=60, n_items=30, n_clusters=3, mean_length=8)
    )
    (root / "input").mkdir()
    items.write_csv(root / "input/items.csv")
    interactions.write_csv(root / "input/interactions.csv")
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\nlogs/\n")
    files = {
        "interactions": "input/interactions.csv",
        "items": "input/items.csv",
        "columns": {"rating": None},
        "text_columns": ["text"],
    }
    env = init_project(
        root,
        prefect_env,
        {"data": {"source": "files", "files": files}, "tokenize": {"codebook_size": 6}},
        {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "OMP_NUM_THREADS": "1"},
    )
    return root, env


@pytest.fixture(scope="module")
def served(project):
    """`siit deploy --cron ... -S ...` running in the background."""
    root, env = project
    log = (root / "deploy.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "siit"),
            "deploy",
            "--cron",
            CRON,
            "--name",
            "test-retrain",
            "-S",
            "train.seed=7",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield root, env, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _client_call(env: dict[str, str], fn):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go():
        async with get_client() as client:
            return await fn(client)

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return asyncio.run(go())


def _wait_for_deployment(root: Path, env: dict[str, str], proc: subprocess.Popen):
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + 120
    while True:
        try:
            return _client_call(env, lambda c: c.read_deployment_by_name(DEPLOYMENT))
        except ObjectNotFound:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no deployment:\n{(root / 'deploy.log').read_text()[-3000:]}")
        time.sleep(1)


def _trigger(env: dict[str, str]) -> str:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return str(run_deployment(DEPLOYMENT, timeout=0).id)


def _finish(root: Path, env: dict[str, str], run_id: str, timeout: float = 900):
    deadline = time.monotonic() + timeout
    while True:
        flow_run = _client_call(env, lambda c: c.read_flow_run(run_id))
        if flow_run.state and flow_run.state.is_final():
            return flow_run
        if time.monotonic() > deadline:
            raise AssertionError(
                f"run {run_id} not done:\n{(root / 'deploy.log').read_text()[-4000:]}"
            )
        time.sleep(2)


def _result(root: Path, env: dict[str, str], flow_run) -> dict:
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    assert flow_run.state.is_completed(), (
        f"{flow_run.state.type}: {flow_run.state.message}\n"
        f"{(root / 'deploy.log').read_text()[-4000:]}"
    )
    with temporary_settings(
        {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_HOME: env["PREFECT_HOME"]}
    ):
        return flow_run.state.result()


ALL_STAGES = {
    "prepare",
    "validate",
    "tokenize",
    "base_model",
    "train",
    "report",
    "register",
}


@SLOW
def test_scheduled_retraining_through_dvc(served) -> None:
    root, env, proc = served
    deployment = _wait_for_deployment(root, env, proc)
    assert [s.schedule.cron for s in deployment.schedules] == [CRON]
    assert deployment.parameters["overrides"] == ["train.seed=7"]

    # 1. a triggered run completes: the whole pipeline, a registered model
    first = _result(root, env, _finish(root, env, _trigger(env)))
    assert set(first["stages"]) == ALL_STAGES, first
    assert first["registered"]["version"] == "1" and first["registered"]["champion"]
    assert yaml.safe_load((root / "params.yaml").read_text())["train"]["seed"] == 7
    model_hash = dvc_md5(root / "artifacts/models/siit")
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["register"]["deps"]  # lineage recorded by DVC

    # 2. nothing changed: nothing runs
    second = _result(root, env, _finish(root, env, _trigger(env)))
    assert second["stages"] == []

    # 3. the pipeline lock is taken (a manual `dvc repro`, another deployment): refuse cleanly
    from filelock import FileLock

    from flows.deploy import LOCK

    with FileLock(str(root / LOCK)):
        busy = _finish(root, env, _trigger(env))
    assert busy.state.is_failed()
    assert "another pipeline run holds" in (busy.state.message or "") or "another pipeline run" in (
        (root / "deploy.log").read_text()
    )
    assert dvc_md5(root / "artifacts/models/siit") == model_hash

    # 4. new interactions appended to the source file; two runs triggered at once
    source = root / "input/interactions.csv"
    frame = pl.read_csv(source)
    later = frame.group_by("user_id").agg(pl.col("item_id").first(), pl.col("timestamp").max())
    later = later.with_columns(pl.col("timestamp") + 1000).select(frame.columns)
    pl.concat([frame, later]).write_csv(source)
    runs = [_trigger(env), _trigger(env)]
    results = [_result(root, env, _finish(root, env, r)) for r in runs]
    ran = sorted(results, key=lambda r: len(r["stages"]), reverse=True)
    assert ran[0]["stages"][0] == "prepare" and "register" in ran[0]["stages"], ran
    assert ran[1]["stages"] == []  # it waited for the other one, then found nothing to do
    assert dvc_md5(root / "artifacts/models/siit") != model_hash
    assert ran[0]["registered"]["version"] == "2"

    # 5. MLflow: the stage runs of one execution share its tag, with git and data lineage
    with sqlite3.connect(root / "mlflow.db") as db:
        rows = db.execute(
            "select r.name, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'siit.pipeline_run'"
        ).fetchall()
        by_execution: dict[str, set[str]] = {}
        for name, value in rows:
            by_execution.setdefault(value, set()).add(name)
        assert any(
            {"tokenize", "static", "siit", "report", "register"} <= v for v in by_execution.values()
        )
        commits = {v for (v,) in db.execute("select value from tags where key = 'git.commit'")}
        assert len(commits) == 1 and len(next(iter(commits))) == 40
        inputs = {
            name
            for (name,) in db.execute(
                "select d.name from datasets d join inputs i on i.source_id = d.dataset_uuid"
            )
        }
        assert {"data/processed", "artifacts/tokenize/token_map.parquet"} <= inputs
        assert any(name.startswith("artifacts/token_maps/round_") for name in inputs)
        kind = db.execute(
            "select value from experiment_tags where key = 'mlflow.experimentKind'"
        ).fetchall()
        assert kind == [("custom_model_development",)]


@SLOW
def test_dvc_metrics_have_no_timings_and_a_remote_shares_outputs(served, tmp_path: Path) -> None:
    root, env, _ = served
    if not (root / "dvc.lock").exists():
        pytest.skip("the deployment test did not run")
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], root, env).stdout
    assert "seconds" not in shown and "ndcg@10" in shown

    remote = tmp_path / "remote"
    run([str(BIN / "dvc"), "remote", "add", "-d", "shared", str(remote)], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "a trained pipeline"], root, env)
    run([str(BIN / "dvc"), "push"], root, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    run([str(BIN / "dvc"), "pull"], clone, env)
    for path in ("data/processed", "artifacts/models/siit", "artifacts/token_maps"):
        assert dvc_md5(clone / path) == dvc_md5(root / path), path
    # nothing the remote carries is missing or stale (empty uncached dirs are git's blind spot)
    status = run([str(BIN / "dvc"), "status", "--json"], clone, env).stdout
    for path in ("data/processed", "data/raw", "artifacts/models", "artifacts/token_maps"):
        assert path not in status, status


def test_docker_files_define_cpu_cuda_serve_and_worker() -> None:
    """No container engine here: the files are checked statically (and by compose if present)."""
    dockerfile = (REPO / "docker/Dockerfile").read_text()
    assert "AS base-cpu" in dockerfile and "AS base-cuda" in dockerfile
    assert "FROM base-${TARGET}" in dockerfile
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert {"mlflow", "prefect", "pipeline", "worker", "serve"} <= set(services)
    assert services["worker"]["command"].startswith("siit deploy --cron")
    serve = services["serve"]["command"]
    assert "models:/siit-recommender@champion" in serve and "--env-manager local" in serve
    for service in services.values():
        assert service.get("init") is True  # signals reach siit; its children are reaped
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:")
    docker = shutil.which("docker")
    probe = (
        subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if docker
        else None
    )
    if probe is not None and probe.returncode == 0:
        proc = subprocess.run(
            [docker, "compose", "-f", str(REPO / "docker/compose.yaml"), "config", "-q"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
