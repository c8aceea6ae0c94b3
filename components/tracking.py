"""Every MLflow call of the project lives here.

Runs use `sqlite:///mlflow.db` by default; `MLFLOW_TRACKING_URI` in the environment wins
over params.yaml so tests and CI can point anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.config import TrackingConfig


def tracking_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"train.epochs": 4, ...} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@contextmanager
def start_run(
    cfg: TrackingConfig,
    run_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    nested: bool = False,
    run_id: str | None = None,
) -> Iterator[Any]:
    """An MLflow run (nested under the active one when `nested`; `run_id` resumes one)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    if not nested:
        mlflow.set_experiment(cfg.experiment)
    kwargs = {"run_id": run_id} if run_id else {"run_name": run_name, "tags": dict(tags or {})}
    with mlflow.start_run(nested=nested, **kwargs) as run:
        yield run


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    flat = flatten(params)
    # MLflow caps a param value at 6000 chars and a batch at 100 params
    items = [(k, str(v)[:6000]) for k, v in flat.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
    import mlflow

    clean = {f"{prefix}{k.replace('@', '_at_')}": float(v) for k, v in metrics.items()}
    mlflow.log_metrics(clean, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dict(obj: Mapping[str, Any], name: str) -> None:
    import mlflow

    mlflow.log_dict(dict(obj), name)
