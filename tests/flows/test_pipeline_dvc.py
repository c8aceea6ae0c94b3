"""The real pipeline: `dvc repro` in a temporary git repo on synthetic data, real Prefect and MLflow."""

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
    "siit": {"rounds": 1, "candidates": 4, "beam_size": 8},
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
    return root, init_project(root, prefect_env)


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_dvc_repro_end_to_end(project: tuple[Path, dict[str, str]]) -> None:
    root, env = project
    first = run([str(BIN / "dvc"), "repro"], root, env)
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
