"""Refinement: the model beam-searches every item's identifier from what it knows of the item.

Signals (`siit.signal`):
- text: the item's text prompt (the `item2id` task), as the paper does with a pretrained LLM;
- context: the training histories whose next item it is; an identifier's score is its mean
  log-probability as the next item over up to `contexts_per_item` of them (the model's
  collaborative view; hard-EM on the map). Items with no training occurrence use text;
  with `contexts_from: held_out` the histories are those before the training items the
  model was not trained on (`held_out_contexts`): its generalisation, cross-fitted, and
  only items that have such a history may move;
- mixed: `context_weight` x context + (1 - context_weight) x text;
- rows (the tiny Llama with item input rows): the context score over the training histories
  after which the model's item rows (SASRec's view, `train.item_loss`) expect the item most,
  up to `contexts_per_item` of `row_pool` drawn uniformly (`expected_contexts`). Where the
  context signal asks which identifier the histories that did lead to the item predict, and
  gets back the identifier the model was trained on there, this asks which identifier the
  model predicts where its item rows would recommend the item: an item the item rows rank
  high but the beam search cannot reach moves to where the search goes.
With `background_contexts` > 0 the context score becomes pointwise mutual information: the
mean log-probability over the item's histories minus `background_weight` x the mean over
that many random training histories (the same ones for every item). Without it, every history
predicts the popular items' identifiers first, so most items' favourite identifiers collide
and the assignment gives back the current map; with it, an item's score says what its own
histories predict more than any history does.
The search may produce any well-formed identifier (any code at each level, the first
`fixed_levels` codes kept), not only existing ones. A load-aware penalty steers it away
from codes that are already over-used (diversity), and the assignment step keeps
identifiers unique. `diversity_scope: level` counts each code's use on its level alone, so
items may crowd into a few two-level prefixes while every level's codes stay in use;
`prefix` counts a code's use under the beam's own prefix, against an even share of that
prefix's items (`PrefixLoad`; the same penalty as `level` at the first level).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from components.config import SiitConfig
from components.model.decoding import PrefixTrie, constrained_beam_search, item_log_probs
from components.model.prompts import PromptBuilder
from components.model.recommender import GenerativeRecommender
from components.progress import progress
from components.siit.assignment import assign_identifiers, prefix_load_cost
from components.tokenizers import token_map_stats
from components.tokenizers.collisions import collision_mask


@dataclass(frozen=True)
class Candidates:
    codes: np.ndarray  # int [n, B, L]
    scores: np.ndarray  # float [n, B] (model log-probabilities, without the penalty)
    current_scores: np.ndarray  # float [n]: log-probability of each item's current identifier


def load_penalty(usage: np.ndarray, assigned: int, strength: float) -> np.ndarray:
    """-strength * log(1 + usage / average usage): zero for unused codes, grows with load."""
    if strength == 0 or assigned == 0:
        return np.zeros_like(usage, dtype=np.float32)
    expected = max(assigned / len(usage), 1e-9)
    return (-strength * np.log1p(usage / expected)).astype(np.float32)


class PrefixLoad:
    """How many items placed so far (their favourite identifier) start with each prefix, and
    the load-aware penalty of a code under a beam's prefix: -strength * log(1 + n(p, c) /
    (n(p) / K)), n(p) the items under prefix p, n(p, c) those under p then code c, K the
    level's codebook size. At the first level n(p) is every item placed, which is
    `load_penalty`; below, a code is penalised for its share of its parent's items, so the
    items of a prefix spread over its children. Counts are kept sparse (sorted keys)."""

    def __init__(self, sizes: tuple[int, ...], strength: float) -> None:
        if float(np.prod([float(k) for k in sizes])) >= 2.0**62:
            raise ValueError(f"identifier space {sizes} too large for prefix keys")
        self.sizes, self.strength = tuple(int(k) for k in sizes), strength
        self.keys = [np.empty(0, dtype=np.int64) for _ in sizes]  # depth d+1 prefixes
        self.counts = [np.empty(0, dtype=np.int64) for _ in sizes]
        self.placed = 0

    def _key(self, codes: np.ndarray) -> np.ndarray:
        key = np.zeros(codes.shape[:-1], dtype=np.int64)
        for level in range(codes.shape[-1]):
            key = key * self.sizes[level] + codes[..., level]
        return key

    def add(self, codes: np.ndarray) -> None:
        """Count the prefixes of these identifiers (int [n, L])."""
        for depth in range(len(self.sizes)):
            keys = np.concatenate([self.keys[depth], self._key(codes[:, : depth + 1])])
            counts = np.concatenate([self.counts[depth], np.ones(len(codes), dtype=np.int64)])
            self.keys[depth], inverse = np.unique(keys, return_inverse=True)
            self.counts[depth] = np.bincount(inverse.ravel(), weights=counts).astype(np.int64)
        self.placed += len(codes)

    def count(self, depth: int, keys: np.ndarray) -> np.ndarray:
        """Items under each prefix of `depth` codes (int keys of any shape); 0 where none."""
        if depth == 0:
            return np.full(keys.shape, self.placed, dtype=np.int64)
        known, counts = self.keys[depth - 1], self.counts[depth - 1]
        if not len(known):
            return np.zeros(keys.shape, dtype=np.int64)
        at = np.searchsorted(known, keys).clip(max=len(known) - 1)
        return np.where(known[at] == keys, counts[at], 0)

    def bias(self, level: int, prefix: torch.Tensor) -> torch.Tensor:
        """float [..., K_level]: the penalty of every code after each prefix (long [..., level])."""
        parent = self._key(prefix.cpu().numpy())
        size = self.sizes[level]
        under = self.count(level + 1, parent[..., None] * size + np.arange(size))
        parents = self.count(level, parent)[..., None]
        penalty = -prefix_load_cost(under, parents, size, self.strength)
        return torch.from_numpy(penalty.astype(np.float32)).to(prefix.device)


def _next_item_positions(
    train_sequences: list[np.ndarray], first: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every training next-item position, user by user: (user, position, target) arrays.
    first: per user, the first position that counts (default 1: every item after the first)."""
    empty = np.zeros(0, dtype=np.int64)  # so that no training position gives empty arrays
    users, positions, targets = [empty], [empty], [empty]
    for u, seq in enumerate(train_sequences):
        start = max(1, first[u]) if first is not None else 1
        if len(seq) > start:
            users.append(np.full(len(seq) - start, u))
            positions.append(np.arange(start, len(seq)))
            targets.append(np.asarray(seq[start:], dtype=np.int64))
    return tuple(map(np.concatenate, (users, positions, targets)))


