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


def text_coherence(codes: np.ndarray, embeddings: np.ndarray) -> list[float | None]:
    """How much the identifiers' prefixes group items of similar text, one figure per prefix
    depth that items can share (levels 0..i, i < L-1; a whole identifier is one item's): the
    mean cosine similarity of the text embeddings of two items with the same prefix, minus
    that of two distinct items drawn at random. About 0 for a map that ignores the text (random
    ids), positive when a prefix means something about the item's text (RQ-VAE's codes). Exact,
    over every pair, from per-group sums: O(n x d) per depth. `embeddings`: [n_items, d] in the
    map's order (normalised here); None where no two items share a prefix of that depth."""
    codes = np.asarray(codes, dtype=np.int64)
    vectors = np.asarray(embeddings, dtype=np.float64)
    n = codes.shape[0]
    if vectors.shape[0] != n:
        raise ValueError(f"{vectors.shape[0]} embedding rows for {n} identifiers")
    if n < 2:
        return [None] * max(codes.shape[1] - 1, 0)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def pair_mean(sums: np.ndarray, counts: np.ndarray) -> float | None:
        # sum over ordered pairs i != j of <v_i, v_j> = |sum_g|^2 - (sum of |v_i|^2 = n_g)
        pairs = float((counts * (counts - 1)).sum())
        if pairs == 0:
            return None
        return float((np.einsum("gd,gd->g", sums, sums) - counts).sum() / pairs)

    everyone = pair_mean(vectors.sum(0, keepdims=True), np.array([n], dtype=np.float64))
    assert everyone is not None  # n >= 2
    out = []
    for depth in range(1, codes.shape[1]):
        _, group = np.unique(codes[:, :depth], axis=0, return_inverse=True)
        group = group.reshape(-1)
        sums = np.zeros((int(group.max()) + 1, vectors.shape[1]))
        np.add.at(sums, group, vectors)
        counts = np.bincount(group).astype(np.float64)
        within = pair_mean(sums, counts)
        out.append(None if within is None else within - everyone)
    return out
