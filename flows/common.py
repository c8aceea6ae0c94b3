"""Pieces shared by the stage flows."""

from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.config import Params
from components.data import Dataset
from components.paths import Paths


def _transient(task: object, task_run: object, state: object) -> bool:
    """Retry only I/O failures (OSError: disk, network); bad data or parameters fail at once."""
    return isinstance(getattr(state, "data", None), OSError)


# Set by the `train` stage for its models' processes: keep the checkpoint when done (the stage
# removes both once both are done, so a re-run after a kill re-trains only what was unfinished).
KEEP_CHECKPOINT_ENV = "SIIT_KEEP_CHECKPOINT"

IO = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _transient}  # I/O only


@task(name="load-dataset", cache_policy=NO_CACHE, **IO)
def load_dataset_task(paths: Paths) -> Dataset:
    return Dataset.read(paths.processed)


@task(name="embed-item-texts", cache_policy=NO_CACHE)
def embed_task(dataset: Dataset, params: Params, paths: Paths) -> np.ndarray:
    """float32 [n_items, d]: the items' text embeddings (`tokenize.encoder`) in the dataset's
    order, from the embeddings cache where the tokenize stage left them."""
    from components.tokenizers import embed_texts  # its encoder's imports: only when used

    return embed_texts(dataset.item_texts(), params.tokenize.encoder, paths.embeddings_cache)


def set_threads(params: Params) -> None:
    if params.train.threads:
        import torch

        torch.set_num_threads(params.train.threads)


def scalars(stats: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested stats dict with dotted names (MLflow metrics are flat)."""
    out: dict[str, float] = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            out.update(
                {
                    f"{prefix}{key}.{i}": float(v)
                    for i, v in enumerate(value)
                    if isinstance(v, int | float)
                }
            )
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out
