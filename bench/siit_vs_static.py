"""SIIT against the static initial tokenization, several seeds.

    python bench/siit_vs_static.py [--methods rqvae] [--seeds 1 2 3] [-S siit.diversity=0.5 ...]

MovieLens-100k, tiny profile, params.yaml (overridable with -S key=value). For every seed
both models train the same epoch budget from the same initial map. Prints valid and test
Recall/NDCG@5/10 for static and SIIT (mean and std over seeds), the relative test
improvement, and the token-map statistics per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import ensure_dataset, prefect_server, run_config  # noqa: E402

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def parse_set(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=["rqvae"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "-S", dest="sets", action="append", default=[], help="param override key=value"
    )
    args = parser.parse_args()
    extra = parse_set(args.sets)
    ensure_dataset()
    results: dict[str, list[dict]] = {}
    with prefect_server() as env:
        for method in args.methods:
            for seed in args.seeds:
                from runner import merge

                overrides = merge(
                    extra, {"tokenize": {"method": method, "seed": seed}, "train": {"seed": seed}}
                )
                tag = "-".join(a.replace("=", "").replace(".", "") for a in args.sets) or "default"
                out = run_config(
                    f"siit-{method}-{seed}-{tag}",
                    overrides,
                    ["tokenize", "train_static", "train_siit"],
                    env,
                )
                results.setdefault(method, []).append(out)
                print(f"done: {method} seed {seed}", file=sys.stderr)

    print("| method | model | split | " + " | ".join(METRICS) + " |")
    print("|" + "---|" * (len(METRICS) + 3))
    for method, runs in results.items():
        for model in ("static", "siit"):
            for split in ("valid", "test"):
                cells = " | ".join(mean_std([r[model][split][m] for r in runs]) for m in METRICS)
                print(f"| {method} | {model} | {split} | {cells} |")
        gains = []
        for m in METRICS:
            s = statistics.mean(r["static"]["test"][m] for r in runs)
            t = statistics.mean(r["siit"]["test"][m] for r in runs)
            gains.append((t - s) / s if s else 0.0)
        cells = " | ".join(f"{100 * g:+.1f}%" for g in gains)
        print(
            f"| {method} | siit vs static | test | {cells} |  average {100 * statistics.mean(gains):+.1f}%"
        )
    print()
    print(
        "| method | seed | round | valid ndcg@10 | churn | collisions before | entropy bits / level |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, runs in results.items():
        for seed, r in zip(args.seeds, runs, strict=True):
            for row in r["siit"]["rounds"]:
                ent = " / ".join(f"{row[k]:.2f}" for k in sorted(row) if k.startswith("entropy_l"))
                churn = f"{row['churn']:.3f}" if "churn" in row else "-"
                coll = (
                    f"{row['collision_rate_before']:.3f}" if "collision_rate_before" in row else "-"
                )
                print(
                    f"| {method} | {seed} | {row['round']} | {row['valid_ndcg@10']:.4f} | {churn} | {coll} | {ent or '-'} |"
                )


if __name__ == "__main__":
    main()
