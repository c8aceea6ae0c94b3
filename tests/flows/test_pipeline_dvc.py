"""The real pipeline: `dvc repro` in a temporary git repo on synthetic data, real Prefect and
MLflow; and the train stage checked against the models it trained there (both at once give the
same bytes as one after the other, a finished model is not trained again, both are subflows of
the stage in Prefect)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

TINY_PARAMS = {
    "data": {
        "source": "synthetic",
        "synthetic": {"n_users": 80, "n_items": 40, "n_clusters": 4, "mean_length": 10},
    },
    "tokenize": {"method": "random", "codebook_size": 8},
    "model": {
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 64,
        "text_vocab_size": 300,
        # random ids need no text embeddings: no sentence encoder to load in every test project
        "item_rows_init": "random",
    },
    "train": {"epochs": 2, "batch_size": 32},
    # text_coherence: no sentence encoder either (tests/flows/test_train_siit.py turns it on)
    "siit": {"rounds": 1, "candidates": 4, "beam_size": 8, "text_coherence": False},
    "evaluate": {"beam_size": 10, "top_k": 10},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def init_project(
    root: Path,
    prefect_env: dict[str, str],
    overrides: dict | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """`root` as a fresh git + DVC repository holding the pipeline definition, its code and
    params.yaml with TINY_PARAMS and `overrides` merged in, all committed (files already in
    `root`, such as input data or a .gitignore, are committed too); returns the environment
    its commands run in."""
    for name in ("dvc.yaml", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, root / name)
    for package in ("components", "flows"):  # stage deps: code changes must re-run stages
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    params = _merge(
        yaml.safe_load((REPO / "params.yaml").read_text()), _merge(TINY_PARAMS, overrides or {})
    )
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        **prefect_env,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
        **(extra_env or {}),
    }
    run(["git", "init", "-q"], root, env)
    run([str(BIN / "dvc"), "init", "-q"], root, env)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "init"], root, env)
    return env


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]
) -> tuple[Path, dict[str, str]]:
    """A fresh git + DVC repository holding the pipeline definition and tiny params."""
    root = tmp_path_factory.mktemp("project")
    env = init_project(root, prefect_env)
    env.pop("OMP_NUM_THREADS", None)  # the train stage shares the threads out itself
    return root, env


@pytest.fixture(scope="module")
def reproduced(project: tuple[Path, dict[str, str]]) -> subprocess.CompletedProcess:
    """`dvc repro` of the fresh project, once for the module: its train stage is `siit train`
    as it runs by default, both models at once (the tests below compare with it)."""
    root, env = project
    return run([str(BIN / "dvc"), "repro"], root, env)


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def loss_points(root: Path, model: str) -> int:
    """Training-loss points in MLflow: one per epoch trained, in the model's round runs."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return db.execute(
            "SELECT count(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "WHERE r.name LIKE ? AND m.key = 'train/loss'",
            (f"{model}-round-%",),
        ).fetchone()[0]


def test_dvc_repro_end_to_end(
    project: tuple[Path, dict[str, str]], reproduced: subprocess.CompletedProcess
) -> None:
    root, env = project
    first = reproduced
    stages = ran_stages(first.stdout)
    assert set(stages) == {
        "prepare",
        "validate",
        "tokenize",
        "base_model",
        "train",
        "report",
        "register",
    }
    assert (
        stages.index("prepare")
        < stages.index("validate")
        < stages.index("tokenize")
        < stages.index("train")
    )
    assert stages.index("report") < stages.index("register") == len(stages) - 1

    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert set(metrics) == {"popularity", "static", "siit", "improvement"}
    assert set(metrics["improvement"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "average"}
    for model in ("popularity", "static", "siit"):
        for split in ("valid", "test"):
            assert set(metrics[model][split]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10"}
            assert all(0.0 <= v <= 1.0 for v in metrics[model][split].values())

    recs = pl.read_parquet(root / "reports/recommendations_test.parquet")
    assert recs.columns == ["model", "user_id", "rank", "item_id", "target_item_id"]
    assert set(recs["model"]) == {"popularity", "static", "siit"}
    assert recs["rank"].min() == 1 and recs["rank"].max() == 10
    items = set(pl.read_parquet(root / "data/processed/items.parquet")["item_id"])
    assert set(recs["item_id"]) <= items  # the decoder never emits a non-item

    with sqlite3.connect(root / "mlflow.db") as db:
        runs = {name for (name,) in db.execute("select name from runs")}
        assert {"tokenize", "static", "siit", "siit-round-0", "siit-round-1", "report"} <= runs
        metric_keys = {k for (k,) in db.execute("select distinct key from metrics")}
        assert "train/loss" in metric_keys and "test/ndcg_at_10" in metric_keys

    # the train stage trained both models at once and removed their checkpoints
    assert "trained: static" in first.stdout + first.stderr
    assert loss_points(root, "static") > 0 and loss_points(root, "siit") > 0
    assert not any((root / "artifacts/checkpoints").glob("*/*")), "checkpoints left behind"

    # nothing changed: nothing runs
    second = run([str(BIN / "dvc"), "repro"], root, env)
    assert ran_stages(second.stdout) == []

    maps = sorted(p.name for p in (root / "artifacts/token_maps").iterdir())
    assert maps == ["round_000.parquet", "round_001.parquet"]
    rounds = pl.read_csv(root / "reports/rounds.csv")
    assert rounds["round"].to_list() == [0, 1] and "churn" in rounds.columns

    # one training param changed: only `train` is out of date, through that param (DVC
    # re-runs what depends on a re-run stage's outputs by itself; re-training here would
    # add a minute and test DVC, not the pipeline's definition)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["lr"] = 0.002
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run([str(BIN / "dvc"), "status", "--json"], root, env).stdout)
    assert set(status) == {"train"}
    assert status["train"] == [{"changed deps": {"params.yaml": {"train.lr": "modified"}}}], status


def test_validation_failure_stops_and_writes_nothing(
    project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = project
    if not any((root / "data/raw").glob("interactions.*")):  # run alone: no `dvc repro` before
        run([str(BIN / "siit"), "prepare"], root, env)
    work = tmp_path / "copy"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns("processed", "mlflow.db", "reports"))
    interactions = next((work / "data/raw").glob("interactions.*"))
    frame = pl.read_csv(interactions, infer_schema_length=0)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(None)
        .otherwise(pl.col("user_id"))
        .alias("user_id")
    )
    frame.write_csv(interactions)
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    proc = run([str(BIN / "siit"), "validate"], work, env, check=False)
    assert proc.returncode != 0
    assert interactions.name in proc.stderr and "user_id" in proc.stderr
    assert not (work / "data/processed").exists()
    assert not (work / "reports/data_validation.json").exists()


