"""A tiny project prepared once per session (prepare, validate, tokenize on TINY_PARAMS):
the training tests copy it instead of running the three stages again each."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import flows_in
from tests.flows.test_pipeline_dvc import REPO, TINY_PARAMS, _merge


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]) -> Path:
    """Read-only: copy it with `copy_prepared`. The three stages' flows run in this process
    against the session's Prefect server: three interpreter starts fewer per test worker (the
    console script runs them in `dvc repro` and the bad-data corpus)."""
    from flows.data import prepare_flow, validate_flow
    from flows.tokenize import tokenize_flow

    root = tmp_path_factory.mktemp("tiny-prepared")
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with flows_in(root, prefect_env):
        for stage in (prepare_flow, validate_flow, tokenize_flow):
            stage(root=str(root))
    return root


def copy_prepared(
    src: Path, dst: Path, env: dict[str, str], override: dict | None = None
) -> dict[str, str]:
    """A copy of a prepared project with `override` merged into its params; its environment
    (its own MLflow database)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("logs", "__pycache__"))
    if override:
        params = _merge(yaml.safe_load((dst / "params.yaml").read_text()), override)
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{dst / 'mlflow.db'}"}
