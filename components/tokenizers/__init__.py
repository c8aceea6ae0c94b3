"""Initial item tokenizers (round 0): one interface, four methods, always a bijection.

`build_token_map` runs a method, resolves collisions (nearest free last-level code, an
extra level only as a last resort) and records the statistics of the result.
"""

from __future__ import annotations

import numpy as np

from components.config import TokenizeConfig
from components.tokenizers.cid import cid_codes
from components.tokenizers.collisions import resolve_collisions
from components.tokenizers.embeddings import embed_texts
from components.tokenizers.plots import plot_code_usage
from components.tokenizers.random_ids import random_codes
from components.tokenizers.rqkmeans import rqkmeans_codes
from components.tokenizers.rqvae import rqvae_codes
from components.tokenizers.stats import token_map_stats
from components.tokenizers.token_map import LEVEL_LETTERS, TokenMap, code_token
from components.tokenizers.validation import TokenMapValidationError, validate_token_map

METHODS = ("rqvae", "rqkmeans", "cid", "random")
EMBEDDING_METHODS = ("rqvae", "rqkmeans")

__all__ = [
    "EMBEDDING_METHODS",
    "LEVEL_LETTERS",
    "METHODS",
    "TokenMap",
    "TokenMapValidationError",
    "build_token_map",
    "code_token",
    "embed_texts",
    "plot_code_usage",
    "resolve_collisions",
    "token_map_stats",
    "validate_token_map",
]


def build_token_map(
    method: str,
    cfg: TokenizeConfig,
    *,
    item_ids: list[str],
    texts: list[str],
    train_sequences: list[np.ndarray],
    embeddings: np.ndarray | None = None,
) -> TokenMap:
    """Round-0 token map for the items (row i = item_idx i).

    `embeddings` (from `embed_texts`) are required by rqvae/rqkmeans and ignored otherwise;
    `train_sequences` (item_idx arrays, training part only) are used by cid.
    """
    n = len(item_ids)
    if len(texts) != n:
        raise ValueError(f"{len(texts)} texts for {n} items")
    if len(set(item_ids)) != n:
        raise ValueError("item ids must be unique")
    if method in EMBEDDING_METHODS and (embeddings is None or len(embeddings) != n):
        got = "none" if embeddings is None else len(embeddings)
        raise ValueError(f"method {method!r} needs one embedding per item ({n}); got {got}")

    sizes = (cfg.codebook_size,) * cfg.levels
    scores, extra = None, {}
    if method == "rqvae":
        codes, scores, extra = rqvae_codes(embeddings, cfg)
    elif method == "rqkmeans":
        codes, scores = rqkmeans_codes(embeddings, cfg.levels, cfg.codebook_size, cfg.seed)
    elif method == "cid":
        codes = cid_codes(train_sequences, n, cfg.levels, cfg.codebook_size, cfg.seed)
    elif method == "random":
        codes = random_codes(n, cfg.levels, cfg.codebook_size, cfg.seed)
    else:
        raise ValueError(f"unknown tokenize method {method!r}; expected one of {METHODS}")

    codes, sizes, collisions = resolve_collisions(codes, sizes, scores)
    return TokenMap(
        item_ids=tuple(item_ids),
        codes=codes,
        codebook_sizes=sizes,
        metadata={
            "method": method,
            "params": {**cfg.model_dump(), "method": method},
            "seed": cfg.seed,
            "round": 0,
            "stats": {**collisions, **token_map_stats(codes, sizes)},
            **({"training": extra} if extra else {}),
        },
    )
