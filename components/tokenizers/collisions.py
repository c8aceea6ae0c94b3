"""Collision resolution: every token map must be a bijection item <-> identifier.

Colliding items move to the nearest free code at the last level of their own prefix, so the
semantic prefix (the part the LM learns to generate first) is never changed. Only when a
prefix has no free last-level code left is an extra disambiguation level appended
(TIGER appends one to every item; here it is the last resort).
"""

from __future__ import annotations

import numpy as np


def _group_ids(keys: np.ndarray) -> np.ndarray:
    """Per row, the id of its group of equal rows (a zero-width key is one group)."""
    if keys.shape[1] == 0:
        return np.zeros(keys.shape[0], dtype=np.int64)
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


def _ranks_within(groups: np.ndarray, priority: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each row inside its group, by `priority` (ascending) then row index."""
    rows = np.arange(len(groups))
    keys = (rows, groups) if priority is None else (rows, priority, groups)
    order = np.lexsort(keys)
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    ranks = np.empty_like(groups)
    ranks[order] = rows - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    return ranks


def collision_mask(codes: np.ndarray) -> np.ndarray:
    """True for every item whose full identifier is shared with at least one other item."""
    if codes.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    groups = _group_ids(codes)
    return np.bincount(groups)[groups] > 1


def resolve_collisions(
    codes: np.ndarray,
    codebook_sizes: tuple[int, ...],
    scores: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[int, ...], dict]:
    """Make identifiers unique; return (codes, codebook_sizes, report).

    scores: optional float [n_items, codebook_sizes[-1]], the cost of giving item i last-level
    code k (e.g. the distance of its last residual to codeword k); lower is nearer. Without
    it, nearest means closest code index. Within a colliding group the item that fits its
    current code best (lowest cost, else lowest index) stays; the others move, in index order.
    """
    codes = np.array(codes, dtype=np.int64, copy=True)
    sizes = tuple(int(s) for s in codebook_sizes)
    n, levels = codes.shape
    if levels != len(sizes):
        raise ValueError(f"codes have {levels} levels but {len(sizes)} codebook sizes")
    last_size = sizes[-1]
    if scores is not None and np.shape(scores) != (n, last_size):
        raise ValueError(f"scores must be [{n}, {last_size}]; got {np.shape(scores)}")

    colliding = collision_mask(codes)
    report = {"collision_rate_before": float(colliding.mean()) if n else 0.0, "n_moved": 0}
    if not colliding.any():
        return codes, sizes, {**report, "extra_level": False}

    # The best-fitting item of each identifier group keeps its code: lowest own cost, else index.
    own_cost = None if scores is None else scores[np.arange(n), codes[:, -1]]
    movers = colliding & (_ranks_within(_group_ids(codes), own_cost) > 0)

    prefix = _group_ids(codes[:, :-1])
    by_prefix = np.argsort(prefix, kind="stable")
    bounds = np.searchsorted(prefix[by_prefix], np.arange(prefix.max() + 2))
    n_moved = 0
    for group in np.unique(prefix[movers]):
        members = by_prefix[bounds[group] : bounds[group + 1]]
        used = np.zeros(last_size, dtype=bool)
        used[codes[members, -1]] = True
        for item in members[movers[members]]:
            free = np.flatnonzero(~used)
            if len(free) == 0:
                break  # prefix full: the rest of this group needs the extra level
            if scores is not None:
                target = free[np.argmin(scores[item, free])]
            else:
                target = free[np.argmin(np.abs(free - codes[item, -1]))]
            codes[item, -1] = target
            used[target] = True
            n_moved += 1
    report["n_moved"] = n_moved

    still = collision_mask(codes)
    if not still.any():
        return codes, sizes, {**report, "extra_level": False}
    extra = _ranks_within(_group_ids(codes))
    codes = np.concatenate([codes, extra[:, None]], axis=1)
    return codes, (*sizes, int(extra.max()) + 1), {**report, "extra_level": True}
