"""Champion start: retrain from the registered model instead of from nothing.

A model folder (a training stage's output, or the `champion` registry version downloaded)
holds `model/` (weights + text tokenizer), `token_map.parquet`, `item_encoder/` (the fitted
initial tokenizer) and `warm_start.json` (what the model is compatible with). From it:
- items already in the champion's map keep their identifiers (refinement may move them later);
- new items (in the catalogue, absent from the map) get identifiers from the fitted initial
  tokenizer (`tokenize.new_items: tokenizer`, no refit) or from the champion's own beam search
  on their text (`model`, as refinement's text signal does); both go through one collision-free
  assignment against the existing identifiers;
- when a prefix has no free last-level code, the last level grows: new code tokens and
  vocabulary rows (the mean of that level's rows) are added to the model;
- with item input rows (`model.item_inputs`), the items keep the champion's rows; a new item's
  row is predicted from its text embedding by a ridge regression fitted on the known items'
  (`model.item_rows_init: text`, the default), or is the mean row (`random`).
A champion that does not fit the run (other model or identifier parameters, another layout
version, a catalogue it barely shares) is refused with the reason, and the caller trains
from scratch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from components.config import Params
from components.model.head import resize_vocabulary, trains_item_rows
from components.model.recommender import GenerativeRecommender
from components.paths import ITEM_ENCODER_DIR, MODEL_DIR, RECORD_FILE, TOKEN_MAP_FILE
from components.tokenizers import TokenMap, code_token, token_map_stats
from components.tokenizers.collisions import collision_mask
from components.tokenizers.item_encoder import ItemEncoder

FORMAT = 1  # version of the model-folder layout this code reads (warm_start.json, item_encoder/)


def compatibility_key(params: Params) -> dict:
    """What a model's weights and identifiers depend on: a champion made with other values
    cannot be continued."""
    # (how a scratch model's item rows started does not bind what continues them)
    model = params.model.model_dump(
        exclude={"dropout", "residual_dropout", "lora_dropout", "item_rows_init", "code_rows_init"}
    )
    # of the head setting, the weights depend on whether training covers the item rows
    model["item_inputs_in_head"] = trains_item_rows(model["item_inputs_in_head"])
    return {
        "format": FORMAT,
        "model": model,
        "tokenize": params.tokenize.model_dump(
            include={"method", "levels", "codebook_size", "encoder"}
        ),
        "data_source": params.data.source,
    }


def warm_start_record(params: Params, dataset_fingerprint: str, start: dict) -> dict:
    """`warm_start.json` of a trained model folder."""
    return {
        "format": FORMAT,
        "compatibility": compatibility_key(params),
        "dataset_fingerprint": dataset_fingerprint,
        "start": start,
    }


def incompatibility(folder: Path, params: Params, item_ids: list[str]) -> str | None:
    """Why the model folder cannot warm-start this run, or None when it can."""
    folder = Path(folder)
    record_file = folder / RECORD_FILE
    if not record_file.exists():
        return (
            f"code version: {folder} has no {RECORD_FILE} (made before champion starts existed, "
            "or not a model folder)"
        )
    record = json.loads(record_file.read_text())
    if record.get("format") != FORMAT:
        return f"code version: layout {record.get('format')} of {folder}, this code reads {FORMAT}"
    for name in (MODEL_DIR, TOKEN_MAP_FILE):
        if not (folder / name).exists():
            return f"code version: {folder / name} missing"
    theirs, ours = record.get("compatibility", {}), compatibility_key(params)
    if isinstance(theirs.get("model"), dict):  # champions from before t5 existed are llama
        theirs["model"].setdefault("architecture", "llama")
        theirs["model"].setdefault("code_softmax", False)  # and had whole-vocabulary softmax
        theirs["model"].setdefault("item_inputs", False)  # and read histories as identifiers
        theirs["model"].setdefault("item_inputs_in_head", True)  # a head over all rows
        theirs["model"].setdefault("text_token", False)  # and no text rows
        theirs["model"]["item_inputs_in_head"] = trains_item_rows(
            theirs["model"]["item_inputs_in_head"]
        )
    if params.model.text_token:
        return (
            "model.text_token: the text rows are one catalogue's, fixed from its text; a "
            "champion start is not supported (trains from scratch)"
        )
    differ = sorted(
        f"{section}.{key}"
        for section in ours
        for key in (ours[section] if isinstance(ours[section], dict) else [None])
        if _get(theirs, section, key) != _get(ours, section, key)
    )
    if differ:
        return "parameters differ from the champion's: " + ", ".join(differ)
    if params.tokenize.new_items == "tokenizer" and not (folder / ITEM_ENCODER_DIR).exists():
        return f"tokenize.new_items is tokenizer but {folder} has no {ITEM_ENCODER_DIR}/ (cid maps have none)"
    champion_items = TokenMap.load(folder / TOKEN_MAP_FILE).item_ids
    overlap = len(set(champion_items) & set(item_ids)) / max(1, len(champion_items))
    if overlap < params.train.warm.min_overlap:
        return (
            f"data fingerprint: {overlap:.0%} of the champion's {len(champion_items)} items are in "
            f"this catalogue, below train.warm.min_overlap ({params.train.warm.min_overlap:.0%})"
        )
    return None


def _get(d: dict, section: str, key: str | None):
    value = d.get(section)
    return value.get(key) if key is not None and isinstance(value, dict) else value


@dataclass
class WarmStart:
    rec: GenerativeRecommender
    token_map: TokenMap  # the catalogue's items, in dataset order
    stats: dict


def load_warm_start(
    folder: Path,
    params: Params,
    item_ids: list[str],
    texts: list[str],
    embed: Callable[[list[str], str], np.ndarray],
    device: torch.device | None = None,
) -> WarmStart:
    """The champion's model and a map of the whole catalogue: its identifiers for the items it
    knows, new identifiers for the others. `embed(texts, text_encoder)` gives the embeddings
    the `tokenizer` choice needs, and with item rows from text (`model.item_rows_init`) every
    item's, from which the new items' rows are predicted (called only when there are new
    items)."""
    folder = Path(folder)
    rec = GenerativeRecommender.load(folder / MODEL_DIR, device=device)
    if rec.item_inputs and rec.item_inputs_in_head != params.model.item_inputs_in_head:
        # trained alike (`incompatibility`); the run's setting decides how it decodes
        rec = dataclasses.replace(rec, item_inputs_in_head=params.model.item_inputs_in_head)
    old = TokenMap.load(folder / TOKEN_MAP_FILE)
    if tuple(old.codebook_sizes) != tuple(rec.codebook_sizes):
        raise ValueError(
            f"{folder}: token map sizes {old.codebook_sizes} differ from the model's {rec.codebook_sizes}"
        )
    known = {item: i for i, item in enumerate(old.item_ids)}
    in_map = np.array([i in known for i in item_ids], dtype=bool)
    codes = np.zeros((len(item_ids), old.levels), dtype=np.int64)
    codes[in_map] = old.codes[[known[i] for i in np.asarray(item_ids, dtype=object)[in_map]]]
    new_rows = np.flatnonzero(~in_map)
    method = params.tokenize.new_items
    started = time.perf_counter()
    sizes = tuple(rec.codebook_sizes)
    assignment = {"count": 0, "collision_rate_before": 0.0, "moved": 0, "grown_codes": 0}
    if len(new_rows):
        new_ids = [item_ids[r] for r in new_rows]
        new_texts = [texts[r] for r in new_rows]
        if method == "tokenizer":
            encoder = ItemEncoder.load(folder / ITEM_ENCODER_DIR)
            embeddings = (
                embed(new_texts, encoder.text_encoder) if encoder.needs_embeddings else None
            )
            cand, scores = tokenizer_candidates(encoder, new_ids, embeddings, sizes)
        else:
            seed = params.train.seed * 100 + 99
            cand, scores = model_candidates(rec, new_texts, params, seed)
        new_codes, sizes, assignment = assign_new_identifiers(codes[in_map], cand, scores, sizes)
        codes[new_rows] = new_codes
        if sizes != tuple(rec.codebook_sizes):
            rec = grow_codebooks(rec, sizes)
    new_rows_from = None
    if rec.item_inputs:  # model.item_inputs: the champion's rows, item by item
        take = np.array([known.get(i, -1) for i in item_ids], dtype=np.int64)
        rows, fill = item_input_rows(rec), None
        if params.model.rows_from_text and len(new_rows):  # new items' rows from their text
            features = np.asarray(embed(list(texts), params.tokenize.encoder))
            fill = rows_from_features(
                rows[torch.as_tensor(take[in_map])], features[in_map], features[~in_map]
            )
        new_rows_from = "mean" if fill is None else "text"
        rec = carry_item_inputs(rec, rows, take, fill)
    token_map = TokenMap(
        item_ids=tuple(item_ids),
        codes=codes,
        codebook_sizes=sizes,
        metadata={**old.metadata, "round": 0, "start": "champion", "new_items": method},
    )
    stats = {
        "new_items": method,
        "known_items": int(in_map.sum()),
        "dropped_items": len(set(old.item_ids) - set(item_ids)),
        "new_item_seconds": time.perf_counter() - started,
        "new_rows_from": new_rows_from,
        **{f"new_{k}": v for k, v in assignment.items()},
        **token_map_stats(codes, sizes),
    }
    return WarmStart(rec, token_map, stats)


def tokenizer_candidates(
    encoder: ItemEncoder, item_ids: list[str], embeddings: np.ndarray | None, sizes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates [m, K, L] and scores [m, K]: the encoded identifier first, then the same
    prefix with every other last-level code, nearest codeword first (the order collision
    resolution uses for round-0 maps)."""
    codes, costs = encoder.encode(item_ids, embeddings)
    m, levels, last = len(item_ids), len(sizes), sizes[-1]
    prefix = np.zeros((m, levels), dtype=np.int64)
    width = min(encoder.levels, levels)
    prefix[:, :width] = codes[:, :width]  # an extra (disambiguation) level starts at 0
    if costs is None or encoder.levels != levels or costs.shape[1] != last:
        own = prefix[:, -1:]
        costs = np.abs(np.arange(last)[None, :] - own).astype(np.float64)  # nearest index
    order = np.argsort(costs, axis=1, kind="stable")
    cand = np.repeat(prefix[:, None, :], last, axis=1)
    cand[:, :, -1] = order
    scores = -np.take_along_axis(np.asarray(costs, dtype=np.float64), order, axis=1)
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    # the encoded code itself comes first even when a cost ties with it
    return cand, scores - np.arange(last)[None, :] * 1e-9


