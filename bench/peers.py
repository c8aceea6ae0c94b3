"""Peers side by side on the pipeline's dataset: most-popular, SASRec and the generative models.

    python bench/peers.py                       # data and reports of the project in `.`
    python bench/peers.py --root /tmp/siit-ml   # ... of another copy (e.g. bench/pipeline.py --keep)
    python bench/peers.py --max-epochs 5        # a quick SASRec run

Same leave-one-out split (the pipeline's data/processed; created with `siit prepare` and
`siit validate` when missing), same full-ranking setting (seen items excluded per
params.yaml `evaluate.exclude_seen`), Recall@5/10 and NDCG@5/10 on valid and test.
Popularity and SASRec are computed here; the generative rows (`generative`, `static`,
`siit`: whichever exist) are read from reports/metrics.json of a pipeline run, their
training time from reports/models/<name>.json (sum of the per-epoch "seconds").
Training time is the optimisation loop only (validation passes excluded) for every model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# The project root instead of bench/ (bench/ scripts import the project from its root).
sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from components.baselines.sasrec import SASRecConfig, recommend_sasrec, train_sasrec  # noqa: E402
from components.config import load_params  # noqa: E402
from components.data import Dataset  # noqa: E402
from components.evaluation import evaluate_ranking, recommend_popular  # noqa: E402
from components.metrics import METRIC_NAMES  # noqa: E402
from components.paths import Paths  # noqa: E402
from components.reporting import MODEL_ORDER  # noqa: E402

PIPELINE_SKIP = {"popularity", "sasrec", "improvement"}  # computed here, or not a model
SPLITS = ("valid", "test")


def ensure_dataset(root: Path, params_file: str) -> Dataset:
    """The pipeline's processed dataset, created with `siit prepare && siit validate` if missing."""
    paths = Paths(root)
    if not (paths.processed / "sequences.parquet").exists():
        siit = Path(sys.executable).parent / "siit"
        for stage in ("prepare", "validate"):
            print(f"{paths.processed} missing: running siit {stage}", file=sys.stderr)
            subprocess.run([str(siit), "--params", params_file, stage], cwd=root, check=True)
    return Dataset.read(paths.processed)


def training_seconds(report: dict) -> float | None:
    """A model report's training time: "train_seconds", else the sum of its epochs' or rounds'."""
    if "train_seconds" in report:
        return float(report["train_seconds"])
    steps = report.get("epochs") or report.get("rounds")
    if not steps or any("seconds" not in s for s in steps):
        return None
    return float(sum(s["seconds"] for s in steps))


def pipeline_rows(paths: Paths) -> dict[str, dict]:
    """Generative models of the pipeline run: {name: {valid, test, seconds, epochs}}."""
    metrics_file = paths.reports / "metrics.json"
    if not metrics_file.exists():
        print(f"{metrics_file} missing: no generative rows (run `siit repro`)", file=sys.stderr)
        return {}
    metrics = json.loads(metrics_file.read_text())
    rows = {}
    for name, splits in metrics.items():
        if name in PIPELINE_SKIP or not all(s in splits for s in SPLITS):
            continue
        report_file = paths.model_report(name)
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
        rows[name] = {
            **{s: splits[s] for s in SPLITS},
            "seconds": training_seconds(report),
            "selected": _selected(report),
        }
    pipeline_pop = metrics.get("popularity")
    return {"_popularity": pipeline_pop, **rows}


def _selected(report: dict) -> str | None:
    """Which epoch or round validation selected, out of how many: "best/total"."""
    for unit in ("round", "epoch"):
        steps = report.get(f"{unit}s")
        if steps and f"best_{unit}" in report:
            return f"{unit} {report[f'best_{unit}']} of {len(steps)}"
    return None


def _progress(record: dict[str, float]) -> None:
    valid = f", valid ndcg@10 {record['valid_ndcg@10']:.4f}" if "valid_ndcg@10" in record else ""
    print(
        f"sasrec epoch {record['epoch']}: loss {record['loss']:.4f}, "
        f"{record['seconds']:.1f} s{valid}",
        file=sys.stderr,
        flush=True,
    )


def markdown_table(rows: dict[str, dict]) -> str:
    header = ["model", "split", *METRIC_NAMES, "train time (s)", "selected"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        seconds = "–" if row.get("seconds") is None else f"{row['seconds']:.1f}"
        selected = row.get("selected") or "–"
        for split in SPLITS:
            values = [f"{row[split][m]:.4f}" for m in METRIC_NAMES]
            extra = [seconds, selected] if split == "valid" else ["", ""]
            lines.append("| " + " | ".join([name, split, *values, *extra]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project copy (default: .)")
    parser.add_argument("--params", default="params.yaml", help="parameter file, relative to root")
    parser.add_argument("--max-epochs", type=int, default=SASRecConfig.max_epochs)
    parser.add_argument("--patience", type=int, default=SASRecConfig.patience)
    parser.add_argument("--seed", type=int, default=SASRecConfig.seed)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    root = args.root.resolve()
    params = load_params(root / args.params)
    dataset = ensure_dataset(root, args.params)
    exclude, top_k = params.evaluate.exclude_seen, params.evaluate.top_k
    splits = {s: dataset.eval_split(s) for s in SPLITS}
    rows: dict[str, dict] = {}

    popularity = dataset.popularity()
    rows["popularity"] = {
        s: evaluate_ranking(recommend_popular(popularity, split, top_k, exclude), split)
        for s, split in splits.items()
    }

    cfg = SASRecConfig(
        max_epochs=args.max_epochs,
        patience=args.patience,
        seed=args.seed,
        top_k=top_k,
        exclude_seen=exclude,
        hold_out_last=params.train.hold_out_last,  # as the generative models train
    )
    start = time.perf_counter()
    run = train_sasrec(dataset, cfg, on_epoch=_progress)
    wall = time.perf_counter() - start
    rows["sasrec"] = {
        **{
            s: evaluate_ranking(recommend_sasrec(run.model, split, top_k, exclude), split)
            for s, split in splits.items()
        },
        "seconds": run.train_seconds,
        "selected": f"epoch {run.best_epoch} of {len(run.epochs)}",
    }
    print(
        f"sasrec: {len(run.epochs)} epochs, best {run.best_epoch}, "
        f"{run.train_seconds:.1f} s training, {wall:.1f} s with validation",
        file=sys.stderr,
    )

    generative = pipeline_rows(Paths(root))
    pipeline_pop = generative.pop("_popularity", None)
    if pipeline_pop and pipeline_pop != {s: rows["popularity"][s] for s in SPLITS}:
        print(
            "warning: the pipeline's popularity rows differ: not the same split?", file=sys.stderr
        )
    rows.update(generative)
    rows = {k: rows[k] for k in sorted(rows, key=lambda m: MODEL_ORDER.get(m, len(MODEL_ORDER)))}

    threads = torch.get_num_threads()
    print(
        f"\n{dataset.n_users} users, {dataset.n_items} items, max_history {dataset.max_history}, "
        f"exclude_seen={exclude}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({threads} threads)\n"
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
