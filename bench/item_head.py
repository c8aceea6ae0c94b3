"""Finished bench runs' models ranked three ways: by their identifiers (the generative beam
search), by their item rows alone (SASRec's ranking on the same network), and by both.

    python bench/item_head.py rdt-static rdt-il1 --seeds 1 2 3 4 5

A model with item input tokens (`model.item_inputs`) has one row per item, tied between its
input and output embeddings. With `train.item_loss` those rows are trained as SASRec's are: the
final hidden state before an item's first code scores every item by a dot product with its
row. This takes each run's selected model (bench/.runs/<tag>-s<seed>-<model>/artifacts/
models/<kind>/, left by siit_vs_static.py) and its token map, and ranks the validation and
test users, with the run's own evaluate settings (seen items excluded, beam, top-k):

- `identifiers`: the constrained beam search's own order (evaluation's with
  `evaluate.item_weight` 0);
- `item rows`: every item by its row's log-softmax at the prompt's last position;
- `both, w`: the beam's `evaluate.beam_size` leaves re-ranked by their identifier
  log-probability plus w times their item rows' log-probability (a generative shortlist,
  re-scored), for each w of --weights: what evaluation and serving rank with
  `evaluate.item_weight` = w.

With --row-candidates M..., also `both, w, +M`: the same with the item rows' best M unseen
items the beam missed added to its leaves (`evaluate.row_candidates` = M; the steps of evaluation's
`rescored_beam_search`).

With --headroom, what better identifiers could give at most under that ranking: the share of
targets inside the beam's `evaluate.beam_size` leaves (`shortlist recall`) against the share
inside the item rows' own top `beam_size` (`rows' shortlist recall`), and `rows' shortlist,
w`: the item rows' top `beam_size` items re-ranked as the beam's leaves are (their
identifiers' log-probability, teacher-forced, plus w times their item-row log-probability),
as if the beam search had shortlisted exactly the item rows' favourites.

Nothing is trained. Prints per run the four-metric average of each ranking and, per split, the
mean over the runs; choose on validation.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project root instead of bench/ (bench/ scripts import the project from its root).
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)
sys.path.insert(1, str(ROOT / "bench"))

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from compare_runs import load_group  # noqa: E402
from decode_head import average, load_run_model  # noqa: E402

from components.evaluation import evaluate_ranking, seen_mask  # noqa: E402
from components.model.decoding import (  # noqa: E402
    BeamResult,
    PrefixTrie,
    constrained_beam_search,
    rescore_with_item_rows,
    search_item_log_probs,
    sequence_log_probs,
    with_row_candidates,
)
from components.model.recommender import GenerativeRecommender  # noqa: E402


def top_k(scores: torch.Tensor, k: int) -> np.ndarray:
    """Item indices of the k best finite scores per row, -1 past the finite ones."""
    values, idx = scores.topk(k, dim=1)
    return torch.where(values > -torch.inf, idx, -1).numpy()


def shortlist_recall(leaves: np.ndarray, targets: np.ndarray) -> float:
    """Share of the rows whose target is among their (-1-padded) shortlist."""
    return float((leaves == targets[:, None]).any(axis=1).mean())


def rows_shortlist(
    rec: GenerativeRecommender,
    prompts: list[list[int]],
    items: torch.Tensor,
    codes: np.ndarray,
    width: int,
) -> BeamResult:
    """The item rows' top `width` items per prompt (`items`: masked log-probabilities) as a
    beam result: their identifiers' teacher-forced log-probabilities as the scores."""
    values, leaves = items.topk(width, dim=1)
    leaves = torch.where(values > -torch.inf, leaves, -1)
    picked = leaves.clamp(min=0).numpy()
    continuation = torch.from_numpy(rec.item_tokens(codes)[picked])
    flat = sequence_log_probs(
        rec.model,
        [p for p in prompts for _ in range(width)],
        continuation.reshape(-1, continuation.shape[-1]),
        rec.tokenizer.pad_token_id or 0,
    ).reshape(len(prompts), width)
    return BeamResult(
        codes=torch.from_numpy(codes[picked]),
        scores=flat.masked_fill(leaves < 0, -torch.inf),
        leaves=leaves,
        given=None,
    )


