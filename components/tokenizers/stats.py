"""Token-map statistics: how well identifiers use their code space, and how much they moved.

Low entropy at a level means the LM sees few distinct tokens there (wasted capacity); few
distinct prefixes means long shared prefixes that beam search must disambiguate late.
"""

from __future__ import annotations

import numpy as np

from components.tokenizers.collisions import collision_mask


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def token_map_stats(
    codes: np.ndarray, codebook_sizes: tuple[int, ...], previous: np.ndarray | None = None
) -> dict:
    """Per-level entropy (bits), perplexity and used codes; distinct prefixes per depth
    (depth 1..L); collision rate; churn vs `previous` codes when given (fraction of items
    whose identifier changed; a map with a different number of levels counts as changed
    wherever the padded rows differ)."""
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    entropy, perplexity, used = [], [], []
    for level, size in enumerate(codebook_sizes):
        counts = np.bincount(codes[:, level], minlength=size) if n else np.zeros(size)
        h = _entropy_bits(counts) if n else 0.0
        entropy.append(h)
        perplexity.append(float(2.0**h))
        used.append(int((counts > 0).sum()))
    stats: dict = {
        "n_items": int(n),
        "levels": int(levels),
        "codebook_sizes": [int(s) for s in codebook_sizes],
        "entropy_bits": entropy,
        "perplexity": perplexity,
        "used_codes": used,
        "distinct_prefixes": [
            int(len(np.unique(codes[:, :depth], axis=0))) for depth in range(1, levels + 1)
        ],
        "collision_rate": float(collision_mask(codes).mean()) if n else 0.0,
    }
    if previous is not None:
        previous = np.asarray(previous, dtype=np.int64)
        if previous.shape[0] != n:
            raise ValueError(f"previous map has {previous.shape[0]} items, this one {n}")
        width = max(levels, previous.shape[1])
        now = np.pad(codes, ((0, 0), (0, width - levels)), constant_values=-1)
        before = np.pad(previous, ((0, 0), (0, width - previous.shape[1])), constant_values=-1)
        stats["churn"] = float((now != before).any(axis=1).mean()) if n else 0.0
    return stats
