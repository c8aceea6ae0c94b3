"""Training stages: `static` (initial map frozen) and `siit` (self-improving rounds).

Both train the same epoch budget from the same seed and map; they differ only in the
refinement after each round. Each round is a set of Prefect tasks and a nested MLflow run;
a checkpoint after every round lets a killed run resume where it stopped. With
`siit.retrain` the SIIT model's co-trained rounds are a probe that makes the map, and a fresh
model then trains on the final map in static's rounds (train-refine-retrain).

Under `torchrun` every rank trains the same steps (DDP); rank 0 alone validates, refines,
checkpoints, logs to MLflow and writes the outputs, and hands its map to the others after
every round.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components import tracking
from components.config import Params, TrainConfig, load_params
from components.data import Dataset
from components.evaluation import recommendations_frame
from components.io import atomic_dir, atomic_write_csv, atomic_write_json, atomic_write_parquet
from components.metrics import cross_fitted_metrics, target_ranks
from components.model import distributed
from components.model.recommender import GenerativeRecommender, pick_device
from components.model.session import TrainingSession, WindowLosses, evaluate_model
from components.paths import Paths
from components.siit.checkpoint import RunCheckpoint, RunState
from components.siit.fingerprint import combine, run_fingerprints
from components.siit.refine import (
    background_histories,
    expected_contexts,
    held_out_contexts,
    refine_identifiers,
    text_holdout,
    training_contexts,
)
from components.siit.warm_start import (
    ITEM_ENCODER_DIR,
    RECORD_FILE,
    WarmStart,
    incompatibility,
    load_warm_start,
    warm_start_record,
)
from components.thread_share import SHARE_ENV, ThreadShare
from components.tokenizers import TokenMap, embed_texts, text_coherence, validate_token_map
from components.tokenizers.item_encoder import CONFIG_FILE as ENCODER_CONFIG
from flows.common import (
    IO,
    KEEP_CHECKPOINT_ENV,
    embed_task,
    load_dataset_task,
    scalars,
    set_threads,
)

Mode = Literal["static", "siit"]


@task(name="resolve-start", cache_policy=NO_CACHE, **IO)
def resolve_start_task(params: Params, paths: Paths, dataset: Dataset) -> dict:
    """`train.start`: scratch, or the champion's folder when there is a compatible one (else
    scratch, with the reason as `fallback`)."""
    if params.train.start == "scratch":
        return {"start": "scratch"}
    if params.train.champion:
        folder = Path(params.train.champion).expanduser()
        folder = folder if folder.is_absolute() else paths.root / folder
        if not folder.is_dir():
            raise FileNotFoundError(f"train.champion: {folder} is not a model folder")
        label = str(folder)
    else:
        found = tracking.download_champion(params.tracking, paths.champion)
        if found is None:
            name = params.tracking.registered_model
            return {"start": "scratch", "fallback": f"no champion registered under {name}"}
        folder, version = found
        label = f"models:/{params.tracking.registered_model}/{version}"
    reason = incompatibility(folder, params, dataset.item_ids())
    if reason is not None:
        return {"start": "scratch", "champion": label, "fallback": reason}
    return {"start": "champion", "champion": label, "source": str(folder)}


@task(name="warm-start", cache_policy=NO_CACHE)
def warm_start_task(source: str, params: Params, paths: Paths, dataset: Dataset) -> WarmStart:
    """The champion's model and identifiers; new items' identifiers (`tokenize.new_items`)."""
    return load_warm_start(
        Path(source),
        params,
        dataset.item_ids(),
        dataset.item_texts(),
        lambda texts, encoder: embed_texts(texts, encoder, paths.embeddings_cache),
        device=pick_device(),
    )


def training_config(params: Params, start: dict) -> tuple[TrainConfig, list[int]]:
    """The schedule of this start: `train` from scratch, `train.warm` from the champion."""
    if start["start"] != "champion":
        return params.train, params.round_epochs()
    warm = params.train.warm
    cfg = params.train.model_copy(
        update={"epochs": warm.epochs, "lr": warm.lr, "warmup_ratio": warm.warmup_ratio}
    )
    return cfg, params.warm_round_epochs()


@task(name="build-model", cache_policy=NO_CACHE)
def build_session_task(
    dataset: Dataset,
    token_map: TokenMap,
    params: Params,
    ckpt: RunCheckpoint,
    resume: RunState | None,
    warm: GenerativeRecommender | None = None,
    train_cfg: TrainConfig | None = None,
    item_features: np.ndarray | None = None,
) -> TrainingSession:
    """A fresh model, the champion's (`warm`), or the checkpoint's when resuming. A fresh
    model's item rows and identifier rows start from `item_features` when given, as
    `model.item_rows_init` and `model.code_rows_init` say."""
    train_cfg = train_cfg or params.train
    if resume is None and warm is not None:
        rec, codes = warm, token_map.codes
    elif resume is None:
        rec = GenerativeRecommender.create(
            params.model,
            token_map.codebook_sizes,
            dataset.item_texts() + dataset.item_titles(),
            seed=params.train.seed,
            n_items=dataset.n_items,
        )
        if item_features is not None and params.model.rows_from_text:
            rec.init_item_rows(item_features)
        if item_features is not None and params.model.codes_from_text:
            rec.init_code_rows(item_features, token_map.codes)
        if params.model.text_token:
            if item_features is None:
                raise ValueError("model.text_token: a fresh model needs the items' text embeddings")
            rec.init_text_rows(item_features)
        rec.model.to(pick_device())
        codes = token_map.codes
    else:
        rec = GenerativeRecommender.load(ckpt.model_dir())
        codes = ckpt.codes()
    session = TrainingSession(
        rec,
        dataset,
        codes,
        train_cfg,
        params.evaluate,
        train_cfg.epochs,
        # the tiny llama's (t5's model.dropout covers those outputs; pretrained: none)
        residual_dropout=params.model.residual_dropout
        if rec.architecture == "llama" and rec.profile == "tiny"
        else 0.0,
    )
    if resume is not None:
        session.trainer.load_state_dict(ckpt.trainer_state())
    return session


@task(name="train-epoch", cache_policy=NO_CACHE)
def train_epoch_task(session: TrainingSession) -> dict[str, float]:
    return session.train_epoch()


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(session: TrainingSession, split: str) -> tuple[dict[str, float], np.ndarray]:
    return session.evaluate(split)


@task(name="refine-identifiers", cache_policy=NO_CACHE)
def refine_task(
    session: TrainingSession, params: Params, round_index: int
) -> tuple[np.ndarray, dict]:
    seed = params.train.seed * 100 + round_index
    contexts = background = movable = None
    train = session.train_sequences  # training targets only (train.hold_out_last too)
    max_history = session.dataset.max_history
    if params.siit.signal == "rows":
        contexts = expected_contexts(
            session.rec,
            session.codes,
            train,
            max_history,
            params.siit.contexts_per_item,
            params.siit.row_pool,
            seed=seed,
        )
    elif params.siit.contexts_from == "held_out":  # context/mixed, cross-fitted
        contexts = held_out_contexts(
            session.dataset.train_sequences(),
            train,
            session.dataset.n_items,
            max_history,
            params.siit.contexts_per_item,
            seed=seed,
        )
        movable = np.array([len(c) > 0 for c in contexts])
    elif params.siit.signal != "text":
        contexts = training_contexts(
            train, session.dataset.n_items, max_history, params.siit.contexts_per_item, seed=seed
        )
    if params.siit.signal in ("context", "mixed"):
        background = background_histories(
            train, max_history, params.siit.background_contexts, seed=seed + 1
        )
    return refine_identifiers(
        session.rec,
        session.dataset.item_texts(),
        session.codes,
        params.siit,
        seed=seed,
        contexts=contexts,
        background=background,
        movable=_both(movable, session.item2id_holdout),
    )


def _both(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Items movable under both masks (None: every item)."""
    return b if a is None else a if b is None else a & b