def _history(seq: np.ndarray, position: int, max_history: int) -> np.ndarray:
    """The at most `max_history` items before `position`, the most recent last."""
    return np.asarray(seq[max(0, position - max_history) : position], dtype=np.int64)


def training_contexts(
    train_sequences: list[np.ndarray],
    n_items: int,
    max_history: int,
    per_item: int,
    seed: int,
    first: list[int] | None = None,
) -> list[list[np.ndarray]]:
    """For every item, up to `per_item` training histories (at most `max_history` items, the
    most recent last) whose next item it is, sampled without replacement. Training split only:
    the sequences passed in must not hold validation or test targets. first: per user, the
    first position whose item counts as a next item (`held_out_contexts`)."""
    users, positions, targets = _next_item_positions(train_sequences, first)
    out: list[list[np.ndarray]] = [[] for _ in range(n_items)]
    if not len(targets):
        return out
    order = np.argsort(targets, kind="stable")
    bounds = np.searchsorted(targets[order], np.arange(n_items + 1))
    rng = np.random.default_rng(seed)
    for item in range(n_items):
        occ = order[bounds[item] : bounds[item + 1]]
        if len(occ) > per_item:
            occ = np.sort(rng.choice(occ, per_item, replace=False))
        for o in occ:
            out[item].append(_history(train_sequences[users[o]], positions[o], max_history))
    return out


def held_out_contexts(
    train_sequences: list[np.ndarray],
    trained: list[np.ndarray],
    n_items: int,
    max_history: int,
    per_item: int,
    seed: int,
) -> list[list[np.ndarray]]:
    """`siit.contexts_from: held_out`: for every item, up to `per_item` of the histories before
    the training items the model was not trained on (`train.hold_out_last`: each user's last
    n training items, no target and no context in training), whose next item it is.
    train_sequences: every user's whole training part (validation and test targets excluded);
    trained: the part the model trains on (a prefix of each). The model never saw these
    (history, next item) pairs, so what it predicts there is its generalisation, not its
    memory of the current map; items none of them precede get no history."""
    first = [len(t) for t in trained]
    return training_contexts(train_sequences, n_items, max_history, per_item, seed, first=first)


def background_histories(
    train_sequences: list[np.ndarray], max_history: int, count: int, seed: int
) -> list[np.ndarray]:
    """`count` training histories drawn uniformly over all training next-item positions (the
    data's own mix of users and items): the reference the context score is measured against."""
    users, positions, _ = _next_item_positions(train_sequences)
    if not len(positions) or count == 0:
        return []
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(positions), min(count, len(positions)), replace=False))
    return [_history(train_sequences[users[k]], positions[k], max_history) for k in picked]


