"""Constrained decoding: the project's trie beam search vs transformers' `generate` (as LC-Rec decodes).

    python bench/decode.py                          # 1,682 and 100,000 items, beam 20, top 10
    python bench/decode.py --items 1682 --users 64  # a quicker run
    python bench/decode.py --device cuda
    python bench/decode.py --item-rows-in-head true # decode over the item rows too
    python bench/decode.py --item-weight 0          # no re-scored column

Both decoders run the same tiny Llama (the `model` section of params.yaml, random init) on
the same catalogue (random unique 3-level identifiers, codebook 256) and the same prompts
(seqrec prompts of random 20-item histories), beam 20, top 10, seen items NOT excluded.
`generate` gets `num_beams=20, num_return_sequences=10, max_new_tokens=3,
prefix_allowed_tokens_fn=<prefix dict>` with `length_penalty=0` (plain summed
log-probabilities) and `early_stopping="never"` (the canonical beam search); every
identifier has 3 tokens, so its finished beams are the top of the last step's candidates,
like ours. The output head is scaled (x20, untied) so random-init scores have no near-ties
and "identical" is a meaningful check. Users/second counts whole batches, prompt
encoding included, after one warm-up batch each; the two decoders take turns batch by
batch. Exit status 1 when any user's top-k differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project root instead of bench/ (bench/ scripts import the project from its root).
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.config import ModelConfig, load_params  # noqa: E402
from components.model.decoding import (  # noqa: E402
    PrefixTrie,
    rescored_beam_search,
    scores_item_rows,
)
from components.model.recommender import GenerativeRecommender  # noqa: E402
from components.tokenizers.random_ids import random_codes  # noqa: E402

LEVELS = 3
HISTORY = 20
SHARPEN = 20.0


def build_model(
    cfg: ModelConfig, codebook: int, device: torch.device, seed: int, n_items: int
) -> GenerativeRecommender:
    """The pipeline's tiny Llama (with params.yaml's item inputs, one row per catalogue item)
    with a sharpened, untied output head."""
    texts = [f"item {i} title text" for i in range(100)]
    rec = GenerativeRecommender.create(cfg, (codebook,) * LEVELS, texts, seed=seed, n_items=n_items)
    model = rec.model
    model.config.tie_word_embeddings = False
    weight = model.get_input_embeddings().weight.detach().clone() * SHARPEN
    model.lm_head.weight = torch.nn.Parameter(weight)
    model.to(device).eval()
    return rec


Decoder = Callable[[list[list[int]]], tuple[np.ndarray, np.ndarray]]


@dataclass
class Decoded:
    items: np.ndarray  # int [n_users, top_k]
    scores: np.ndarray  # float [n_users, top_k]
    seconds: float


def run_interleaved(
    decoders: dict[str, Decoder], prompts: list[list[int]], batch_size: int, device: torch.device
) -> dict[str, Decoded]:
    """Each decoder on every batch, batch by batch in turn, so a shared machine's changing
    load weighs on both alike; one warm-up batch each first."""
    for decode in decoders.values():
        decode(prompts[:batch_size])
    parts: dict[str, list] = {name: [] for name in decoders}
    seconds = dict.fromkeys(decoders, 0.0)
    for first in range(0, len(prompts), batch_size):
        for name, decode in decoders.items():
            start = time.perf_counter()
            parts[name].append(decode(prompts[first : first + batch_size]))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
    return {
        name: Decoded(
            np.concatenate([p[0] for p in got]), np.concatenate([p[1] for p in got]), seconds[name]
        )
        for name, got in parts.items()
    }


def trie_decoder(rec: GenerativeRecommender, codes: np.ndarray, beam: int, top_k: int):
    """The trie beam search alone (`rescored_decoder` without the item rows' re-scoring)."""
    return rescored_decoder(rec, codes, beam, top_k, weight=0.0)


def rescored_decoder(
    rec: GenerativeRecommender,
    codes: np.ndarray,
    beam: int,
    top_k: int,
    weight: float,
    row_candidates: int = 0,
):
    """Evaluation's and serving's ranking: the beam's leaves (and the item rows' best
    `row_candidates` items it missed) re-scored by the item rows."""
    trie = PrefixTrie.from_codes(codes, rec.codebook_sizes).to(rec.device)
    item_codes = torch.from_numpy(codes).to(rec.device)

    def decode(batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        result = rescored_beam_search(
            rec.model,
            batch,
            rec.code_token_ids,
            trie,
            beam_size=beam,
            top_k=top_k,
            pad_id=rec.tokenizer.pad_token_id or 0,
            item_weight=weight,
            item_codes=item_codes,
            row_candidates=row_candidates,
        )
        return result.leaves.cpu().numpy(), result.scores.cpu().numpy()

    return decode


def generate_decoder(rec: GenerativeRecommender, codes: np.ndarray, beam: int, top_k: int):
    """LC-Rec style: a dict from generated prefix to allowed next tokens, masks built per beam."""
    tokens = rec.item_tokens(codes)
    allowed: dict[tuple[int, ...], set[int]] = {}
    for row in tokens.tolist():
        for lvl in range(LEVELS):
            allowed.setdefault(tuple(row[:lvl]), set()).add(row[lvl])
    allowed_lists = {prefix: sorted(nxt) for prefix, nxt in allowed.items()}
    item_of = {tuple(row): i for i, row in enumerate(tokens.tolist())}
    pad = rec.tokenizer.pad_token_id or 0

    def decode(batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(p) for p in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(batch):  # left padding
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention[row, width - len(prompt) :] = 1

        def prefix_allowed_tokens_fn(batch_id: int, sent: torch.Tensor) -> list[int]:
            return allowed_lists.get(tuple(sent[width:].tolist()), [])

        out = rec.model.generate(
            input_ids=input_ids.to(rec.device),
            attention_mask=attention.to(rec.device),
            max_new_tokens=LEVELS,
            num_beams=beam,
            num_return_sequences=top_k,
            do_sample=False,
            length_penalty=0.0,
            early_stopping="never",
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
            pad_token_id=pad,
            eos_token_id=None,
            output_scores=True,
            return_dict_in_generate=True,
        )
        generated = out.sequences[:, width:].cpu().tolist()
        items = np.array([item_of.get(tuple(g), -1) for g in generated]).reshape(len(batch), top_k)
        scores = out.sequences_scores.float().cpu().numpy().reshape(len(batch), top_k)
        return items, scores

    return decode


def bench_catalogue(
    args: argparse.Namespace, cfg: ModelConfig, n_items: int, device: torch.device
) -> dict:
    rec = build_model(cfg, args.codebook, device, args.seed, n_items)
    codes = random_codes(n_items, LEVELS, args.codebook, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    prompts_of = rec.prompt_builder(codes)
    histories = [rng.choice(n_items, HISTORY, replace=False) for _ in range(args.users)]
    prompts = [prompts_of.seqrec_prompt(h) for h in histories]
    decoders = {
        "ours": trie_decoder(rec, codes, args.beam, args.top_k),
        "generate": generate_decoder(rec, codes, args.beam, args.top_k),
    }
    rescored = args.item_weight > 0 and scores_item_rows(rec.model)
    if rescored:
        decoders["rescored"] = rescored_decoder(
            rec, codes, args.beam, args.top_k, args.item_weight, args.row_candidates
        )
    result = run_interleaved(decoders, prompts, args.batch_size, device)
    ours, theirs = result["ours"], result["generate"]
    return {
        "rescored": args.users / result["rescored"].seconds if rescored else None,
        "items": n_items,
        "users": args.users,
        "identical": int((ours.items == theirs.items).all(axis=1).sum()),
        "score_gap": float(np.abs(ours.scores - theirs.scores).max()),
        "ours": args.users / ours.seconds,
        "generate": args.users / theirs.seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1682, 100_000])
    parser.add_argument("--users", type=int, default=256, help="prompts decoded by each method")
    parser.add_argument("--codebook", type=int, default=256)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--batch-size", type=int, default=0, help="users per batch (0: evaluate.batch_size)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--item-rows-in-head",
        choices=["true", "training", "false"],
        help="model.item_inputs_in_head (default: params.yaml's); decoding reads the item "
        "input rows with true only",
    )
    parser.add_argument(
        "--item-weight",
        type=float,
        help="evaluate.item_weight of the re-scored decoder (default: params.yaml's; 0: none)",
    )
    parser.add_argument(
        "--row-candidates",
        type=int,
        help="evaluate.row_candidates of the re-scored decoder (default: params.yaml's)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = load_params(ROOT / "params.yaml")
    args.batch_size = args.batch_size or params.evaluate.batch_size
    if args.item_weight is None:
        args.item_weight = params.evaluate.item_weight
    if args.row_candidates is None:
        args.row_candidates = params.evaluate.row_candidates

    cfg = params.model
    if args.item_rows_in_head is not None:
        setting = {"true": True, "false": False}.get(args.item_rows_in_head, "training")
        cfg = cfg.model_copy(update={"item_inputs_in_head": setting})
    rows = [bench_catalogue(args, cfg, n, device) for n in args.items]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows_in = "in" if cfg.item_inputs_in_head is True else "out of"
    head = (
        f"item input rows {rows_in} the decoding softmax "
        f"(model.item_inputs_in_head={str(cfg.item_inputs_in_head).lower()})"
        if cfg.item_inputs
        else "no item rows"
    )
    print(
        f"\n{where}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {platform.machine()}; beam {args.beam}, "
        f"top {args.top_k}, codebook {args.codebook}, {LEVELS} levels, {HISTORY}-item histories, "
        f"batch {args.batch_size} users; {head}\n"
    )
    rescored = any(r["rescored"] is not None for r in rows)
    plus = f" + {args.row_candidates} row candidates" if args.row_candidates else ""
    extra = f" | re-scored, item_weight {args.item_weight:g}{plus} (users/s)" if rescored else ""
    print(
        "| items | identical top-k | max score gap | trie search (users/s) "
        f"| generate (users/s) | speed-up{extra} |"
    )
    print(f"|---|---|---|---|---|---|{'---|' if rescored else ''}")
    for r in rows:
        cell = f" {r['rescored']:.1f} |" if rescored else ""
        print(
            f"| {r['items']:,} | {r['identical']}/{r['users']} users | {r['score_gap']:.1e} "
            f"| {r['ours']:.1f} | {r['generate']:.1f} | {r['ours'] / r['generate']:.1f}x |{cell}"
        )
    return 0 if all(r["identical"] == r["users"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