@task(name="seqrec-loss", cache_policy=NO_CACHE)
def seqrec_loss_task(
    session: TrainingSession, sample: int, reuse: WindowLosses | None = None
) -> WindowLosses:
    return session.seqrec_loss(reuse, sample=sample)


@task(name="save-checkpoint", cache_policy=NO_CACHE, **IO)
def checkpoint_task(
    ckpt: RunCheckpoint, state: RunState, session: TrainingSession, maps: dict[str, bytes], best
) -> None:
    ckpt.save(state, session.rec, session.trainer.state_dict(), session.codes, maps, best)


@flow(name="train")
def train_flow(mode: Mode = "siit", params_file: str = "params.yaml", root: str = ".") -> str:
    """Train one generative recommender; select the round on validation; test once."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    logger = get_run_logger()
    set_threads(params)
    distributed.setup(pick_device())  # torchrun: join the process group before any decision
    main = distributed.is_main()
    dataset = load_dataset_task(paths)
    start = distributed.broadcast_object(
        resolve_start_task(params, paths, dataset) if main else None
    )
    warm = None
    if start["start"] == "champion":
        warm = warm_start_task(start["source"], params, paths, dataset)
        initial, map_path = warm.token_map, start["source"]
        start["new_item_stats"] = warm.stats
        encoder_dir = Path(start["source"]) / ITEM_ENCODER_DIR
        logger.info(
            "champion start from %s: %d new items (%s), collisions before resolution %.3f",
            start["champion"],
            warm.stats["new_count"],
            warm.stats["new_items"],
            warm.stats["new_collision_rate_before"],
        )
    else:
        initial, map_path = TokenMap.load(paths.initial_token_map), paths.initial_token_map
        encoder_dir = paths.item_encoder
        if "fallback" in start:
            logger.warning("train.start is champion; starting from scratch: %s", start["fallback"])
    validate_token_map(initial, dataset.item_ids(), str(map_path))
    train_cfg, round_epochs = training_config(params, start)
    probe_rounds = len(round_epochs)
    retrain = mode == "siit" and params.siit.retrain
    if retrain and start["start"] == "champion":
        logger.info("siit.retrain: a champion start keeps its warm model; no retraining")
        retrain = False
    schedule = round_epochs * 2 if retrain else round_epochs  # the retrain: static's rounds

    relevant = params.model_dump(include={"data", "tokenize", "model", "train", "siit", "evaluate"})
    inputs = [paths.processed, paths.initial_token_map]
    inputs += [Path(start["source"])] if "source" in start else []
    parts = run_fingerprints(mode, relevant, inputs)
    fingerprint = combine(parts)
    ckpt = RunCheckpoint(paths.checkpoints / mode)
    state = ckpt.load_state(fingerprint, parts)
    if state is not None:
        logger.info("resuming %s at round %d from %s", mode, state.next_round, ckpt.path)
    features = (
        embed_task(dataset, params, paths)  # the map's order
        if state is None
        and warm is None
        and (params.model.rows_from_text or params.model.codes_from_text or params.model.text_token)
        else None
    )
    session = build_session_task(
        dataset, initial, params, ckpt, state, warm.rec if warm else None, train_cfg, features
    )
    # siit.text_coherence: the items' text embeddings, for the maps' coherence (rank 0 refines)
    refining = mode == "siit" and probe_rounds > 1 and main
    text_vectors = None
    if refining and params.siit.text_coherence:
        text_vectors = features if features is not None else embed_task(dataset, params, paths)

    def fresh_session(codes: np.ndarray) -> TrainingSession:
        """siit.retrain: static's start (seed, initialisation, schedule) on the final map."""
        final = initial.with_codes(codes)
        texts_needed = (
            params.model.rows_from_text or params.model.codes_from_text or params.model.text_token
        )
        feats = embed_task(dataset, params, paths) if texts_needed else None
        fresh = build_session_task(dataset, final, params, ckpt, None, None, train_cfg, feats)
        fresh.on_step = lambda: _follow_share(share)
        return fresh

    share = ThreadShare.from_env()  # the `train` stage hands over the other model's threads
    if os.environ.get(SHARE_ENV) and share.path is None:
        logger.info(
            "this CPU's matrix products round differently with the thread count: %s keeps its "
            "%s thread(s) when the other model finishes, so that its results do not depend on "
            "when that is",
            mode,
            os.environ.get("OMP_NUM_THREADS", "its"),
        )
    session.on_step = lambda: _follow_share(share)
    maps = ckpt.maps() if state else {"round_000.parquet": _map_bytes(initial)}
    state = state or RunState(fingerprint=fingerprint, parts=parts)
    if not main:
        _follow_rounds(session, state, schedule, probe_rounds, fresh_session)
        return str(paths.model_dir(mode))
    if distributed.world_size() > 1:
        logger.info("data-parallel over %d processes; rank 0 logs", distributed.world_size())

    with tracking.start_run(
        params.tracking,
        mode,
        tags={
            "stage": f"train_{mode}",  # its siit command (DVC stage: train)
            "model": mode,
            "train.precision_used": session.trainer.precision,  # what train.precision resolved to
            **start_tags(start),
        },
        run_id=state.mlflow_run_id,
        dvc_stage="train",  # both models' stage; SIIT's process alone writes its token maps
        log_outputs=mode == "siit",
    ) as run:
        state.mlflow_run_id = run.info.run_id
        if state.next_round == 0:
            tracking.log_params(relevant)
            if warm is not None:
                tracking.log_metrics(scalars(warm.stats), prefix="warm_start/")
        for r in range(state.next_round, len(schedule)):
            if r == probe_rounds:  # siit.retrain: the probe's map, a fresh model
                state = _start_retrain(state, maps, logger)
                session = fresh_session(session.codes)
            # explicit hand-back: Prefect may rebuild collection arguments of a task
            state, maps = round_task(
                mode,
                r,
                schedule,
                probe_rounds,
                session,
                params,
                state,
                ckpt,
                maps,
                initial,
                text_vectors,
            )
            distributed.broadcast_object(session.codes)  # the other ranks' map (torchrun)
        _follow_share(share)
        report = _finish(
            mode, params, paths, dataset, initial, ckpt, state, maps, start, encoder_dir
        )
        tracking.log_metrics(report["test"], prefix="test/")
        tracking.log_metrics(report["valid"], prefix="best_valid/")
        if report["valid_cross_fitted"]:
            tracking.log_metrics(report["valid_cross_fitted"], prefix="cross_fitted_valid/")
        for path in (
            paths.model_report(mode),
            paths.rounds_csv(mode),
            paths.model_valid_ranks(mode),
        ):
            tracking.log_artifact(path, "reports")
        tracking.log_artifact(paths.model_dir(mode), "model")
    if not os.environ.get(KEEP_CHECKPOINT_ENV):
        ckpt.clear()
    return str(paths.model_dir(mode))