@torch.no_grad()
def expected_contexts(
    rec: GenerativeRecommender,
    current: np.ndarray,
    train_sequences: list[np.ndarray],
    max_history: int,
    per_item: int,
    pool: int,
    seed: int,
    batch_size: int = 256,
) -> list[list[np.ndarray]]:
    """For every item, the up to `per_item` histories, of `pool` training histories drawn
    uniformly over the training next-item positions (`background_histories`), after which the
    model's item rows give it the highest log-probability (`item_log_probs`), the most expecting
    first. A history never counts for an item it holds. Training split only, as
    `training_contexts`."""
    n_items = len(current)
    histories = background_histories(train_sequences, max_history, pool, seed)
    keep = min(per_item, len(histories))
    if not keep:
        return [[] for _ in range(n_items)]
    rec.model.eval()
    builder = rec.prompt_builder(current)
    pad = rec.tokenizer.pad_token_id or 0
    best = torch.full((keep, n_items), -torch.inf)
    best_at = torch.full((keep, n_items), -1, dtype=torch.long)
    for start in progress(range(0, len(histories), batch_size), desc="rank histories"):
        chunk = histories[start : start + batch_size]
        logp = item_log_probs(rec.model, [builder.seqrec_prompt(h) for h in chunk], pad).cpu()
        for row, history in enumerate(chunk):
            logp[row, history] = -torch.inf
        at = torch.arange(start, start + len(chunk))[:, None].expand(-1, n_items)
        top = torch.cat([best, logp]).topk(keep, dim=0)
        best, best_at = top.values, torch.cat([best_at, at]).gather(0, top.indices)
    found = torch.isfinite(best)
    return [[histories[j] for j in best_at[found[:, i], i].tolist()] for i in range(n_items)]


def _scoring_rows(
    items: np.ndarray,
    builder: PromptBuilder,
    texts: list[str],
    contexts: list[list[np.ndarray]] | None,
    cfg: SiitConfig,
    background: list[np.ndarray] | None = None,
) -> tuple[list[list[int]], list[int], list[float]]:
    """Prompts, their group (position of the item in `items`) and weights for one batch. An
    item's background histories carry minus `background_weight` x its context weight, spread
    over them."""
    prompts, groups, weights = [], [], []
    background_prompts = [builder.seqrec_prompt(h) for h in background or []]
    for g, item in enumerate(items):
        ctx = contexts[item] if contexts is not None and cfg.signal != "text" else []
        text_w = 1.0 if not ctx else (1.0 - cfg.context_weight if cfg.signal == "mixed" else 0.0)
        ctx_w = (1.0 - text_w) / len(ctx) if ctx else 0.0
        if text_w > 0:
            prompts.append(builder.item2id_prompt(texts[item], int(item)))
            groups.append(g)
            weights.append(text_w)
        for history in ctx:
            prompts.append(builder.seqrec_prompt(history))
            groups.append(g)
            weights.append(ctx_w)
        if ctx and background_prompts:
            bg_w = -cfg.background_weight * (1.0 - text_w) / len(background_prompts)
            prompts += background_prompts
            groups += [g] * len(background_prompts)
            weights += [bg_w] * len(background_prompts)
    return prompts, groups, weights


