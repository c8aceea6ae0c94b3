"""Stage `report`: baselines and trained models side by side, SIIT's improvement over static."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components import tracking
from components.config import Params, load_params
from components.data import Dataset
from components.evaluation import evaluate_ranking, recommend_popular, recommendations_frame
from components.io import atomic_write_json, atomic_write_parquet
from components.metrics import METRIC_NAMES
from components.paths import Paths
from components.reporting import format_metrics_table
from flows.common import load_dataset_task

MODELS = ("static", "siit")


@task(name="popularity-baseline", cache_policy=NO_CACHE)
def popularity_task(dataset: Dataset, params: Params) -> tuple[dict, pl.DataFrame]:
    metrics: dict = {}
    for split in ("valid", "test"):
        s = dataset.eval_split(split)
        ranked = recommend_popular(
            dataset.popularity(), s, params.evaluate.top_k, params.evaluate.exclude_seen
        )
        metrics[split] = evaluate_ranking(ranked, s)
    return metrics, recommendations_frame("popularity", s, ranked, dataset.item_ids())


def relative_improvement(siit: dict[str, float], static: dict[str, float]) -> dict[str, float]:
    """(siit - static) / static per metric, plus their average."""
    out = {m: (siit[m] - static[m]) / static[m] if static[m] else 0.0 for m in METRIC_NAMES}
    out["average"] = sum(out[m] for m in METRIC_NAMES) / len(METRIC_NAMES)
    return out


@flow(name="report")
def report_flow(params_file: str = "params.yaml", root: str = ".") -> str:
    """metrics.json (valid and test per model), the test recommendations, the printed table."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    dataset = load_dataset_task(paths)
    pop_metrics, pop_recs = popularity_task(dataset, params)
    metrics: dict = {"popularity": pop_metrics}
    frames = [pop_recs]
    for name in MODELS:
        report = _read_json(paths.model_report(name))
        metrics[name] = {"valid": report["valid"], "test": report["test"]}
        frames.append(pl.read_parquet(paths.model_recommendations(name)))
    metrics["improvement"] = relative_improvement(
        metrics["siit"]["test"], metrics["static"]["test"]
    )
    atomic_write_json(paths.reports / "metrics.json", metrics)
    atomic_write_parquet(pl.concat(frames), paths.reports / "recommendations_test.parquet")
    get_run_logger().info("\n%s", format_metrics_table(metrics))
    with tracking.start_run(params.tracking, "report", tags={"stage": "report"}):
        for model in ("popularity", *MODELS):
            for split, values in metrics[model].items():
                tracking.log_metrics(values, prefix=f"{model}/{split}/")
        tracking.log_metrics(metrics["improvement"], prefix="improvement/")
        tracking.log_artifact(paths.reports / "metrics.json", "reports")
    return str(paths.reports / "metrics.json")


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run its training stage first (dvc repro)")
    return json.loads(path.read_text())
