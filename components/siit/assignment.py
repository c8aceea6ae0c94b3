"""Collision-free assignment of refined identifiers.

Every item has B scored candidates plus its current identifier. Identifiers must stay
unique; the total score is maximised best-first (greedy), exactly (min-weight full
bipartite matching), or best-first with each candidate charged for the load of the
identifiers already placed under its prefixes (balanced). An item that finds no free
candidate keeps its identifier: that is always possible because the current map is a
bijection (an item that took someone's current identifier gives it back and falls back to
its own, recursively).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching


def _keys(codes: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """One integer per identifier (mixed radix), for fast set operations."""
    keys = np.zeros(codes.shape[:-1], dtype=np.int64)
    for level, size in enumerate(sizes):
        keys = keys * size + codes[..., level]
    return keys


def assign_identifiers(
    current: np.ndarray,
    candidates: np.ndarray,
    scores: np.ndarray,
    current_scores: np.ndarray,
    codebook_sizes: tuple[int, ...],
    method: Literal["greedy", "exact", "balanced"] = "greedy",
    max_churn: float = 1.0,
    min_gain: float = 0.0,
    strength: float = 1.0,
) -> np.ndarray:
    """New codes [n, L]: unique, each an item's candidate or its current identifier.

    current: int [n, L]; candidates: int [n, B, L] with scores [n, B] (-inf = none);
    current_scores: [n], the model's score of each current identifier;
    max_churn caps the fraction of items whose identifier changes (largest gains first);
    min_gain: a candidate other than the current identifier needs a score at least this much
    above the current one's;
    strength: the balanced method's load penalty (`siit.diversity`), see `_balanced`.
    """
    n, n_cand, _ = candidates.shape
    if min_gain > 0:
        same = (candidates == current[:, None, :]).all(axis=2)
        too_small = scores < current_scores[:, None] + min_gain
        scores = np.where(too_small & ~same, -np.inf, scores)
    all_codes = np.concatenate([candidates, current[:, None, :]], axis=1)  # current = last option
    all_scores = np.concatenate([scores, current_scores[:, None]], axis=1)
    keys = _keys(all_codes, codebook_sizes)
    current_keys = keys[:, -1]
    if method == "greedy":
        choice = _greedy(keys, all_scores)
    elif method == "exact":
        choice = _exact(keys, all_scores)
    elif method == "balanced":
        choice = _balanced(all_codes, keys, all_scores, codebook_sizes, strength)
    else:
        raise ValueError(
            f"unknown assignment method {method!r}; expected 'greedy', 'exact' or 'balanced'"
        )
    chosen = keys[np.arange(n), choice]
    changed = chosen != current_keys
    limit = int(np.floor(max_churn * n))
    if changed.sum() > limit:  # keep the largest gains only
        gains = np.where(changed, all_scores[np.arange(n), choice] - current_scores, -np.inf)
        keep_changed = np.argsort(-gains, kind="stable")[:limit]
        revert = changed.copy()
        revert[keep_changed] = False
        choice = _fall_back(choice, keys, revert)
    return all_codes[np.arange(n), choice]


def _greedy(keys: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Best-first over all (item, candidate) pairs; leftovers keep their identifier."""
    n, width = keys.shape
    choice = np.full(n, -1, dtype=np.int64)
    taken: set[int] = set()
    order = np.argsort(-scores, axis=None, kind="stable")
    for flat in order:
        item, cand = divmod(int(flat), width)
        if choice[item] >= 0 or not np.isfinite(scores[item, cand]):
            continue
        key = int(keys[item, cand])
        if key in taken:
            continue
        choice[item] = cand
        taken.add(key)
    unassigned = choice < 0
    choice[unassigned] = width - 1
    return _fall_back(choice, keys, unassigned)


def prefix_load_cost(
    under: np.ndarray, parent: np.ndarray, size: int, strength: float
) -> np.ndarray:
    """The load-aware cost of a code: strength * log(1 + n(p, c) / (n(p) / K)), `under` the
    items placed under prefix p then code c, `parent` those under p, `size` the level's K.
    Zero for an unused code; the beam search's `PrefixLoad` and the balanced assignment both
    charge it."""
    return strength * np.log1p(under / np.maximum(parent / size, 1e-9))


