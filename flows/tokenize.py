"""Stage `tokenize`: round-0 identifiers from the configured initial tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components import tracking
from components.config import Params, load_params
from components.data import Dataset
from components.io import atomic_dir, atomic_write_json
from components.paths import Paths
from components.tokenizers import (
    EMBEDDING_METHODS,
    ItemEncoder,
    TokenMap,
    fit_token_map,
    plot_code_usage,
    text_coherence,
    validate_token_map,
)
from flows.common import embed_task, load_dataset_task, scalars


@task(name="build-token-map", cache_policy=NO_CACHE)
def build_token_map_task(
    dataset: Dataset, params: Params, embeddings: np.ndarray | None
) -> tuple[TokenMap, ItemEncoder | None]:
    return fit_token_map(
        params.tokenize.method,
        params.tokenize,
        item_ids=dataset.item_ids(),
        texts=dataset.item_texts(),
        train_sequences=dataset.train_sequences(),
        embeddings=embeddings,
    )


@task(name="validate-token-map", cache_policy=NO_CACHE)
def validate_token_map_task(token_map: TokenMap, dataset: Dataset, path: Path) -> None:
    validate_token_map(token_map, dataset.item_ids(), str(path))


@flow(name="tokenize")
def tokenize_flow(params_file: str = "params.yaml", root: str = ".") -> str:
    """Round-0 token map, validated by Great Expectations, with its statistics and plot, and
    the fitted tokenizer that encodes later items (`artifacts/tokenize/item_encoder/`)."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    dataset = load_dataset_task(paths)
    paths.embeddings_cache.mkdir(parents=True, exist_ok=True)  # a DVC output even when unused
    needs_embeddings = params.tokenize.method in EMBEDDING_METHODS
    embeddings = embed_task(dataset, params, paths) if needs_embeddings else None
    token_map, encoder = build_token_map_task(dataset, params, embeddings)
    validate_token_map_task(token_map, dataset, paths.initial_token_map)
    token_map.save(paths.initial_token_map)
    # the fitted tokenizer, for items that arrive later (champion starts); cid has none
    if encoder is not None:
        encoder.save(paths.item_encoder)
    else:  # an empty folder: still a DVC output, and no stale encoder of another method
        with atomic_dir(paths.item_encoder):
            pass
    stats = token_map.metadata.get("stats", {})
    if embeddings is not None:  # the map's order is the dataset's (validated above)
        stats = {**stats, "text_coherence": text_coherence(token_map.codes, embeddings)}
    atomic_write_json(paths.reports / "tokenize.json", {"method": params.tokenize.method, **stats})
    plot_code_usage(token_map, paths.reports / "code_usage.png")
    with tracking.start_run(params.tracking, "tokenize", tags={"stage": "tokenize"}):
        tracking.log_params({"tokenize": params.tokenize.model_dump()})
        tracking.log_metrics(scalars(stats))
        tracking.log_artifact(paths.initial_token_map, "token_map")
        tracking.log_artifact(paths.reports / "code_usage.png", "plots")
    return str(paths.initial_token_map)
