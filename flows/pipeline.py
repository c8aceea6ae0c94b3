"""One Prefect flow per DVC stage; each task is one step (load, validate, train an epoch, ...).

Flows return paths; all ML logic is in `components`. I/O tasks retry, compute tasks don't.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components import tracking
from components.config import Params, load_params
from components.data import Dataset, build_dataset, fetch_raw, load_raw, validate_raw
from components.evaluation import evaluate_ranking, recommend_popular, recommendations_frame
from components.io import atomic_write_json, atomic_write_parquet
from components.model.recommender import GenerativeRecommender, pick_device
from components.model.session import TrainingSession
from components.paths import Paths
from components.reporting import MODEL_ORDER, format_metrics_table
from components.tokenizers import TokenMap, build_token_map, embed_texts, plot_code_usage, validate_token_map

IO = {"retries": 2, "retry_delay_seconds": 2}


# prepare ----------------------------------------------------------------------------
@task(name="fetch-raw-data", **IO)
def fetch_raw_task(params: Params, paths: Paths) -> list[str]:
    return [str(p) for p in fetch_raw(params.data, paths.raw)]


@flow(name="prepare")
def prepare_flow(params_file: str = "params.yaml", root: str = ".") -> list[str]:
    """Materialise the configured raw data source under data/raw (immutable snapshot)."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    files = fetch_raw_task(params, paths)
    get_run_logger().info("raw data: %s", ", ".join(files))
    return files


# validate ---------------------------------------------------------------------------
@task(name="load-raw-data", cache_policy=NO_CACHE)
def load_raw_task(params: Params, paths: Paths):
    return load_raw(params.data, paths.raw)


@task(name="validate-raw-data", cache_policy=NO_CACHE)
def validate_raw_task(raw, params: Params) -> dict:
    return validate_raw(raw, params.data)


@task(name="split-and-write", cache_policy=NO_CACHE)
def write_dataset_task(raw, params: Params, paths: Paths, report: dict) -> str:
    dataset = build_dataset(raw, params.data)
    dataset.write(paths.processed)
    summary = {"users": dataset.n_users, "items": dataset.n_items, "interactions": int(sum(len(s) for s in dataset.sequences))}
    atomic_write_json(paths.reports / "data_validation.json", {**report, "dataset": summary})
    return str(paths.processed)


@flow(name="validate")
def validate_flow(params_file: str = "params.yaml", root: str = ".") -> str:
    """Great Expectations on the raw data, then the leave-one-out dataset; nothing is written on failure."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    raw = load_raw_task(params, paths)
    report = validate_raw_task(raw, params)
    return write_dataset_task(raw, params, paths, report)


# tokenize ---------------------------------------------------------------------------
@task(name="load-dataset", cache_policy=NO_CACHE, **IO)
def load_dataset_task(paths: Paths) -> Dataset:
    return Dataset.read(paths.processed)


@task(name="embed-item-texts", cache_policy=NO_CACHE)
def embed_task(dataset: Dataset, params: Params, paths: Paths) -> np.ndarray:
    return embed_texts(dataset.item_texts(), params.tokenize.encoder, paths.embeddings_cache)


@task(name="build-token-map", cache_policy=NO_CACHE)
def build_token_map_task(dataset: Dataset, params: Params, embeddings: np.ndarray | None) -> TokenMap:
    return build_token_map(
        params.tokenize.method,
        params.tokenize,
        item_ids=dataset.item_ids(),
        texts=dataset.item_texts(),
        train_sequences=dataset.train_sequences(),
        embeddings=embeddings,
    )


@flow(name="tokenize")
def tokenize_flow(params_file: str = "params.yaml", root: str = ".") -> str:
    """Round-0 identifiers from the configured initial tokenizer, validated, with statistics."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    dataset = load_dataset_task(paths)
    needs_embeddings = params.tokenize.method in ("rqvae", "rqkmeans")
    embeddings = embed_task(dataset, params, paths) if needs_embeddings else None
    token_map = build_token_map_task(dataset, params, embeddings)
    validate_token_map(token_map, dataset.item_ids(), str(paths.initial_token_map))
    token_map.save(paths.initial_token_map)
    stats = token_map.metadata.get("stats", {})
    atomic_write_json(paths.reports / "tokenize.json", {"method": params.tokenize.method, **stats})
    plot_code_usage(token_map, paths.reports / "code_usage.png")
    with tracking.start_run(params.tracking, "tokenize", tags={"stage": "tokenize"}):
        tracking.log_params({"tokenize": params.tokenize.model_dump()})
        tracking.log_metrics({k: v for k, v in _scalars(stats).items()})
        tracking.log_artifact(paths.initial_token_map, "token_map")
        tracking.log_artifact(paths.reports / "code_usage.png", "plots")
    return str(paths.initial_token_map)


