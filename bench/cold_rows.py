"""Where should a new item's row start? Finished bench runs' models with some items' rows
taken away, put back three ways, ranked on validation.

    python bench/cold_rows.py tri-static --seeds 1 2 3 4 5        # trains nothing

A champion start (`train.start: champion`) meets items the champion never saw. With item input
rows (`model.item_inputs`) such an item needs a row before the warm epochs: the mean of the
champion's rows (`model.item_rows_init: random`), or a row predicted from its text embedding
by a ridge regression fitted on the known items' embeddings and trained rows (`text`,
`warm_start.rows_from_features`). This asks which start is better with everything else about
the model known: each run's selected model (bench/.runs/<tag>-s<seed>-<model>/, left by
siit_vs_static.py) has a random --share of its items' rows replaced (the items keep their
identifiers; the rest of the network is as trained), by

- `mean`: the mean of the other items' rows;
- `text`: the ridge prediction from the other items (the run's own `tokenize.encoder`
  embeddings, read from its cache);
- `trained`: the rows as trained (nothing taken away): the ceiling.

Each variant ranks the validation users as evaluation does (the run's own evaluate settings:
beam search re-scored by the item rows, with their best missed items). Printed per run: the
four-metric average (NDCG@10 in brackets) over all users and over the users whose target is
one of the replaced items ("cold targets"), and over the seeds the paired difference `text`
- `mean` with its 95% t interval. Validation only: it chooses; nothing here reads test.
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
from siit_vs_static import t_interval  # noqa: E402

from components.evaluation import recommend_generative  # noqa: E402
from components.metrics import ranking_metrics  # noqa: E402
from components.paths import Paths  # noqa: E402
from components.siit.warm_start import rows_from_features  # noqa: E402
from components.tokenizers import embed_texts  # noqa: E402

VARIANTS = ("mean", "text", "trained")


def cold_rows(work: Path, kind: str, share: float, seed: int) -> dict[str, dict[str, dict]]:
    """{variant: {"all" | "cold": metrics}} for one finished run's selected model."""
    params, dataset, rec, codes = load_run_model(work, kind)
    features = embed_texts(
        dataset.item_texts(), params.tokenize.encoder, Paths(work).embeddings_cache
    )
    n = rec.item_inputs
    hidden = np.sort(np.random.default_rng(seed).choice(n, round(share * n), replace=False))
    visible = np.setdiff1d(np.arange(n), hidden)
    weight = rec.model.get_input_embeddings().weight
    rows = weight.detach()[rec.item_input_base : rec.item_input_base + n].clone()
    starts = {
        "mean": rows[visible].mean(0).expand(len(hidden), -1),
        "text": rows_from_features(rows[visible], features[visible], features[hidden]),
        "trained": rows[hidden],
    }
    split = dataset.eval_split("valid")
    cold = np.isin(split.targets, hidden)
    out = {}
    for variant in VARIANTS:
        with torch.no_grad():
            weight[rec.item_input_base + torch.as_tensor(hidden)] = starts[variant]
        ranked = recommend_generative(rec, codes, split, params.evaluate)
        out[variant] = {
            "all": ranking_metrics(ranked, split.targets),
            "cold": ranking_metrics(ranked[cold], split.targets[cold]),
            "cold users": int(cold.sum()),
        }
    return out


def interval(diffs: list[float]) -> str:
    mean, lo, hi = t_interval(diffs)
    return f"{mean:+.4f}" if len(diffs) < 2 else f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("groups", nargs="+", help="<tag>-<model>, e.g. tri-static")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--share", type=float, default=0.1, help="share of rows replaced")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if not 0 < args.share < 1:
        parser.error("--share must be between 0 and 1")
    torch.set_num_threads(args.threads)
    cells = " | ".join(f"{v} (all) | {v} (cold)" for v in VARIANTS)
    print(
        f"validation, four-metric average (ndcg@10); {args.share:.0%} of the item rows "
        "replaced; cold = users whose target is a replaced item\n"
    )
    print(f"| run | cold users | {cells} |")
    print(f"|---|---|{'---|' * 2 * len(VARIANTS)}")
    diffs: dict[str, list[float]] = {"all": [], "cold": []}
    ceiling: dict[str, list[float]] = {"all": [], "cold": []}
    for group in args.groups:
        kind, runs = load_group(group, args.seeds)
        for seed in args.seeds:
            work = Path(runs[seed]["work"])
            res = cold_rows(work, kind, args.share, seed)
            row = []
            for v in VARIANTS:
                for part in ("all", "cold"):
                    m = res[v][part]
                    row.append(f"{average(m):.4f} ({m['ndcg@10']:.4f})")
            for part in ("all", "cold"):
                diffs[part].append(average(res["text"][part]) - average(res["mean"][part]))
                ceiling[part].append(average(res["trained"][part]) - average(res["mean"][part]))
            users = res["mean"]["cold users"]
            print(f"| {work.name} | {users} | {' | '.join(row)} |", flush=True)
    print(f"\npaired over {len(diffs['all'])} runs, four-metric average [95% t interval]\n")
    print("| users | text - mean | trained - mean |")
    print("|---|---|---|")
    for part in ("all", "cold"):
        print(f"| {part} | {interval(diffs[part])} | {interval(ceiling[part])} |")


if __name__ == "__main__":
    main()
