"""Builds every round-0 token map from synthetic data, as the `tokenize` stage does (real
sentence encoder, real tokenizers, TokenMap.save), and writes them under OUT.

    python -m tests.reliability.determinism_worker OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from components.config import DataConfig, SyntheticSource, TokenizeConfig
from components.data import build_dataset, fetch_raw, load_raw
from components.tokenizers import EMBEDDING_METHODS, METHODS, build_token_map, embed_texts


def main(out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    cfg = DataConfig(
        source="synthetic", synthetic=SyntheticSource(n_users=40, n_items=48, n_clusters=4)
    )
    fetch_raw(cfg, out / "raw")
    dataset = build_dataset(load_raw(cfg, out / "raw"), cfg)
    embeddings = embed_texts(dataset.item_texts(), "all-MiniLM-L6-v2", out / "embeddings")
    np.save(out / "embeddings.npy", embeddings)
    for method in METHODS:
        tokenize = TokenizeConfig(
            method=method,
            levels=3,
            codebook_size=8,
            seed=7,
            rqvae_epochs=25,
            rqvae_hidden=[32],
            rqvae_latent_dim=8,
            rqvae_batch_size=16,
        )
        token_map = build_token_map(
            method,
            tokenize,
            item_ids=dataset.item_ids(),
            texts=dataset.item_texts(),
            train_sequences=dataset.train_sequences(),
            embeddings=embeddings if method in EMBEDDING_METHODS else None,
        )
        token_map.save(out / f"{method}.parquet")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