def _follow_share(share: ThreadShare) -> None:
    threads = share.poll()
    if threads:
        get_run_logger().info("the other model finished: now on %d CPU threads", threads)


def _follow_rounds(
    session: TrainingSession,
    state: RunState,
    schedule: list[int],
    probe_rounds: int,
    fresh_session,
) -> None:
    """A rank other than 0 under torchrun: the same training steps as rank 0 (DDP keeps the
    weights equal), then rank 0's map after every round; with siit.retrain the same fresh
    model on the final map as rank 0 (same seed) after the probe's rounds."""
    for r in range(state.next_round, len(schedule)):
        if r == probe_rounds:
            session = fresh_session(session.codes)
        for _ in range(schedule[r]):
            train_epoch_task(session)
        session.set_codes(distributed.broadcast_object(None))


def _start_retrain(state: RunState, maps: dict[str, bytes], logger) -> RunState:
    """The probe's rounds are done: the best model is chosen anew among the fresh model's
    epochs (the probe's validations stay in the history, not among the candidates)."""
    state.retrain_map = len(maps) - 1  # round_000 is the initial map
    state.best_round, state.best_epoch, state.best_score = -1, -1, -1.0
    state.valid_ranks = []
    logger.info(
        "siit.retrain: a fresh model trains on the probe's final map (round %d)",
        state.retrain_map,
    )
    return state