def model_candidates(
    rec: GenerativeRecommender, texts: list[str], params: Params, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The champion's top-B identifiers for each text (refinement's text signal, any
    well-formed identifier, load-aware penalty), with their log-probabilities."""
    from components.siit.refine import propose_identifiers

    cfg = params.siit.model_copy(update={"signal": "text", "fixed_levels": 0})
    placeholder = np.zeros((len(texts), rec.levels), dtype=np.int64)  # no current identifier
    cand = propose_identifiers(rec, texts, placeholder, cfg, seed)
    return cand.codes, cand.scores


def assign_new_identifiers(
    existing: np.ndarray, candidates: np.ndarray, scores: np.ndarray, sizes: tuple[int, ...]
) -> tuple[np.ndarray, tuple[int, ...], dict]:
    """Unique identifiers [m, L] for new items that collide with no existing one.

    Best-first over all (item, candidate) pairs; an item left without a free candidate takes
    the nearest free last-level code under its best candidate's prefix, then under its other
    candidates' prefixes; when all of those are full the last level grows by one code.
    Returns (codes, codebook sizes (grown or not), statistics).
    """
    m = len(candidates)
    taken = {tuple(c) for c in np.asarray(existing).tolist()}
    top1 = [tuple(c) for c in candidates[:, 0].tolist()]
    before = collision_mask(candidates[:, 0]) if m else np.zeros(0, dtype=bool)
    before = before | np.array([c in taken for c in top1], dtype=bool)
    out = np.full((m, candidates.shape[2]), -1, dtype=np.int64)
    done = np.zeros(m, dtype=bool)
    order = np.argsort(-scores, axis=None, kind="stable")
    for flat in order:
        item, k = divmod(int(flat), candidates.shape[1])
        if done[item] or not np.isfinite(scores[item, k]):
            continue
        key = tuple(candidates[item, k].tolist())
        if key in taken:
            continue
        out[item], done[item] = key, True
        taken.add(key)
    sizes = list(sizes)
    grown = 0
    for item in np.flatnonzero(~done):
        code = None
        for k in range(candidates.shape[1]):
            prefix = tuple(candidates[item, k, :-1].tolist())
            free = [c for c in range(sizes[-1]) if (*prefix, c) not in taken]
            if free:
                want = int(candidates[item, k, -1])
                code = (*prefix, min(free, key=lambda c: (abs(c - want), c)))
                break
        if code is None:  # every prefix it could use is full: one more last-level code
            code = (*tuple(candidates[item, 0, :-1].tolist()), sizes[-1])
            sizes[-1] += 1
            grown += 1
        out[item] = code
        taken.add(code)
    moved = int(sum(tuple(out[i].tolist()) != top1[i] for i in range(m)))
    stats = {
        "count": m,
        "collision_rate_before": float(before.mean()) if m else 0.0,
        "moved": moved,
        "grown_codes": grown,
    }
    return out, tuple(sizes), stats


def item_input_rows(rec: GenerativeRecommender) -> torch.Tensor | None:
    """A copy of the model's item input rows (`model.item_inputs`), or None without them."""
    if not rec.item_inputs:
        return None
    weight = rec.model.get_input_embeddings().weight
    return weight[rec.item_input_base : rec.item_input_base + rec.item_inputs].detach().clone()