def _scalars(stats: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested stats dict, with dotted names (for MLflow metrics)."""
    out: dict[str, float] = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            out.update({f"{prefix}{key}.{i}": float(v) for i, v in enumerate(value) if isinstance(v, int | float)})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


# train ------------------------------------------------------------------------------
@task(name="build-model", cache_policy=NO_CACHE)
def build_session_task(dataset: Dataset, token_map: TokenMap, params: Params) -> TrainingSession:
    rec = GenerativeRecommender.create(
        params.model, token_map.codebook_sizes, dataset.item_texts() + dataset.item_titles(), seed=params.train.seed
    )
    rec.model.to(pick_device())
    return TrainingSession(rec, dataset, token_map.codes, params.train, params.evaluate, params.train.epochs)


@task(name="train-epoch", cache_policy=NO_CACHE)
def train_epoch_task(session: TrainingSession) -> dict[str, float]:
    return session.train_epoch()


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(session: TrainingSession, split: str) -> tuple[dict[str, float], np.ndarray]:
    return session.evaluate(split)


@task(name="save-model", cache_policy=NO_CACHE, **IO)
def save_model_task(session: TrainingSession, path: Path) -> str:
    session.rec.save(path)
    return str(path)


@flow(name="train")
def train_flow(params_file: str = "params.yaml", root: str = ".", name: str = "generative") -> str:
    """Train the generative recommender on the initial token map; select on validation, test once."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    logger = get_run_logger()
    _threads(params)
    dataset = load_dataset_task(paths)
    token_map = TokenMap.load(paths.initial_token_map)
    validate_token_map(token_map, dataset.item_ids(), str(paths.initial_token_map))
    with tracking.start_run(params.tracking, name, tags={"stage": "train", "model": name}):
        tracking.log_params(params.model_dump(exclude={"tracking"}))
        session = build_session_task(dataset, token_map, params)
        history = []
        for _ in range(params.train.epochs):
            stats = train_epoch_task(session)
            valid, _ = evaluate_task(session, "valid")
            best = session.select(valid)
            epoch = int(stats["epoch"])
            tracking.log_metrics({"loss": stats["loss"], "tokens_per_s": stats["tokens_per_s"]}, step=epoch, prefix="train/")
            tracking.log_metrics(valid, step=epoch, prefix="valid/")
            history.append({"epoch": epoch, "loss": stats["loss"], "seconds": stats["seconds"], **{f"valid_{k}": v for k, v in valid.items()}})
            logger.info("epoch %d loss %.4f valid ndcg@10 %.4f%s", epoch, stats["loss"], valid["ndcg@10"], " (best)" if best else "")
        session.restore_best()
        valid, _ = evaluate_task(session, "valid")
        test, ranked = evaluate_task(session, "test")
        tracking.log_metrics(valid, prefix="best_valid/")
        tracking.log_metrics(test, prefix="test/")
        save_model_task(session, paths.model_dir(name))
        report = {"valid": valid, "test": test, "best_epoch": session.best_epoch, "epochs": history}
        atomic_write_json(paths.model_report(name), report)
        pl.DataFrame(history).write_csv(paths.reports / "models" / f"{name}_epochs.csv")
        recs = recommendations_frame(name, dataset.eval_split("test"), ranked, dataset.item_ids())
        atomic_write_parquet(recs, paths.model_recommendations(name))
        tracking.log_artifact(paths.model_report(name), "reports")
        tracking.log_artifact(paths.initial_token_map, "token_map")
        tracking.log_artifact(paths.model_dir(name), "model")
    return str(paths.model_dir(name))


def _threads(params: Params) -> None:
    if params.train.threads:
        import torch

        torch.set_num_threads(params.train.threads)


# report -----------------------------------------------------------------------------
@task(name="popularity-baseline", cache_policy=NO_CACHE)
def popularity_task(dataset: Dataset, params: Params) -> dict:
    out: dict = {}
    ranked_test = None
    for split in ("valid", "test"):
        s = dataset.eval_split(split)
        ranked = recommend_popular(dataset.popularity(), s, params.evaluate.top_k, params.evaluate.exclude_seen)
        out[split] = evaluate_ranking(ranked, s)
        ranked_test = ranked
    return {"metrics": out, "ranked_test": ranked_test}


@flow(name="report")
def report_flow(params_file: str = "params.yaml", root: str = ".", models: tuple[str, ...] = ("generative",)) -> str:
    """Baselines + every trained model side by side: metrics.json and the test recommendations."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    dataset = load_dataset_task(paths)
    pop = popularity_task(dataset, params)
    metrics = {"popularity": pop["metrics"]}
    frames = [recommendations_frame("popularity", dataset.eval_split("test"), pop["ranked_test"], dataset.item_ids())]
    for name in models:
        report = _read_json(paths.model_report(name))
        metrics[name] = {"valid": report["valid"], "test": report["test"]}
        frames.append(pl.read_parquet(paths.model_recommendations(name)))
    ordered = {k: metrics[k] for k in sorted(metrics, key=lambda m: MODEL_ORDER.get(m, 99))}
    atomic_write_json(paths.reports / "metrics.json", ordered)
    atomic_write_parquet(pl.concat(frames), paths.reports / "recommendations_test.parquet")
    get_run_logger().info("\n%s", format_metrics_table(ordered))
    with tracking.start_run(params.tracking, "report", tags={"stage": "report"}):
        for model, splits in ordered.items():
            for split, values in splits.items():
                tracking.log_metrics(values, prefix=f"{model}/{split}/")
        tracking.log_artifact(paths.reports / "metrics.json", "reports")
    return str(paths.reports / "metrics.json")


def _read_json(path: Path) -> dict:
    import json

    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run its training stage first (dvc repro)")
    return json.loads(path.read_text())


STAGE_FLOWS = {
    "prepare": prepare_flow,
    "validate": validate_flow,
    "tokenize": tokenize_flow,
    "train": train_flow,
    "report": report_flow,
}
