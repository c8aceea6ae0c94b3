"""Tiny synthetic catalogue shared by the tokenizer tests (fast on one CPU thread)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from components.config import TokenizeConfig

N_ITEMS = 60
N_CLUSTERS = 6


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def catalogue() -> dict:
    """Items in clusters: embeddings near their cluster centre, users who stay in one cluster."""
    rng = np.random.default_rng(0)
    cluster = np.arange(N_ITEMS) % N_CLUSTERS
    centres = rng.normal(size=(N_CLUSTERS, 16))
    embeddings = centres[cluster] + 0.3 * rng.normal(size=(N_ITEMS, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    sequences = [
        rng.choice(np.flatnonzero(cluster == rng.integers(N_CLUSTERS)), size=8) for _ in range(80)
    ]
    return {
        "item_ids": [f"item{i}" for i in range(N_ITEMS)],
        "texts": [f"text of item {i}" for i in range(N_ITEMS)],
        "embeddings": embeddings.astype(np.float32),
        "train_sequences": sequences,
    }


def _small_config(method: str, **overrides: object) -> TokenizeConfig:
    base = dict(
        method=method,
        levels=3,
        codebook_size=4,
        seed=7,
        rqvae_epochs=30,
        rqvae_hidden=[16],
        rqvae_latent_dim=4,
        rqvae_batch_size=32,
        rqvae_lr=1e-2,
    )
    return TokenizeConfig(**{**base, **overrides})


@pytest.fixture(scope="session")
def small_config() -> Callable[..., TokenizeConfig]:
    """Factory of configs small enough for a sub-second RQ-VAE."""
    return _small_config