def carry_item_inputs(
    rec: GenerativeRecommender,
    rows: torch.Tensor,
    take: np.ndarray,
    fill: torch.Tensor | None = None,
) -> GenerativeRecommender:
    """The same model with one item input row per entry of `take`, placed right after the
    tokenizer's vocabulary (which may have grown): row `take[r]` of `rows`, or for -1 (an item
    new to the model) the next row of `fill` (one per -1, in order), or without it the mean of
    `rows`."""
    take = np.asarray(take, dtype=np.int64)
    if len(take) and int(take.max()) >= len(rows):
        raise ValueError(f"item input row {int(take.max())} of {len(rows)}")
    base, n = len(rec.tokenizer), len(take)
    old = torch.as_tensor(take, device=rows.device)
    new = torch.where(old[:, None] >= 0, rows[old.clamp(min=0)], rows.mean(0, keepdim=True))
    if fill is not None:
        missing = torch.nonzero(old < 0).flatten()
        if tuple(fill.shape) != (len(missing), rows.shape[1]):
            raise ValueError(
                f"fill rows {tuple(fill.shape)} for {len(missing)} new items of width "
                f"{rows.shape[1]}"
            )
        new[missing] = fill.to(device=rows.device, dtype=rows.dtype)
    resize_vocabulary(rec.model, base + n)
    with torch.no_grad():
        rec.model.get_input_embeddings().weight[base:] = new
    return dataclasses.replace(rec, item_inputs=n, item_input_base=base)


