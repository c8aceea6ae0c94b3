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
        if report.get("valid_cross_fitted"):  # the best epoch's validation without its bias
            metrics[name]["valid_cross_fitted"] = report["valid_cross_fitted"]
        frames.append(pl.read_parquet(paths.model_recommendations(name)))
    metrics["improvement"] = relative_improvement(
        metrics["siit"]["test"], metrics["static"]["test"]
    )
    atomic_write_json(paths.reports / "metrics.json", metrics)
    atomic_write_parquet(pl.concat(frames), paths.reports / "recommendations_test.parquet")
    get_run_logger().info("\n%s", format_metrics_table(metrics))
    plots = plots_task(paths)
    with tracking.start_run(params.tracking, "report", tags={"stage": "report"}):
        for model in ("popularity", *MODELS):
            for split, values in metrics[model].items():
                tracking.log_metrics(values, prefix=f"{model}/{split}/")
        tracking.log_metrics(metrics["improvement"], prefix="improvement/")
        tracking.log_artifact(paths.reports / "metrics.json", "reports")
        for plot in plots:
            tracking.log_artifact(plot, "plots")
    attach_plots_task(params, paths, plots)
    return str(paths.reports / "metrics.json")


@task(name="round-plots", cache_policy=NO_CACHE)
def plots_task(paths: Paths) -> list[Path]:
    """PNGs: validation NDCG@10 per round (both models), SIIT's churn per round, code usage."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = paths.reports / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = {m: paths.rounds_csv(m) for m in MODELS if paths.rounds_csv(m).exists()}
    frames = {m: pl.read_csv(p) for m, p in rounds.items()}
    written: list[Path] = []
    panels = [("valid_ndcg@10", "validation NDCG@10", list(frames))]
    if "siit" in frames and "churn" in frames["siit"].columns:
        panels.append(("churn", "identifiers changed by refinement (SIIT)", ["siit"]))
    for column, title, models in panels:
        figure = Figure(figsize=(5.0, 3.2), layout="constrained")
        FigureCanvasAgg(figure)
        ax = figure.subplots()
        for model in models:
            frame = frames[model].drop_nulls(column) if column in frames[model].columns else None
            for label, rows in _series(model, frame):
                ax.plot(rows["round"], rows[column], marker="o", label=label)
        ax.set_xlabel("round")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        path = out_dir / f"{column.replace('@', '_at_')}_per_round.png"
        figure.savefig(path, format="png", dpi=100)
        written.append(path)
    code_usage = paths.reports / "code_usage.png"
    return [*written, *([code_usage] if code_usage.exists() else [])]


def _series(model: str, frame: pl.DataFrame | None) -> list[tuple[str, pl.DataFrame]]:
    """A model's rows to plot; with siit.retrain (a `phase` column) the probe and the fresh
    model as two lines, the fresh model's rounds counted from 0 like static's."""
    if frame is None or not frame.height:
        return []
    if "phase" not in frame.columns:
        return [(model, frame)]
    probe = frame.filter(pl.col("phase") == "probe")
    fresh = frame.filter(pl.col("phase") == "retrain")
    fresh = fresh.with_columns(pl.col("round") - pl.col("round").min())
    series = [(f"{model} (probe)", probe), (f"{model} (retrained)", fresh)]
    return [(label, rows) for label, rows in series if rows.height]


@task(name="attach-plots", cache_policy=NO_CACHE)
def attach_plots_task(params: Params, paths: Paths, plots: list[Path]) -> None:
    """The same plots on the training runs that made the reported models (comparable runs)."""
    for model in MODELS:
        valid = _read_json(paths.model_report(model))["valid"]["ndcg@10"]
        run_id = tracking.find_run(
            params.tracking, f"train_{model}", "best_valid/ndcg_at_10", valid
        )
        if run_id:
            for plot in plots:
                tracking.log_artifact_to_run(params.tracking, run_id, plot, "plots")


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run its training stage first (dvc repro)")
    return json.loads(path.read_text())
