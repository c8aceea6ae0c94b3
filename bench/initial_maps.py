"""Initial tokenizers compared: the static generative recommender trained on each map.

    python bench/initial_maps.py [--methods rqvae rqkmeans cid random] [--seed 42]

MovieLens-100k (the project's data/processed), tiny profile, same seed and epoch budget
(params.yaml) for every method. Prints validation and test Recall/NDCG@5/10 and the
token-map statistics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import ensure_dataset, prefect_server, run_config  # noqa: E402

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=["rqvae", "rqkmeans", "cid", "random"])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    ensure_dataset()
    rows = []
    with prefect_server() as env:
        for method in args.methods:
            overrides = {
                "tokenize": {"method": method, "seed": args.seed},
                "train": {"seed": args.seed},
            }
            out = run_config(
                f"tokenizers-{method}-{args.seed}", overrides, ["tokenize", "train_static"], env
            )
            rows.append((method, out))
            print(f"done: {method}", file=sys.stderr)
    header = (
        "| method | split | "
        + " | ".join(METRICS)
        + " | collisions before | entropy bits / level | distinct prefixes |"
    )
    print(header)
    print("|" + "---|" * (len(METRICS) + 5))
    for method, out in rows:
        tok = out["tokenize"]
        for split in ("valid", "test"):
            vals = " | ".join(f"{out['static'][split][m]:.4f}" for m in METRICS)
            stats = (
                f"{tok['collision_rate_before']:.3f} | {' / '.join(f'{h:.2f}' for h in tok['entropy_bits'])} | "
                f"{' / '.join(str(p) for p in tok['distinct_prefixes'])}"
            )
            print(f"| {method} | {split} | {vals} | {stats} |")


if __name__ == "__main__":
    main()
