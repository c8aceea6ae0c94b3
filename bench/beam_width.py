"""Accuracy by beam width: does the trie beam search lose items the model ranks high?

    python bench/beam_width.py --run bench/.runs/lr1-s1-static          # a bench run's model
    python bench/beam_width.py --run . --model siit --beams 20 50 200   # this project's SIIT

Loads a trained model folder (`<run>/artifacts/models/<model>/`: its weights and its token
map) and the project's `data/processed`, and prints the validation metrics (or `--split
test`) at each beam width. A width at least the number of distinct identifier prefixes of
every level keeps every prefix alive, so the ranking is exact (every item scored by its
full identifier's log-probability): the table's last row says how far the default beam is
from exact ranking. `top_k` and `exclude_seen` are the run's (its params.yaml's `evaluate` section).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project root instead of bench/ (bench/ scripts import the project from its root).
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data import Dataset  # noqa: E402
from components.model.recommender import GenerativeRecommender  # noqa: E402
from components.model.session import evaluate_model  # noqa: E402
from components.tokenizers.token_map import TokenMap  # noqa: E402

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def prefix_counts(codes: np.ndarray) -> list[int]:
    """Distinct identifier prefixes of each length 1..levels."""
    return [len({tuple(row[: level + 1]) for row in codes}) for level in range(codes.shape[1])]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=ROOT, help="project or bench run folder")
    parser.add_argument("--model", default="static", choices=("static", "siit"))
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "processed")
    parser.add_argument("--split", default="valid", choices=("valid", "test"))
    parser.add_argument("--beams", type=int, nargs="+", default=[20, 50, 200])
    parser.add_argument("--threads", type=int, default=0, help="torch threads, 0 = default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = args.run / "artifacts" / "models" / args.model
    evaluate = load_params(str(args.run / "params.yaml")).evaluate  # top_k, exclude_seen
    dataset = Dataset.read(args.data)
    token_map = TokenMap.load(folder / "token_map.parquet")
    if list(token_map.item_ids) != dataset.item_ids():
        sys.exit(f"{folder / 'token_map.parquet'}: its items are not {args.data}'s")
    rec = GenerativeRecommender.load(folder / "model")
    codes = np.asarray(token_map.codes)
    prefixes = prefix_counts(codes)
    exact = max(prefixes[:-1], default=1)
    beams = sorted({*args.beams, exact})

    print(f"{folder}, {args.split}: {len(codes)} items; distinct prefixes by level {prefixes}")
    print(f"beam >= {exact} keeps every prefix: exact ranking\n")
    print("| beam | " + " | ".join(METRICS) + " | ndcg@10 vs exact | seconds |")
    print("|---" * (len(METRICS) + 3) + "|")
    rows = []
    for beam in beams:
        start = time.perf_counter()
        cfg = evaluate.model_copy(
            update={"beam_size": beam, "batch_size": 128 if beam <= 100 else 8}
        )
        metrics, _ = evaluate_model(rec, dataset, codes, cfg, args.split)
        rows.append((beam, metrics, time.perf_counter() - start))
    reference = rows[-1][1]["ndcg@10"]  # the widest beam is exact
    for beam, metrics, seconds in rows:
        label = f"{beam} (exact)" if beam >= exact else str(beam)
        change = metrics["ndcg@10"] / reference - 1 if reference else 0.0
        cells = " | ".join(f"{metrics[m]:.4f}" for m in METRICS)
        print(f"| {label} | {cells} | {change:+.1%} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
