"""A tiny serving bundle (untrained LM, real tokenizer and token map) for the serving tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

N_ITEMS = 30


def make_bundle(root: Path, seed: int = 0, n_items: int = N_ITEMS) -> Path:
    """model/ + token_map.parquet + serving.json, as the register stage assembles them."""
    import torch

    from components.config import ModelConfig
    from components.model.recommender import GenerativeRecommender
    from components.paths import MODEL_DIR, TOKEN_MAP_FILE
    from components.serving import SERVING_CONFIG, ServingConfig
    from components.tokenizers.token_map import TokenMap

    torch.set_num_threads(1)
    sizes = (4, 4, 4)
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(sizes)), size=n_items, replace=False)
    codes = np.stack(np.unravel_index(flat, sizes), axis=1)
    item_ids = [str(i + 1) for i in range(n_items)]
    texts = [f"item {i} about topic {int(i) % 5} words" for i in item_ids]
    cfg = ModelConfig(
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        text_vocab_size=200,
        item_inputs=True,  # as params.yaml trains them
    )
    rec = GenerativeRecommender.create(cfg, sizes, texts, seed=seed, n_items=n_items)
    rec.save(root / MODEL_DIR)
    TokenMap(item_ids=tuple(item_ids), codes=codes, codebook_sizes=sizes).save(
        root / TOKEN_MAP_FILE
    )
    ServingConfig(default_k=5, beam_size=10, max_history=8).write(root / SERVING_CONFIG)
    return root


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))
