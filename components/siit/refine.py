"""Refinement: the model beam-searches every item's identifier from the item's text.

The search may produce any well-formed identifier (any code at each level), not only
existing ones. A load-aware penalty steers it away from codes that are already over-used
(diversity), and the assignment step keeps identifiers unique.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from components.config import SiitConfig
from components.model.decoding import PrefixTrie, constrained_beam_search, sequence_log_probs
from components.model.prompts import PromptBuilder
from components.model.recommender import GenerativeRecommender
from components.siit.assignment import assign_identifiers
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


@torch.no_grad()
def propose_identifiers(
    rec: GenerativeRecommender, texts: list[str], current: np.ndarray, cfg: SiitConfig, seed: int
) -> Candidates:
    """Top-B identifiers per item from its text prompt, with a load-aware diversity penalty."""
    rec.model.eval()
    builder = PromptBuilder(rec.tokenizer, rec.item_tokens(current))
    trie = PrefixTrie.unconstrained(rec.codebook_sizes)
    n, levels = current.shape
    width = min(cfg.candidates, int(np.prod(rec.codebook_sizes)))
    codes = np.zeros((n, width, levels), dtype=np.int64)
    scores = np.full((n, width), -np.inf)
    current_scores = np.zeros(n)
    usage = [np.zeros(size) for size in rec.codebook_sizes]
    # a random order, so no group of items systematically pays the penalty of earlier ones
    order = np.random.default_rng(seed).permutation(n)
    pad = rec.tokenizer.pad_token_id or 0
    for start in range(0, n, cfg.batch_size):
        rows = order[start : start + cfg.batch_size]
        prompts = [builder.item2id_prompt(texts[r]) for r in rows]
        bias = [torch.from_numpy(load_penalty(u, start, cfg.diversity)) for u in usage]
        result = constrained_beam_search(
            rec.model,
            prompts,
            rec.code_token_ids,
            trie,
            beam_size=max(cfg.beam_size, width),
            top_k=width,
            pad_id=pad,
            level_bias=bias if cfg.diversity > 0 else None,
        )
        codes[rows] = result.codes.cpu().numpy()
        scores[rows] = result.scores.cpu().numpy()
        current_scores[rows] = (
            sequence_log_probs(rec.model, prompts, torch.from_numpy(builder.item_tokens[rows]), pad)
            .cpu()
            .numpy()
        )
        for level in range(levels):  # the load the next batches see: each item's favourite
            np.add.at(usage[level], codes[rows, 0, level], 1)
    return Candidates(codes, scores, current_scores)


def refine_identifiers(
    rec: GenerativeRecommender, texts: list[str], current: np.ndarray, cfg: SiitConfig, seed: int
) -> tuple[np.ndarray, dict]:
    """The next round's codes and the statistics of the change."""
    cand = propose_identifiers(rec, texts, current, cfg, seed)
    new = assign_identifiers(
        current,
        cand.codes,
        cand.scores,
        cand.current_scores,
        rec.codebook_sizes,
        method=cfg.assignment,
        max_churn=cfg.max_churn,
    )
    top1 = cand.codes[:, 0, :]
    kept = (new == current).all(axis=1)
    wanted_change = ~(top1 == current).all(axis=1)
    stats = token_map_stats(new, rec.codebook_sizes, previous=current)
    stats.update(
        {
            "collision_rate_before": float(collision_mask(top1).mean()),
            "top1_taken": float((new == top1).all(axis=1).mean()),
            "kept_although_model_preferred_other": float((kept & wanted_change).mean()),
            "mean_logp_current": float(cand.current_scores.mean()),
            "mean_logp_top1": float(cand.scores[:, 0].mean()),
        }
    )
    return new, stats