def start_tags(start: dict) -> dict[str, str]:
    """MLflow tags of a training run: how it started and, after a fallback, why."""
    tags = {"train.start": start["start"]}
    if "champion" in start:
        tags["warm_start.champion"] = start["champion"]
    if "fallback" in start:
        tags["warm_start.fallback"] = start["fallback"][:4000]
    return tags


def _write_model_extras(
    model_dir: Path, params: Params, paths: Paths, start: dict, encoder_dir: Path
) -> None:
    """What a later champion start needs beside the model (written into the model folder being
    assembled): the fitted initial tokenizer (the champion's when this run started from one) and
    the compatibility record."""
    record = warm_start_record(params, tracking.dvc_md5(paths.processed), scalars_of(start))
    if (encoder_dir / ENCODER_CONFIG).exists():
        shutil.copytree(encoder_dir, model_dir / ITEM_ENCODER_DIR)
    (model_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))


def scalars_of(start: dict) -> dict:
    """The start description without the local download folder."""
    return {k: v for k, v in start.items() if k != "source"}


@task(name="siit-round", cache_policy=NO_CACHE)
def round_task(
    mode: Mode,
    r: int,
    schedule: list[int],
    probe_rounds: int,
    session: TrainingSession,
    params: Params,
    state: RunState,
    ckpt: RunCheckpoint,
    maps: dict[str, bytes],
    initial: TokenMap,
    text_vectors: np.ndarray | None = None,
) -> tuple[RunState, dict[str, bytes]]:
    """One round: train (validating every epoch, the best model and map kept), refine (SIIT) and
    measure the refinement's immediate effect, checkpoint; a nested MLflow run. `schedule`:
    every round's epochs; the rounds from `probe_rounds` on (siit.retrain) train the fresh
    model on the final map and refine nothing. `text_vectors` (the items' text embeddings):
    the refinement's stats gain the old and the new map's text coherence."""
    logger = get_run_logger()
    retraining = r >= probe_rounds
    refines = mode == "siit" and r < probe_rounds - 1 and not state.converged
    # siit.text_holdout: this round's fold trains without item2id until it may move
    session.item2id_holdout = (
        text_holdout(session.dataset.n_items, params.siit.text_holdout, r, params.train.seed)
        if refines
        else None
    )
    name = f"{mode}-retrain-round-{r - probe_rounds}" if retraining else f"{mode}-round-{r}"
    tags = {"round": str(r), **({"phase": "retrain"} if retraining else {})}
    with tracking.start_run(params.tracking, name, nested=True, tags=tags):
        map_round = state.retrain_map if retraining else r
        row, best = _train_round(session, r, schedule[r], state, params, logger, map_round)
        if len(schedule) > probe_rounds:  # siit.retrain: which model each row is
            row["phase"] = "retrain" if retraining else "probe"
        if refines:
            loss_old = seqrec_loss_task(session, params.siit.effect_windows)
            session.step()
            old_codes = session.codes.copy()
            new_codes, stats = refine_task(session, params, r)
            if text_vectors is not None:
                stats["text_coherence_before"] = text_coherence(old_codes, text_vectors)
                stats["text_coherence"] = text_coherence(new_codes, text_vectors)
            session.item2id_holdout = None
            session.set_codes(new_codes)
            valid_new, ranked_new = evaluate_task(session, "valid")
            _record_ranks(state, session, ranked_new, r + 1)
            # the same windows; only those with a moved item are scored again
            loss_new = seqrec_loss_task(session, params.siit.effect_windows, loss_old)
            # the refined map with the same model is a candidate too (chosen on validation)
            if _improves(state, valid_new):
                state.best_round, state.best_epoch = r, session.trainer.epoch
                state.best_score = valid_new["ndcg@10"]
                best = (copy.deepcopy(session.rec), session.codes.copy())
            maps[f"round_{r + 1:03d}.parquet"] = _map_bytes(
                initial.with_codes(new_codes, round=r + 1, stats=stats)
            )
            state.converged = stats["churn"] < params.siit.min_churn
            effect = {
                "valid_ndcg@10_old": row["valid"]["ndcg@10"],
                "valid_ndcg@10_new": valid_new["ndcg@10"],
                "valid_recall@10_old": row["valid"]["recall@10"],
                "valid_recall@10_new": valid_new["recall@10"],
                "seqrec_loss_old": loss_old.mean,
                "seqrec_loss_new": loss_new.mean,
            }
            row["refine"], row["effect"] = stats, effect
            tracking.log_metrics(scalars(stats), prefix="refine/")
            tracking.log_metrics(
                {**effect, "seqrec_windows_rescored": loss_new.rescored_share}, prefix="effect/"
            )
            logger.info(
                "round %d: churn %.3f, collisions before %.3f; immediate effect: valid "
                "ndcg@10 %.4f -> %.4f, seqrec loss %.4f -> %.4f (over %d training windows, "
                "%.0f%% of them hold a moved item)",
                r,
                stats["churn"],
                stats["collision_rate_before"],
                effect["valid_ndcg@10_old"],
                effect["valid_ndcg@10_new"],
                effect["seqrec_loss_old"],
                effect["seqrec_loss_new"],
                len(loss_new.windows),
                100 * loss_new.rescored_share,
            )
            if text_vectors is not None:
                logger.info(
                    "round %d: text coherence by prefix depth %s -> %s",
                    r,
                    _rounded(stats["text_coherence_before"]),
                    _rounded(stats["text_coherence"]),
                )
        state.history.append(_flat_row(r, row))
        state.next_round = r + 1
        checkpoint_task(ckpt, state, session, maps, best)
        tracking.log_artifact(ckpt.path / "maps", "token_maps")
        tracking.log_artifact(ckpt.model_dir(), "model")
    return state, maps