def rows_from_features(
    rows: torch.Tensor, features: np.ndarray, new_features: np.ndarray
) -> torch.Tensor:
    """New items' rows predicted from their features (`model.item_rows_init: text` in a
    champion start): a ridge regression from the known items' features (text embeddings) to
    their trained `rows`, its strength chosen by generalised cross-validation, so that a new
    item starts where the champion put items of similar text rather than at the mean row.

    float [len(new_features), width], `rows`' dtype; the mean row where nothing can be fitted
    (fewer than two known items, or their features all alike)."""
    y = rows.detach().double().cpu()
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    z = torch.as_tensor(np.asarray(new_features), dtype=torch.float64)
    if x.ndim != 2 or z.ndim != 2 or len(x) != len(y) or x.shape[1] != z.shape[1]:
        raise ValueError(
            f"rows_from_features: {tuple(y.shape)} rows, features {tuple(x.shape)} and new "
            f"features {tuple(z.shape)} do not match"
        )
    if not (torch.isfinite(x).all() and torch.isfinite(z).all()):
        raise ValueError("rows_from_features: features hold NaN or infinite values")
    y_mean, x_mean = y.mean(0), x.mean(0)
    fallback = y_mean.expand(len(z), -1).clone().to(rows.dtype)
    if len(x) < 2:
        return fallback
    xc, yc = x - x_mean, y - y_mean
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    keep = s > s[0] * 1e-9 if len(s) and s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    if not keep.any():
        return fallback
    u, s, vh = u[:, keep], s[keep], vh[keep]
    uty = u.T @ yc  # [r, width]
    n, best = len(x), None
    for lam in (s[0] ** 2) * torch.logspace(-6, 1, 15, dtype=torch.float64):
        shrink = s**2 / (s**2 + lam)  # the fit's eigenvalues
        resid = yc - u @ (shrink[:, None] * uty)
        gcv = n * resid.pow(2).sum() / (n - shrink.sum()).clamp(min=1e-9) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam)
    coef = vh.T @ ((s / (s**2 + best[1]))[:, None] * uty)  # [d, width]
    return (y_mean + (z - x_mean) @ coef).to(rows.dtype)


