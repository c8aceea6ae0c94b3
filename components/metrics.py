"""Top-K ranking metrics for leave-one-out evaluation (one target per user)."""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each user's target in its ranked list, 0 when absent.

    ranked: int [n_users, k] item indices (-1 pads short lists); targets: int [n_users].
    """
    ranked = np.asarray(ranked)
    targets = np.asarray(targets)
    if ranked.ndim != 2 or targets.shape != (ranked.shape[0],):
        raise ValueError(
            f"ranked must be [n, k] and targets [n]; got {ranked.shape} and {targets.shape}"
        )
    hits = ranked == targets[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)


def ranking_metrics(
    ranked: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (5, 10)
) -> dict[str, float]:
    """Recall@k and NDCG@k averaged over users (single relevant item per user)."""
    ranks = target_ranks(ranked, targets)
    if len(ranks) == 0:
        raise ValueError("no users to evaluate")
    out: dict[str, float] = {}
    for k in ks:
        if k > ranked.shape[1]:
            raise ValueError(f"cannot compute @{k} from ranked lists of length {ranked.shape[1]}")
        hit = (ranks >= 1) & (ranks <= k)
        out[f"recall@{k}"] = float(hit.mean())
        gains = np.where(hit, 1.0 / np.log2(ranks + 1.0, where=hit, out=np.ones(len(ranks))), 0.0)
        out[f"ndcg@{k}"] = float(gains.mean())
    return {
        name: out[name]
        for name in sorted(out, key=lambda n: (n.split("@")[0] != "recall", int(n.split("@")[1])))
    }
