"""Full-ranking evaluation on a leave-one-out split, for every model in a comparison.

All models share one setting: items the user saw before the target are excluded from the
ranking (as RecBole does) when `exclude_seen` is on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from components.config import EvaluateConfig
from components.data import EvalSplit
from components.metrics import ranking_metrics
from components.progress import progress

if TYPE_CHECKING:  # torch and the model are imported where used: the report stage needs neither
    import torch

    from components.model.recommender import GenerativeRecommender


def seen_mask(
    seen: list[np.ndarray], n_items: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    import torch

    mask = torch.zeros((len(seen), n_items), dtype=torch.bool, device=device)
    for row, items in enumerate(seen):
        mask[row, torch.as_tensor(items, dtype=torch.long, device=device)] = True
    return mask


def recommend_generative(
    rec: GenerativeRecommender, codes: np.ndarray, split: EvalSplit, cfg: EvaluateConfig
) -> np.ndarray:
    """Top-k item indices per user by trie-constrained beam search: int [n_users, k], -1 pads.
    With `evaluate.item_weight` the beam's leaves re-scored by the item rows as well (and with
    `evaluate.row_candidates` the item rows' best items the beam missed beside them)."""
    import torch

    from components.model.decoding import PrefixTrie, rescored_beam_search

    rec.model.eval()
    item_codes = torch.tensor(codes, dtype=torch.long)  # a copy: `codes` may be read-only
    prompts = rec.prompt_builder(codes)
    trie = PrefixTrie.from_codes(codes, rec.codebook_sizes).to(rec.device)
    all_prompts = [prompts.seqrec_prompt(h) for h in split.histories]
    order = np.argsort([len(p) for p in all_prompts], kind="stable")  # similar lengths together
    ranked = np.full((len(all_prompts), cfg.top_k), -1, dtype=np.int64)
    for start in progress(range(0, len(order), cfg.batch_size), desc="decode", unit="batch"):
        rows = order[start : start + cfg.batch_size]
        exclude = (
            seen_mask([split.seen[r] for r in rows], len(codes), rec.device)
            if cfg.exclude_seen
            else None
        )
        result = rescored_beam_search(
            rec.model,
            [all_prompts[r] for r in rows],
            rec.code_token_ids,
            trie,
            beam_size=cfg.beam_size,
            top_k=cfg.top_k,
            pad_id=rec.tokenizer.pad_token_id or 0,
            exclude=exclude,
            item_weight=cfg.item_weight,
            item_codes=item_codes,
            row_candidates=cfg.row_candidates,
        )
        ranked[rows, : result.leaves.shape[1]] = result.leaves.cpu().numpy()
    return ranked


def recommend_popular(
    popularity: np.ndarray, split: EvalSplit, top_k: int, exclude_seen: bool
) -> np.ndarray:
    """Most-popular items (training counts), skipping the user's seen items when asked."""
    scores = np.tile(np.asarray(popularity, dtype=np.float64), (len(split.targets), 1))
    if exclude_seen:
        for row, items in enumerate(split.seen):
            scores[row, items] = -np.inf
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return np.where(np.take_along_axis(scores, ranked, axis=1) > -np.inf, ranked, -1)


def evaluate_ranking(ranked: np.ndarray, split: EvalSplit) -> dict[str, float]:
    return ranking_metrics(ranked, split.targets)


def recommendations_frame(
    model: str, split: EvalSplit, ranked: np.ndarray, item_ids: list[str]
) -> pl.DataFrame:
    """Long format (model, user_id, rank, item_id, target_item_id): the metrics can be
    recomputed from this frame alone (`metrics_from_recommendations`)."""
    n_users, k = ranked.shape
    flat = ranked.reshape(-1)
    keep = flat >= 0
    ids = np.asarray(item_ids, dtype=object)
    return pl.DataFrame(
        {
            "model": [model] * int(keep.sum()),
            "user_id": np.repeat(np.asarray(split.user_ids, dtype=object), k)[keep].tolist(),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n_users)[keep],
            "item_id": ids[flat[keep]].tolist(),
            "target_item_id": np.repeat(ids[split.targets], k)[keep].tolist(),
        },
        schema={
            "model": pl.Utf8,
            "user_id": pl.Utf8,
            "rank": pl.Int32,
            "item_id": pl.Utf8,
            "target_item_id": pl.Utf8,
        },
    )


def metrics_from_recommendations(frame: pl.DataFrame, top_k: int) -> dict[str, dict[str, float]]:
    """Recall/NDCG@5/10 per model from a `recommendations_frame` (e.g. the exported test file).

    Every user of the split appears at least once per model when its ranked list was not empty;
    a user with an empty list has no row and would be lost, which the decoder rules out.
    """
    out = {}
    for (model,), rows in frame.group_by("model", maintain_order=True):
        users = rows.get_column("user_id").unique(maintain_order=True).to_list()
        index = {u: i for i, u in enumerate(users)}
        codes = {v: i for i, v in enumerate(rows.get_column("item_id").unique().to_list())}
        ranked = np.full((len(users), top_k), -1, dtype=np.int64)
        targets = np.full(len(users), -2, dtype=np.int64)
        for user, rank, item, target in rows.select(
            "user_id", "rank", "item_id", "target_item_id"
        ).iter_rows():
            ranked[index[user], rank - 1] = codes[item]
            targets[index[user]] = codes.get(target, -2)
        out[model] = ranking_metrics(ranked, targets)
    return out