# The train stage's two ways of running, compared with the models `dvc repro` trained above
# (both at once, the default): one `siit train` fewer than a run of its own for the comparison.


def outcome(root: Path) -> dict[str, object]:
    """Everything both models produced, timings left out."""
    out: dict[str, object] = {}
    for mode in ("static", "siit"):
        report = json.loads((root / f"reports/models/{mode}.json").read_text())
        report.pop("train_seconds")
        for row in report["rounds"]:
            row.pop("seconds")
        out[mode] = report
        out[f"{mode}/recs"] = (
            root / f"reports/models/{mode}_recommendations_test.parquet"
        ).read_bytes()
        weights = sorted((root / f"artifacts/models/{mode}/model").glob("*.safetensors"))
        out[f"{mode}/weights"] = [p.read_bytes() for p in weights]
        out[f"{mode}/map"] = (root / f"artifacts/models/{mode}/token_map.parquet").read_bytes()
    for path in sorted((root / "artifacts/token_maps").glob("*.parquet")):
        out[path.name] = path.read_bytes()
    return out


def test_in_turn_after_a_stop_gives_the_same_models_and_trains_nothing_twice(
    project: tuple[Path, dict[str, str]],
    reproduced: subprocess.CompletedProcess,
    tiny_prepared: Path,
    tmp_path: Path,
) -> None:
    """The stage stopped after the static model had finished, re-run in turn
    (`train.concurrent: false`, every thread for each model, or one where the thread count
    changes this CPU's results): the static model is not trained again, and every output is
    the same bytes as both models trained at once on one thread each by `dvc repro`."""
    from components.thread_share import thread_count_changes_results
    from tests.flows.conftest import copy_prepared

    root, env = project
    resumed = tmp_path / "resumed"
    # where this CPU's products change with the thread count, "at once" kept one thread each
    # (no hand-off): in turn then runs on one thread too, else on every thread
    fixed = {"threads": 1} if thread_count_changes_results() else {}
    env_b = copy_prepared(tiny_prepared, resumed, env, {"train": {"concurrent": False, **fixed}})
    # the static model finished (its checkpoint kept, as the stage keeps it) ...
    run([str(BIN / "siit"), "train_static"], resumed, {**env_b, "SIIT_KEEP_CHECKPOINT": "1"})
    assert (resumed / "artifacts/checkpoints/static").is_dir()
    trained = loss_points(resumed, "static")
    for out in ("artifacts/models/static", "reports/models"):  # ... and DVC removes outputs
        shutil.rmtree(resumed / out)

    run([str(BIN / "siit"), "train"], resumed, env_b)
    assert loss_points(resumed, "static") == trained, "the finished model trained again"
    assert outcome(resumed) == outcome(root)
    assert not any((resumed / "artifacts/checkpoints").glob("*/*"))


def test_both_models_are_subflows_of_the_stage_in_prefect(
    reproduced: subprocess.CompletedProcess, prefect_env: dict[str, str]
) -> None:
    """The Prefect UI nests each model's flow run under the stage's: a `train_<mode>` task run
    of the train-models flow run stands for the process, completed with it."""
    import httpx

    api = prefect_env["PREFECT_API_URL"]

    def post(path: str, body: dict) -> list[dict]:
        response = httpx.post(f"{api}/{path}", json={"limit": 200, **body}, timeout=30)
        response.raise_for_status()
        return response.json()

    flows = {f["id"]: f["name"] for f in post("flows/filter", {})}
    stages = [r for r in post("flow_runs/filter", {}) if flows[r["flow_id"]] == "train-models"]
    nested = {}
    for stage in stages:
        tasks = post("task_runs/filter", {"flow_runs": {"id": {"any_": [stage["id"]]}}})
        children = post(
            "flow_runs/filter",
            {"flow_runs": {"parent_task_run_id": {"any_": [t["id"] for t in tasks]}}},
        )
        if stage["state"]["type"] == "COMPLETED" and children:
            nested[stage["id"]] = (tasks, children)
    assert nested, "no train-models flow run with nested model runs"
    tasks, children = next(iter(nested.values()))
    by_task = {t["id"]: t for t in tasks}
    modes = {}
    for child in children:
        parent = by_task[child["parent_task_run_id"]]
        assert flows[child["flow_id"]] == "train"
        assert parent["name"].startswith(f"train_{child['parameters']['mode']}")
        assert parent["state"]["type"] == child["state"]["type"] == "COMPLETED"
        modes[child["parameters"]["mode"]] = child["id"]
    assert sorted(modes) == ["siit", "static"]
