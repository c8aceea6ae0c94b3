"""A tiny project prepared once per session (prepare, validate, tokenize on TINY_PARAMS):
the training tests copy it instead of running the three stages again each."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.flows.test_pipeline_dvc import REPO, TINY_PARAMS, _merge, run

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]) -> Path:
    """Read-only: copy it with `copy_prepared`."""
    root = tmp_path_factory.mktemp("tiny-prepared")
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **prefect_env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    for stage in ("prepare", "validate", "tokenize"):
        run([str(BIN / "siit"), stage], root, env)
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
