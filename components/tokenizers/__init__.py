"""Initial item tokenizers (round 0): one interface, four methods, always a bijection.

`build_token_map` runs a method, resolves collisions (nearest free last-level code, an
extra level only as a last resort) and records the statistics of the result.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import numpy as np

from components.config import TokenizeConfig
from components.tokenizers.collisions import resolve_collisions
from components.tokenizers.stats import text_coherence, token_map_stats
from components.tokenizers.token_map import LEVEL_LETTERS, TokenMap, code_token
from components.tokenizers.validation import TokenMapValidationError, validate_token_map

if TYPE_CHECKING:
    from components.tokenizers.embeddings import embed_texts
    from components.tokenizers.item_encoder import ItemEncoder
    from components.tokenizers.plots import plot_code_usage

# Imported on first use: torch, scikit-learn and matplotlib cost seconds per process, and
# most stages only read and validate token maps.
_LAZY = {
    "ItemEncoder": "components.tokenizers.item_encoder",
    "embed_texts": "components.tokenizers.embeddings",
    "plot_code_usage": "components.tokenizers.plots",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METHODS = ("rqvae", "rqkmeans", "cid", "random")
EMBEDDING_METHODS = ("rqvae", "rqkmeans")

__all__ = [
    "EMBEDDING_METHODS",
    "ItemEncoder",
    "LEVEL_LETTERS",
    "METHODS",
    "TokenMap",
    "TokenMapValidationError",
    "build_token_map",
    "fit_token_map",
    "code_token",
    "embed_texts",
    "plot_code_usage",
    "resolve_collisions",
    "text_coherence",
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
    return fit_token_map(
        method,
        cfg,
        item_ids=item_ids,
        texts=texts,
        train_sequences=train_sequences,
        embeddings=embeddings,
    )[0]


def fit_token_map(
    method: str,
    cfg: TokenizeConfig,
    *,
    item_ids: list[str],
    texts: list[str],
    train_sequences: list[np.ndarray],
    embeddings: np.ndarray | None = None,
) -> tuple[TokenMap, ItemEncoder | None]:
    """`build_token_map` plus the fitted tokenizer that encodes items arriving later (None
    for cid: a new item has no co-occurrences)."""
    n = len(item_ids)
    if len(texts) != n:
        raise ValueError(f"{len(texts)} texts for {n} items")
    if len(set(item_ids)) != n:
        raise ValueError("item ids must be unique")
    if method in EMBEDDING_METHODS and (embeddings is None or len(embeddings) != n):
        got = "none" if embeddings is None else len(embeddings)
        raise ValueError(f"method {method!r} needs one embedding per item ({n}); got {got}")

    from components.tokenizers.item_encoder import ItemEncoder

    sizes = (cfg.codebook_size,) * cfg.levels
    scores, extra, encoder = None, {}, None
    if method == "rqvae":
        from components.tokenizers.rqvae import fit_rqvae

        codes, scores, extra, model = fit_rqvae(embeddings, cfg)
        encoder = ItemEncoder.from_rqvae(model, embeddings.shape[1], cfg)
    elif method == "rqkmeans":
        from components.tokenizers.rqkmeans import fit_rqkmeans

        codes, scores, centers = fit_rqkmeans(embeddings, cfg.levels, cfg.codebook_size, cfg.seed)
        encoder = ItemEncoder.from_rqkmeans(centers, cfg)
    elif method == "cid":
        from components.tokenizers.cid import cid_codes

        codes = cid_codes(train_sequences, n, cfg.levels, cfg.codebook_size, cfg.seed)
    elif method == "random":
        from components.tokenizers.random_ids import random_codes

        codes = random_codes(n, cfg.levels, cfg.codebook_size, cfg.seed)
        encoder = ItemEncoder.random(cfg)
    else:
        raise ValueError(f"unknown tokenize method {method!r}; expected one of {METHODS}")

    codes, sizes, collisions = resolve_collisions(codes, sizes, scores)
    token_map = TokenMap(
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
    return token_map, encoder
