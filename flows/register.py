"""Stage `register`: the final models as MLflow pyfunc recommenders, SIIT's registered, and the
`champion` alias moved only when the new version beats the champion on validation NDCG@10
on the same data.

Each model is logged into the training run that made it (so the runs table's Model column
says which model a run produced); the SIIT model is registered under
`tracking.registered_model`. The decision, both figures and the dataset fingerprint are tags
on the new version and on this stage's own MLflow run; `artifacts/registered_model.json`
records them for DVC.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components import tracking
from components.config import Params, load_params
from components.data import Dataset
from components.io import atomic_write_json
from components.paths import ITEM_ENCODER_DIR, MODEL_DIR, RECORD_FILE, TOKEN_MAP_FILE, Paths
from components.serving import SERVING_CONFIG, ServingConfig, ndcg_at_k
from flows.common import IO, load_dataset_task

MODELS = ("siit", "static")  # the SIIT model is registered; static is logged for comparison
RECORD = "artifacts/registered_model.json"


def serving_config(params: Params) -> ServingConfig:
    return ServingConfig(
        default_k=params.evaluate.top_k,
        beam_size=params.evaluate.beam_size,
        max_history=params.data.max_history,
        batch_size=min(64, params.evaluate.batch_size),
        item_weight=params.evaluate.item_weight,
        row_candidates=params.evaluate.row_candidates,
    )


def make_bundle(model_dir: Path, config: ServingConfig, dest: Path) -> Path:
    """model/ + token_map.parquet (the training stage's output) + serving.json in `dest`, and
    item_encoder/ + warm_start.json when the training stage wrote them."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir / MODEL_DIR, dest / MODEL_DIR)
    shutil.copy2(model_dir / TOKEN_MAP_FILE, dest / TOKEN_MAP_FILE)
    config.write(dest / SERVING_CONFIG)
    # for champion starts: the fitted initial tokenizer and the compatibility record
    if (model_dir / ITEM_ENCODER_DIR).is_dir():
        shutil.copytree(model_dir / ITEM_ENCODER_DIR, dest / ITEM_ENCODER_DIR)
    if (model_dir / RECORD_FILE).is_file():
        shutil.copy2(model_dir / RECORD_FILE, dest / RECORD_FILE)
    return dest


def validation_request(dataset: Dataset):
    """Every user's training items (oldest first) as a request, and the validation targets."""
    import pandas as pd

    ids = dataset.item_ids()
    histories = [[ids[i] for i in seq] for seq in dataset.train_sequences()]
    targets = [ids[seq[-2]] for seq in dataset.sequences]
    return pd.DataFrame({"history": histories}), targets


def served_ndcg(params: Params, dataset: Dataset, model_uri: str) -> float:
    """Validation NDCG@10 of a registered model through its pyfunc interface (any catalogue)."""
    model = tracking.load_pyfunc(params.tracking, model_uri)
    request, targets = validation_request(dataset)
    answers = model.predict(request, params={"k": 10})
    return ndcg_at_k(answers["item_ids"].tolist(), targets, k=10)


@task(name="log-model", cache_policy=NO_CACHE, **IO)
def log_model_task(
    params: Params, mode: str, bundle: Path, valid: dict[str, float], register: bool, example
) -> tuple[str, str, str | None]:
    """Into the training run that made the model (found by its validation figure)."""
    run_id = tracking.find_run(
        params.tracking, f"train_{mode}", "best_valid/ndcg_at_10", valid["ndcg@10"]
    )
    return tracking.log_recommender(
        params.tracking,
        bundle,
        run_id=run_id,
        registered_model=params.tracking.registered_model if register else None,
        input_example=example,
        metrics={f"valid_{k.replace('@', '_at_')}": v for k, v in valid.items()},
    )


@task(name="gate-champion", cache_policy=NO_CACHE)
def gate_task(
    params: Params, dataset: Dataset, version: str, score: float, fingerprint: str
) -> tracking.GateDecision:
    return tracking.gate_champion(
        params.tracking,
        version,
        score=score,
        fingerprint=fingerprint,
        rescore=lambda uri: served_ndcg(params, dataset, uri),
    )


@flow(name="register")
def register_flow(params_file: str = "params.yaml", root: str = ".") -> dict:
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    logger = get_run_logger()
    dataset = load_dataset_task(paths)
    fingerprint = tracking.dvc_md5(paths.processed)
    config = serving_config(params)
    example = validation_request(dataset)[0].head(2)
    logged: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=paths.models) as tmp:
        for mode in MODELS:
            report = _read_json(paths.model_report(mode))
            bundle = make_bundle(paths.model_dir(mode), config, Path(tmp) / mode)
            run_id, uri, version = log_model_task(
                params, mode, bundle, report["valid"], mode == "siit", example
            )
            logged[mode] = {"run_id": run_id, "model_uri": uri, "version": version}
    siit_valid = _read_json(paths.model_report("siit"))["valid"]["ndcg@10"]
    version = logged["siit"]["version"]
    decision = gate_task(params, dataset, version, siit_valid, fingerprint)
    logger.info(
        "%s version %s: %s (%s)",
        params.tracking.registered_model,
        version,
        decision.tags["champion.decision"],
        decision.reason,
    )
    record = {
        "registered_model": params.tracking.registered_model,
        "version": version,
        "model_uri": f"models:/{params.tracking.registered_model}/{version}",
        "champion": decision.promoted,
        "champion_version": version if decision.promoted else decision.champion_version,
        "reason": decision.reason,
        "challenger_valid_ndcg_at_10": decision.challenger,
        "champion_valid_ndcg_at_10": _finite(decision.champion),
        "dataset_fingerprint": fingerprint,
        "logged": logged,
    }
    with tracking.start_run(params.tracking, "register", tags={"stage": "register"}):
        tracking.set_tags(
            {
                "registered_model": params.tracking.registered_model,
                "registered_version": version,
                **decision.tags,
            }
        )
        tracking.log_metrics({"challenger_valid_ndcg_at_10": decision.challenger})
        if _finite(decision.champion) is not None:
            tracking.log_metrics({"champion_valid_ndcg_at_10": decision.champion})
    atomic_write_json(Path(root) / RECORD, record)
    logger.info("runs table (`make ui` first): %s", tracking.ui_link(params.tracking))
    return record


def _finite(value: float | None) -> float | None:
    return value if value is not None and abs(value) != float("inf") else None


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run its training stage first (dvc repro)")
    return json.loads(path.read_text())