@torch.no_grad()
def propose_identifiers(
    rec: GenerativeRecommender,
    texts: list[str],
    current: np.ndarray,
    cfg: SiitConfig,
    seed: int,
    contexts: list[list[np.ndarray]] | None = None,
    background: list[np.ndarray] | None = None,
) -> Candidates:
    """Top-B identifiers per item by the configured signal, with a load-aware diversity penalty.

    contexts: per item, its training histories (`training_contexts`, or `expected_contexts`
    for the rows signal); needed by every signal but text. background: random training histories (`background_histories`) whose
    mean log-probability is subtracted from the context score (`siit.background_contexts`).
    """
    if cfg.signal != "text" and contexts is None:
        raise ValueError(f"siit.signal={cfg.signal!r} needs the items' training contexts")
    rec.model.eval()
    # the text signal reads no history: `current` may then be any items' identifiers (a champion
    # start proposes for its new items only)
    builder = rec.prompt_builder(current, histories=cfg.signal != "text")
    trie = (
        PrefixTrie.free(current, rec.codebook_sizes)
        if cfg.free_candidates
        else PrefixTrie.unconstrained(rec.codebook_sizes)
    )
    n, levels = current.shape
    free = rec.codebook_sizes[cfg.fixed_levels :]
    width = min(cfg.candidates, int(np.prod(free)))
    codes = np.zeros((n, width, levels), dtype=np.int64)
    scores = np.full((n, width), -np.inf)
    current_scores = np.zeros(n)
    # the load the next batches see (each placed item's favourite): per level or per prefix
    usage = [np.zeros(size) for size in rec.codebook_sizes]
    load = PrefixLoad(rec.codebook_sizes, cfg.diversity)
    prefix_scope = cfg.diversity > 0 and cfg.diversity_scope == "prefix"
    level_scope = cfg.diversity > 0 and not prefix_scope
    # a random order, so no group of items systematically pays the penalty of earlier ones
    order = np.random.default_rng(seed).permutation(n)
    pad = rec.tokenizer.pad_token_id or 0
    for start in progress(range(0, n, cfg.batch_size), desc="refine", unit="batch"):
        rows = order[start : start + cfg.batch_size]
        prompts, groups, weights = _scoring_rows(rows, builder, texts, contexts, cfg, background)
        groups_t = torch.tensor(groups)
        weights_t = torch.tensor(weights, dtype=torch.float32)
        own = torch.from_numpy(builder.item_tokens[rows[groups_t.numpy()]])
        result = constrained_beam_search(
            rec.model,
            prompts,
            rec.code_token_ids,
            trie,
            beam_size=max(cfg.beam_size, width),
            top_k=width,
            pad_id=pad,
            level_bias=[torch.from_numpy(load_penalty(u, start, cfg.diversity)) for u in usage]
            if level_scope
            else None,
            prefix_bias=load.bias if prefix_scope else None,
            groups=groups_t,
            weights=weights_t,
            fixed_prefix=torch.from_numpy(current[rows, : cfg.fixed_levels])
            if cfg.fixed_levels
            else None,
            score_tokens=own,  # each prompt's log-probability of the item's current identifier
        )
        codes[rows] = result.codes.cpu().numpy()
        scores[rows] = result.scores.cpu().numpy()
        per_prompt = result.given.cpu() * weights_t
        current_scores[rows] = (
            torch.zeros(len(rows)).index_add_(0, groups_t, per_prompt).double().numpy()
        )
        if level_scope:
            for level in range(levels):
                np.add.at(usage[level], codes[rows, 0, level], 1)
        elif prefix_scope:
            load.add(codes[rows, 0])
    return Candidates(codes, scores, current_scores)


def text_holdout(n_items: int, share: float, round_index: int, seed: int) -> np.ndarray | None:
    """`siit.text_holdout`: the items (bool [n_items]) left out of the item2id task before
    refinement `round_index`, the only ones that may move in it. Fold `round_index` of one
    random order of the items (fixed by `seed`): consecutive rounds hold out consecutive
    folds, wrapping around, so with a share of 1/rounds every item is held out once. None
    when the share is 0."""
    if share <= 0:
        return None
    size = max(1, round(share * n_items))
    order = np.random.default_rng(seed).permutation(n_items)
    held = np.zeros(n_items, dtype=bool)
    held[order[(round_index * size + np.arange(size)) % n_items]] = True
    return held


def refine_identifiers(
    rec: GenerativeRecommender,
    texts: list[str],
    current: np.ndarray,
    cfg: SiitConfig,
    seed: int,
    contexts: list[list[np.ndarray]] | None = None,
    background: list[np.ndarray] | None = None,
    movable: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """The next round's codes and the statistics of the change. movable (bool [n_items],
    `text_holdout`): only these items may take a new identifier; None = every item."""
    cand = propose_identifiers(rec, texts, current, cfg, seed, contexts, background)
    # the items that may not move keep theirs: no candidate but the current identifier
    scores = cand.scores if movable is None else np.where(movable[:, None], cand.scores, -np.inf)
    new = assign_identifiers(
        current,
        cand.codes,
        scores,
        cand.current_scores,
        rec.codebook_sizes,
        method=cfg.assignment,
        max_churn=cfg.max_churn,
        min_gain=cfg.min_gain,
        strength=cfg.diversity,
    )
    top1 = cand.codes[:, 0, :]
    kept = (new == current).all(axis=1)
    wanted_change = ~(top1 == current).all(axis=1)
    stats = token_map_stats(new, rec.codebook_sizes, previous=current)
    has_context = (
        np.array([len(c) > 0 for c in contexts]) if contexts is not None else np.zeros(len(new))
    )
    stats.update(
        {
            "collision_rate_before": float(collision_mask(top1).mean()),
            "top1_taken": float((new == top1).all(axis=1).mean()),
            "kept_although_model_preferred_other": float((kept & wanted_change).mean()),
            "mean_logp_current": float(cand.current_scores.mean()),
            "mean_logp_top1": float(cand.scores[:, 0].mean()),
            "items_with_context": float(has_context.mean()) if cfg.signal != "text" else 0.0,
        }
    )
    if movable is not None:  # text_holdout or held-out contexts: the share that could move
        stats["movable"] = float(movable.mean())
    return new, stats