def rank_all(
    work: Path,
    kind: str,
    weights: list[float],
    headroom: bool = False,
    row_candidates: tuple[int, ...] = (),
    batch: int = 128,
) -> dict:
    """{split: {ranking: metrics}} for one finished run's selected model (with `headroom`,
    also the shortlists' recall, under "recall")."""
    params, dataset, rec, codes = load_run_model(work, kind)
    cfg = params.evaluate
    rec.model.eval()
    builder = rec.prompt_builder(codes)
    trie = PrefixTrie.from_codes(codes, rec.codebook_sizes)
    out = {}
    for split in ("valid", "test"):
        data = dataset.eval_split(split)
        n = len(data.targets)
        ranked = {"identifiers": np.full((n, cfg.top_k), -1), "item rows": None}
        ranked.update({f"both, w={w:g}": np.full((n, cfg.top_k), -1) for w in weights})
        unions = [(w, m) for w in weights for m in row_candidates]
        ranked.update({f"both, w={w:g}, +{m}": np.full((n, cfg.top_k), -1) for w, m in unions})
        item_codes = torch.tensor(codes, dtype=torch.long)  # a copy: `codes` may be read-only
        if headroom:
            ranked.update(
                {f"rows' shortlist, w={w:g}": np.full((n, cfg.top_k), -1) for w in weights}
            )
            lists = {"shortlist": [], "rows' shortlist": []}
        item_rank = []
        pad = rec.tokenizer.pad_token_id or 0
        for start in range(0, n, batch):
            rows = list(range(start, min(n, start + batch)))
            prompts = [builder.seqrec_prompt(data.histories[r]) for r in rows]
            seen = seen_mask([data.seen[r] for r in rows], len(codes)) if cfg.exclude_seen else None
            steps = []  # one search per batch; every ranking below re-uses it
            beam = constrained_beam_search(
                rec.model,
                prompts,
                rec.code_token_ids,
                trie,
                beam_size=cfg.beam_size,
                top_k=cfg.beam_size,
                pad_id=pad,
                exclude=seen,
                steps_out=steps,
            )
            ranked["identifiers"][rows] = beam.leaves[:, : cfg.top_k].numpy()
            items = search_item_log_probs(rec.model, beam, prompts, pad)
            for w in weights:  # as evaluation ranks with evaluate.item_weight = w
                both = rescore_with_item_rows(beam, items, w, cfg.top_k)
                ranked[f"both, w={w:g}"][rows] = both.leaves.numpy()
            for m in row_candidates:  # as `rescored_beam_search` with evaluate.row_candidates = m
                union = with_row_candidates(
                    rec.model,
                    steps[0],
                    prompts,
                    beam,
                    items,
                    item_codes,
                    rec.code_token_ids,
                    m,
                    seen,
                    pad,
                )
                for w in weights:
                    both = rescore_with_item_rows(union, items, w, cfg.top_k)
                    ranked[f"both, w={w:g}, +{m}"][rows] = both.leaves.numpy()
            if seen is not None:
                items = items.masked_fill(seen, -torch.inf)
            item_rank.append(top_k(items, cfg.top_k))
            if headroom:
                own = rows_shortlist(rec, prompts, items, codes, cfg.beam_size)
                for w in weights:
                    both = rescore_with_item_rows(own, items, w, cfg.top_k)
                    ranked[f"rows' shortlist, w={w:g}"][rows] = both.leaves.numpy()
                lists["shortlist"].append(beam.leaves.numpy())
                lists["rows' shortlist"].append(own.leaves.numpy())
        ranked["item rows"] = np.concatenate(item_rank)
        out[split] = {name: evaluate_ranking(r, data) for name, r in ranked.items()}
        if headroom:
            out[split]["recall"] = {
                name: shortlist_recall(np.concatenate(got), data.targets)
                for name, got in lists.items()
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--headroom",
        action="store_true",
        help="also the shortlists' recall and the item rows' own shortlist re-ranked",
    )
    parser.add_argument(
        "--row-candidates",
        nargs="+",
        type=int,
        default=[],
        help="also the shortlist with this many of the item rows' best missed items "
        "(evaluate.row_candidates)",
    )
    parser.add_argument("groups", nargs="+", help="<tag>-<model>, e.g. rdt-static rdt-il1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ["identifiers", "item rows", *[f"both, w={w:g}" for w in args.weights]]
    names += [f"both, w={w:g}, +{m}" for w in args.weights for m in args.row_candidates]
    if args.headroom:
        names += [f"rows' shortlist, w={w:g}" for w in args.weights]
    recalls = ["shortlist", "rows' shortlist"] if args.headroom else []
    columns = names + [f"{r} recall" for r in recalls]
    print("four-metric average (recall@5, recall@10, ndcg@5, ndcg@10); ndcg@10 in brackets\n")
    print(f"| run | split | {' | '.join(columns)} |")
    print(f"|---|---|{'---|' * len(columns)}")
    means: dict[tuple[str, str, str], list[float]] = {}
    for group in args.groups:
        kind, runs = load_group(group, args.seeds)
        for seed in args.seeds:
            work = Path(runs[seed]["work"])
            res = rank_all(work, kind, args.weights, args.headroom, tuple(args.row_candidates))
            for split in ("valid", "test"):
                cells = []
                for name in names:
                    m = res[split][name]
                    means.setdefault((group, split, name), []).append(average(m))
                    cells.append(f"{average(m):.4f} ({m['ndcg@10']:.4f})")
                for r in recalls:
                    got = res[split]["recall"][r]
                    means.setdefault((group, split, f"{r} recall"), []).append(got)
                    cells.append(f"{got:.4f}")
                print(f"| {work.name} | {split} | {' | '.join(cells)} |", flush=True)
    print(f"\nmean over seeds {args.seeds}\n")
    print(f"| group | split | {' | '.join(columns)} |")
    print(f"|---|---|{'---|' * len(columns)}")
    for group in args.groups:
        for split in ("valid", "test"):
            cells = [f"{np.mean(means[(group, split, name)]):.4f}" for name in columns]
            print(f"| {group} | {split} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
