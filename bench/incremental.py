"""Replay of data arriving over time: retrain from scratch vs. from the champion.

    python bench/incremental.py                          # MovieLens-100k, 70% then 2 chunks
    python bench/incremental.py --chunks 3 --epochs 6 --warm-epochs 2

MovieLens-100k's interactions sorted by time are cut into a first part (`--first`, the
earliest 70%) and `--chunks` equal later chunks. The catalogue at each point is the items
seen so far, so every chunk brings new items. The first part trains a model from scratch
(the first champion). After each chunk the data so far is split leave-one-out and
- `scratch`: `siit tokenize` + `siit train_siit` with the full budget (`--epochs`, SIIT
  refining once half-way);
- `champion/<new_items>`: `siit train_siit` with `train.start: champion` from the same
  variant's model of the previous point (the first part's model for the first chunk),
  `--warm-epochs` epochs, no refinement, the new items' identifiers from the champion's
  fitted tokenizer (`tokenizer`) or its beam search (`model`).
Each run is the real pipeline code (`siit` stages in their own folder under
bench/.runs/incremental/, one local Prefect server). Printed per chunk: test Recall/NDCG@10
over all users, and over the users whose test target is an item new in that chunk (cold
start), training seconds (the optimisation loop; validation excluded) and the seconds spent
giving new items identifiers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The project root instead of bench/ (bench/ scripts import the project from its root).
sys.path[0] = str(Path(__file__).resolve().parents[1])

import polars as pl  # noqa: E402
import yaml  # noqa: E402

from components.config import DataConfig  # noqa: E402
from components.data.dataset import build_dataset  # noqa: E402
from components.data.movielens import fetch_movielens100k, load_movielens100k  # noqa: E402
from components.data.sources import RawData  # noqa: E402
from components.evaluation import metrics_from_recommendations  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUNS = ROOT / "bench" / ".runs" / "incremental"
NEW_ITEMS = ("tokenizer", "model")


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def time_cuts(raw: RawData, first: float, chunks: int) -> list[RawData]:
    """The data available after the first part and after each chunk (time order, file order
    breaking ties); the catalogue is the items interacted with so far."""
    inter = raw.interactions.with_row_index("row").sort(["timestamp", "row"]).drop("row")
    n = inter.height
    ends = [round(n * (first + (1 - first) * c / chunks)) for c in range(chunks + 1)]
    out = []
    for end in ends:
        part = inter.head(end)
        seen = part.get_column("item_id").unique()
        items = raw.items.filter(pl.col("item_id").is_in(seen.implode()))
        out.append(RawData(items, part, raw.items_file, raw.interactions_file))
    return out


def run_stages(work: Path, params: dict, stages: list[str], env: dict[str, str]) -> float:
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    full_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    start = time.perf_counter()
    for stage in stages:
        proc = subprocess.run(
            [str(BIN / "siit"), stage], cwd=work, env=full_env, capture_output=True, text=True
        )
        if proc.returncode:
            raise RuntimeError(f"{work.name}: siit {stage} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def prepare_folder(work: Path, dataset, embeddings: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    dataset.write(work / "data" / "processed")
    (work / "data" / "embeddings").symlink_to(embeddings)


def result(work: Path, new_items: set[str], top_k: int) -> dict:
    report = json.loads((work / "reports/models/siit.json").read_text())
    recs = pl.read_parquet(work / "reports/models/siit_recommendations_test.parquet")
    cold = recs.filter(pl.col("target_item_id").is_in(list(new_items)))
    cold_users = cold.get_column("user_id").n_unique()
    cold_metrics = metrics_from_recommendations(cold, top_k).get("siit", {}) if cold_users else {}
    stats = report.get("start", {}).get("new_item_stats", {})
    return {
        "test": report["test"],
        "valid": report["valid"],
        "cold": cold_metrics,
        "cold_users": cold_users,
        "train_seconds": report["train_seconds"],
        "new_item_seconds": stats.get("new_item_seconds", 0.0),
        "new_count": stats.get("new_count", 0),
        "collision_rate_before": stats.get("new_collision_rate_before"),
        "start": report.get("start", {}).get("start"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", type=float, default=0.7, help="share of the first part")
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="scratch budget (SIIT: 1 refinement)")
    parser.add_argument("--warm-epochs", type=int, default=1, help="champion start budget")
    parser.add_argument("--warm-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--reuse", action="store_true", help="keep scratch runs already finished with these params"
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="no training: the table of the runs already finished under bench/.runs/incremental",
    )
    args = parser.parse_args()
    if args.epochs % 2:
        parser.error("--epochs must be even (SIIT refines once, half-way)")

    from flows.server import local_prefect_server

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    common = {
        "data": {"source": "movielens100k"},
        "train": {"seed": args.seed, "threads": args.threads},
        "siit": {"rounds": 1, "refine_after": []},
    }
    scratch = merge(base, merge(common, {"train": {"epochs": args.epochs, "start": "scratch"}}))
    top_k = scratch["evaluate"]["top_k"]

    RUNS.mkdir(parents=True, exist_ok=True)
    embeddings = RUNS / "embeddings"
    embeddings.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fetch_movielens100k(Path(tmp))
        raw = load_movielens100k(Path(tmp))
    data_cfg = DataConfig(**{k: v for k, v in base["data"].items() if k != "source"})
    points = [build_dataset(cut, data_cfg) for cut in time_cuts(raw, args.first, args.chunks)]

    results: dict[str, dict] = {}
    if args.table_only:
        for c, dataset in enumerate(points):
            new_items = set(dataset.item_ids()) - set(points[c - 1].item_ids()) if c else set()
            names = (
                {"scratch": "scratch"}
                if c == 0
                else {"scratch": "scratch", **{f"champion/{v}": f"champion-{v}" for v in NEW_ITEMS}}
            )
            for key, folder in names.items():
                work = RUNS / f"p{c}-{folder}"
                if (work / "reports/models/siit.json").exists():
                    results[f"{c}/{key}"] = result(work, new_items, top_k)
        print(table(results, args))
        return 0
    started = time.perf_counter()
    with local_prefect_server(RUNS / ".prefect") as url:
        env = {
            **os.environ,
            "PREFECT_API_URL": url,
            "PREFECT_HOME": str(RUNS / ".prefect"),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        champions = {}
        for c, dataset in enumerate(points):
            seen_before = set(points[c - 1].item_ids()) if c else set()
            new_items = set(dataset.item_ids()) - seen_before if c else set()
            print(
                f"point {c}: {dataset.n_users} users, {dataset.n_items} items "
                f"({len(new_items)} new), {sum(len(s) for s in dataset.sequences)} interactions",
                file=sys.stderr,
                flush=True,
            )
            work = RUNS / f"p{c}-scratch"
            if not (args.reuse and _finished(work, scratch)):
                prepare_folder(work, dataset, embeddings)
                run_stages(work, scratch, ["tokenize", "train_siit"], env)
            results[f"{c}/scratch"] = result(work, new_items, top_k)
            _progress(c, "scratch", results[f"{c}/scratch"], started)
            if c == 0:
                champions = {v: work / "artifacts/models/siit" for v in NEW_ITEMS}
                continue
            for variant in NEW_ITEMS:
                work = RUNS / f"p{c}-champion-{variant}"
                prepare_folder(work, dataset, embeddings)
                warm = merge(
                    scratch,
                    {
                        "tokenize": {"new_items": variant},
                        "train": {
                            "start": "champion",
                            "champion": str(champions[variant]),
                            "warm": {
                                "epochs": args.warm_epochs,
                                "lr": args.warm_lr,
                                "warmup_ratio": 0.0,
                                "refine_after": [],
                            },
                        },
                    },
                )
                run_stages(work, warm, ["train_siit"], env)
                key = f"{c}/champion/{variant}"
                results[key] = result(work, new_items, top_k)
                if results[key]["start"] != "champion":
                    raise RuntimeError(f"{work}: fell back to scratch ({results[key]})")
                champions[variant] = work / "artifacts/models/siit"
                _progress(c, f"champion/{variant}", results[key], started)
    (RUNS / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results, args))
    return 0


def _finished(work: Path, params: dict) -> bool:
    """A scratch run already done with the same parameters (data: same cut of the same file)."""
    params_file = work / "params.yaml"
    return (work / "reports/models/siit.json").exists() and (
        params_file.exists() and params_file.read_text() == yaml.safe_dump(params, sort_keys=False)
    )


def _progress(c: int, name: str, r: dict, started: float) -> None:
    print(
        f"  [{time.perf_counter() - started:6.0f} s] point {c} {name}: test ndcg@10 "
        f"{r['test']['ndcg@10']:.4f}, train {r['train_seconds']:.0f} s",
        file=sys.stderr,
        flush=True,
    )


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    lines = [
        f"MovieLens-100k, first {args.first:.0%} of interactions then {args.chunks} chunks; "
        f"scratch {args.epochs} epochs (SIIT, 1 refinement), champion start {args.warm_epochs} "
        f"epoch(s) at lr {args.warm_lr:g}, seed {args.seed}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        "",
        "| chunk | start | new items: ids by | new items | collisions before | train s | "
        "new-id s | test recall@10 | test ndcg@10 | cold users | cold recall@10 | cold ndcg@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        parts = key.split("/")
        chunk, start = parts[0], parts[1]
        by = parts[2] if len(parts) > 2 else "tokenizer (refit)"
        if chunk == "0":
            start, by = "scratch (first part)", "–"
        cold = r["cold"]
        lines.append(
            f"| {chunk} | {start} | {by} | {r['new_count'] if start == 'champion' else '–'} | "
            f"{_fmt(r['collision_rate_before'])} | {r['train_seconds']:.0f} | "
            f"{r['new_item_seconds']:.1f} | {r['test']['recall@10']:.4f} | "
            f"{r['test']['ndcg@10']:.4f} | {r['cold_users']} | {_fmt(cold.get('recall@10'))} | "
            f"{_fmt(cold.get('ndcg@10'))} |"
        )
    lines.append("")
    for key, r in results.items():
        parts = key.split("/")
        if len(parts) < 3:
            continue
        ref = results.get(f"{parts[0]}/scratch")
        if ref is None:
            continue
        gap = r["test"]["ndcg@10"] / max(ref["test"]["ndcg@10"], 1e-12) - 1
        share = r["train_seconds"] / max(ref["train_seconds"], 1e-9)
        lines.append(
            f"chunk {parts[0]}, champion/{parts[2]}: test ndcg@10 {gap:+.1%} vs scratch, "
            f"{share:.0%} of its training time"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