def _balanced(
    codes: np.ndarray,
    keys: np.ndarray,
    scores: np.ndarray,
    sizes: tuple[int, ...],
    strength: float,
) -> np.ndarray:
    """Best-first like `_greedy`, on each candidate's score less the load penalty of the
    identifiers placed so far: the sum over levels l of strength * log(1 + n(p, c_l) / (n(p) /
    K_l)), p the candidate's first l codes, n(p) the items placed under p (at the first level,
    all of them), n(p, c_l) those under p then c_l, K_l the level's codebook size: the penalty
    `PrefixLoad` gives the beam search. The penalties change with every item placed, so each
    step takes the pair of least cost under the counts of that moment. Items with no finite
    candidate but their current identifier cannot move: they are placed first. Leftovers keep
    their identifier; strength 0 is `_greedy`."""
    if strength == 0:
        return _greedy(keys, scores)
    n, width, levels = codes.shape
    choice = np.full(n, -1, dtype=np.int64)
    flat_codes = codes.reshape(n * width, levels)
    # per level, a dense id of every option's prefix down to that level (its first level+1
    # codes); a prefix's parent count is the level above's
    prefix = [
        np.unique(_keys(flat_codes[:, : level + 1], sizes[: level + 1]), return_inverse=True)[1]
        for level in range(levels)
    ]
    counts = [np.zeros(int(ids.max()) + 1) for ids in prefix]
    placed = 0
    key_of = keys.reshape(-1)
    item_of = np.repeat(np.arange(n), width)
    alive = np.isfinite(scores).reshape(-1)
    base = -scores.reshape(-1)

    def place(option: int) -> None:
        nonlocal placed
        item = int(item_of[option])
        choice[item] = option - item * width
        alive[item_of == item] = False
        alive[key_of == key_of[option]] = False
        for level in range(levels):
            counts[level][prefix[level][option]] += 1
        placed += 1

    movable = np.isfinite(scores[:, :-1]).any(axis=1)
    for item in np.flatnonzero(~movable & np.isfinite(scores[:, -1])):
        option = item * width + width - 1
        if alive[option]:
            place(option)
    alive &= movable[item_of]
    while alive.any():
        live = np.flatnonzero(alive)
        cost = base[live].copy()
        parent = np.full(len(live), float(placed))
        for level in range(levels):
            under = counts[level][prefix[level][live]]
            cost += prefix_load_cost(under, parent, sizes[level], strength)
            parent = under
        place(int(live[np.argmin(cost)]))
    unassigned = choice < 0
    choice[unassigned] = width - 1
    return _fall_back(choice, keys, unassigned)


def _fall_back(choice: np.ndarray, keys: np.ndarray, revert: np.ndarray) -> np.ndarray:
    """Send `revert` items back to their current identifier, evicting whoever holds it."""
    choice = choice.copy()
    width = keys.shape[1]
    n = len(choice)
    holder = {int(keys[i, choice[i]]): i for i in range(n) if not revert[i]}
    queue = list(np.flatnonzero(revert))
    while queue:
        item = int(queue.pop())
        choice[item] = width - 1
        own = int(keys[item, -1])
        other = holder.get(own)
        holder[own] = item
        if other is not None and other != item:
            queue.append(other)  # it loses the identifier and goes home too
    return choice


def _exact(keys: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Maximum total score over all unique assignments (sparse bipartite matching)."""
    n, width = keys.shape
    finite = np.isfinite(scores)
    rows = np.repeat(np.arange(n), width)[finite.ravel()]
    flat_keys = keys.ravel()[finite.ravel()]
    uniq, cols = np.unique(flat_keys, return_inverse=True)
    vals = scores.ravel()[finite.ravel()]
    # positive weights (zeros would read as missing edges); maximise the sum of scores
    weights = vals - vals.min() + 1.0
    # a candidate equal to the current identifier gives two edges: keep the better one
    order = np.lexsort((-weights, cols, rows))
    rows, cols, weights = rows[order], cols[order], weights[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    graph = csr_matrix((weights[first], (rows[first], cols[first])), shape=(n, len(uniq)))
    _, col_of_row = min_weight_full_bipartite_matching(graph, maximize=True)
    matched_keys = uniq[col_of_row]
    # the option (candidate index) that carries the matched identifier with the best score
    options = np.where(keys == matched_keys[:, None], scores, -np.inf)
    return options.argmax(axis=1)