def _record_ranks(state: RunState, session: TrainingSession, ranked: np.ndarray, map_round: int):
    """Keep a validation candidate's per-user ranks (the model now, with map `map_round`)."""
    ranks = target_ranks(ranked, session.dataset.eval_split("valid").targets)
    state.valid_ranks.append(
        {"epoch": session.trainer.epoch, "map_round": map_round, "ranks": ranks.tolist()}
    )


def _improves(state: RunState, valid: dict[str, float]) -> bool:
    return valid["ndcg@10"] > state.best_score


def _train_round(
    session: TrainingSession,
    r: int,
    epochs: int,
    state: RunState,
    params: Params,
    logger,
    map_round: int,
) -> tuple[dict, tuple | None]:
    """Train the round's epochs; validate after each (or after the last only, when
    `evaluate.every_epoch` is off); return the round's row and the best (model, codes) if this
    round improved on the run's best. `map_round`: the round of the map in use."""
    losses, seconds, best = [], 0.0, None
    for e in range(epochs):
        stats = train_epoch_task(session)
        losses.append(stats["loss"])
        seconds += stats["seconds"]
        step = int(stats["epoch"]) + 1
        tracking.log_metrics(
            {"loss": stats["loss"], "tokens_per_s": stats["tokens_per_s"]},
            step=step,
            prefix="train/",
        )
        if params.evaluate.every_epoch or e == epochs - 1:
            valid, ranked = evaluate_task(session, "valid")
            tracking.log_metrics(valid, step=step, prefix="valid/")
            _record_ranks(state, session, ranked, map_round)
            if _improves(state, valid):
                state.best_round, state.best_epoch = r, step
                state.best_score = valid["ndcg@10"]
                best = (copy.deepcopy(session.rec), session.codes.copy())
    logger.info("round %d: loss %.4f, valid ndcg@10 %.4f", r, losses[-1], valid["ndcg@10"])
    row = {"loss": losses[-1], "seconds": seconds, "valid": valid, "epoch": step}
    return row, best


