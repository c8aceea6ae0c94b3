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
    for k in ks:
        if k > np.asarray(ranked).shape[1]:
            raise ValueError(f"cannot compute @{k} from ranked lists of length {ranked.shape[1]}")
    return metrics_from_ranks(target_ranks(ranked, targets), ks)


def user_gains(ranks: np.ndarray, ks: tuple[int, ...] = (5, 10)) -> dict[str, np.ndarray]:
    """Each user's Recall@k (hit) and NDCG@k from its target's 1-based rank (0 = absent), in
    METRIC_NAMES order; `ranks` may have any shape (e.g. [epochs, users])."""
    ranks = np.asarray(ranks)
    hits = {k: (ranks >= 1) & (ranks <= k) for k in sorted(ks)}
    discount = 1.0 / np.log2(np.maximum(ranks, 1) + 1.0)
    return {
        **{f"recall@{k}": hit.astype(np.float64) for k, hit in hits.items()},
        **{f"ndcg@{k}": np.where(hit, discount, 0.0) for k, hit in hits.items()},
    }


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    """Recall@k and NDCG@k averaged over users, from their targets' 1-based ranks (0 = absent)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no users to evaluate")
    return {name: float(g.mean()) for name, g in user_gains(ranks, ks).items()}


def cross_fitted_metrics(
    candidate_ranks: np.ndarray,
    criterion: str = "ndcg@10",
    repeats: int = 50,
    seed: int = 0,
) -> dict[str, float]:
    """Validation metrics of an epoch (a candidate model) chosen without the users it is scored
    on.

    Keeping the epoch with the best validation score and reporting that score overstates it:
    the score is the largest of several noisy ones, the more so the flatter the curve (a model
    that peaks and levels off gains more from the maximum than one still rising at its
    budget's end). Cross-fitting removes that: the users are split into two random halves, the
    epoch with the best `criterion` on one half (the first of equals, as the pipeline chooses)
    is scored on the other half, and the reverse; every user is thus scored at an epoch chosen
    without it. The result averages over `repeats` random splits (fixed by `seed`), so it is
    deterministic.

    candidate_ranks: int [candidates, users], each user's validation target rank for every
    candidate the choice is made from, in the order they were made (each epoch's model; for
    SIIT also the model with each refined map), 1-based, 0 = not in the top-k.
    """
    ranks = np.asarray(candidate_ranks)
    if ranks.ndim != 2 or ranks.shape[0] == 0 or ranks.shape[1] < 2:
        raise ValueError(f"need ranks [candidates >= 1, users >= 2]; got shape {ranks.shape}")
    gains = user_gains(ranks)
    if criterion not in gains:
        raise ValueError(f"unknown criterion {criterion!r}; one of {sorted(gains)}")
    n = ranks.shape[1]
    rng = np.random.default_rng(seed)
    totals = dict.fromkeys(gains, 0.0)
    for _ in range(repeats):
        order = rng.permutation(n)
        halves = (order[: n // 2], order[n // 2 :])
        for choose, score in (halves, halves[::-1]):
            epoch = int(np.argmax(gains[criterion][:, choose].mean(axis=1)))
            for name, g in gains.items():
                totals[name] += float(g[epoch, score].sum())
    return {name: totals[name] / (repeats * n) for name in gains}