def grow_codebooks(rec: GenerativeRecommender, sizes: tuple[int, ...]) -> GenerativeRecommender:
    """The same model with the code tokens of `sizes` that it lacks; each new embedding row
    starts as the mean of its level's rows (the output head is tied in the tiny profile, llama
    and t5 alike)."""
    if rec.profile != "tiny":
        raise ValueError(
            "a champion start ran out of identifiers and would grow the codebooks, which only "
            "the tiny profile supports; use a larger tokenize.codebook_size (and start from scratch)"
        )
    old = tuple(rec.codebook_sizes)
    if len(sizes) != len(old) or any(n < o for n, o in zip(sizes, old, strict=True)):
        raise ValueError(f"codebooks can only grow: {old} -> {sizes}")
    tokens = [
        code_token(lvl, c)
        for lvl, (o, n) in enumerate(zip(old, sizes, strict=True))
        for c in range(o, n)
    ]
    rows = item_input_rows(rec)  # past the tokenizer's vocabulary: moved past the new codes
    rec.tokenizer.add_tokens(tokens)
    embeddings = rec.model.get_input_embeddings().weight
    means = [embeddings[rec.code_token_ids[lvl]].detach().mean(0) for lvl in range(len(old))]
    resize_vocabulary(rec.model, len(rec.tokenizer))
    weight = rec.model.get_input_embeddings().weight
    with torch.no_grad():
        for lvl, (o, n) in enumerate(zip(old, sizes, strict=True)):
            for c in range(o, n):
                weight[rec.tokenizer.convert_tokens_to_ids(code_token(lvl, c))] = means[lvl]
    # every other setting of the model carries over; its item rows are put back below
    grown = dataclasses.replace(rec, codebook_sizes=tuple(sizes), item_inputs=0, item_input_base=0)
    return grown if rows is None else carry_item_inputs(grown, rows, np.arange(len(rows)))