def _flat_row(r: int, row: dict) -> dict:
    out = {
        "round": r,
        **({"phase": row["phase"]} if "phase" in row else {}),
        "epoch": row["epoch"],
        "loss": row["loss"],
        "seconds": row["seconds"],
        **{f"valid_{k}": v for k, v in row["valid"].items()},
    }
    stats = row.get("refine")
    if stats:
        out.update(
            churn=stats["churn"],
            collision_rate_before=stats["collision_rate_before"],
            distinct_prefixes_l1=stats["distinct_prefixes"][0],
            # the share of the items that could move (a mask: text_holdout, held-out contexts)
            **({"movable": stats["movable"]} if "movable" in stats else {}),
            **{f"entropy_l{i}": h for i, h in enumerate(stats["entropy_bits"])},
            # siit.text_coherence: depth i = items sharing identifier levels 0..i
            **{
                f"text_coherence{when}_l{i}": v
                for when in ("_before", "")
                for i, v in enumerate(stats.get(f"text_coherence{when}", []))
            },
            **{f"effect_{k}": v for k, v in row["effect"].items()},
        )
    return out


def _rounded(values: list[float | None]) -> list[float | None]:
    return [None if v is None else round(v, 4) for v in values]


def _map_bytes(token_map: TokenMap) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "map.parquet"
        token_map.save(path)
        return path.read_bytes()


def _finish(
    mode,
    params,
    paths,
    dataset,
    initial,
    ckpt: RunCheckpoint,
    state: RunState,
    maps,
    start: dict,
    encoder_dir: Path,
) -> dict:
    """Best round's model and map -> test once -> DVC outputs."""
    best_model, best_codes = ckpt.best()
    rec = GenerativeRecommender.load(best_model)
    valid, _ = evaluate_model(rec, dataset, best_codes, params.evaluate, "valid")
    test, ranked = evaluate_model(rec, dataset, best_codes, params.evaluate, "test")
    with atomic_dir(paths.model_dir(mode)) as tmp:
        shutil.copytree(best_model, tmp / "model")
        map_round = state.retrain_map if state.retrain_map >= 0 else state.best_round
        initial.with_codes(best_codes, round=map_round, selected=True).save(
            tmp / "token_map.parquet"
        )
        _write_model_extras(tmp, params, paths, start, encoder_dir)
    if mode == "siit":
        with atomic_dir(paths.siit_token_maps) as tmp:
            for name, data in maps.items():
                (tmp / name).write_bytes(data)
    ranks = np.array([c["ranks"] for c in state.valid_ranks], dtype=np.int32)
    report = {
        "valid": valid,
        # None when there is nothing to split (no candidate, or a single validation user)
        "valid_cross_fitted": (
            cross_fitted_metrics(ranks) if ranks.ndim == 2 and ranks.shape[1] >= 2 else None
        ),
        "test": test,
        "best_round": state.best_round,
        "best_epoch": state.best_epoch,
        # siit.retrain: the map the fresh model trained on (-1: no retraining)
        "retrain_map_round": state.retrain_map,
        "rounds": state.history,
        "train_seconds": sum(h["seconds"] for h in state.history),
        "start": scalars_of(start),
    }
    atomic_write_json(paths.model_report(mode), report)
    atomic_write_csv(pl.DataFrame(state.history), paths.rounds_csv(mode))
    recs = recommendations_frame(mode, dataset.eval_split("test"), ranked, dataset.item_ids())
    atomic_write_parquet(recs, paths.model_recommendations(mode))
    atomic_write_parquet(
        valid_ranks_frame(dataset.eval_split("valid").user_ids, state.valid_ranks),
        paths.model_valid_ranks(mode),
    )
    return report


def valid_ranks_frame(user_ids: list[str], candidates: list[dict]) -> pl.DataFrame:
    """Long format (candidate, epoch, map_round, user_id, rank): every validation the best model
    was chosen from, in order (each epoch's model with its map, and for SIIT the same model
    with each refined map), with each user's target rank (1-based, 0 = not in the top-k). Any
    candidate's validation metrics, or a choice scored on other users than it was made on
    (`cross_fitted_metrics`), can be recomputed from it."""
    n = len(user_ids)
    return pl.DataFrame(
        {
            "candidate": np.repeat(np.arange(len(candidates), dtype=np.int32), n),
            "epoch": np.repeat(np.array([c["epoch"] for c in candidates], dtype=np.int32), n),
            "map_round": np.repeat(
                np.array([c["map_round"] for c in candidates], dtype=np.int32), n
            ),
            "user_id": list(user_ids) * len(candidates),
            "rank": np.array([r for c in candidates for r in c["ranks"]], dtype=np.int32),
        },
        schema={
            "candidate": pl.Int32,
            "epoch": pl.Int32,
            "map_round": pl.Int32,
            "user_id": pl.Utf8,
            "rank": pl.Int32,
        },
    )
