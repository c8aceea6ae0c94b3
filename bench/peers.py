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

SASRec over seeds (one seed is not a verdict: on the headline's split SASRec's test NDCG@10
spans 0.099-0.120 over seeds 1-5):

    python bench/peers.py --seeds 1 2 3 4 5 --jobs 2                     # SASRec on 5 seeds
    python bench/peers.py --seeds 1 2 3 4 5 --jobs 2 --against tri-static tri-siit

With --seeds, SASRec trains once per seed (`--jobs` at once, the cores split between them) and
the tables are the per-seed figures and their mean ± standard deviation. Each seed's result is
kept in bench/.runs/peers/ under a key of the dataset's bytes, SASRec's settings, the torch
threads and version and the CPU (what its result depends on: one seed is exact run to
run on one machine, not across machines), so a repeated command trains nothing.
--against names bench groups (`<tag>-<model>`, the run folders bench/.runs/<tag>-s<seed>-<model>/
that siit_vs_static.py leaves; --runs for another folder): each is paired with SASRec of the
same seed, with the mean of its per-seed ratio to SASRec and the 95% confidence interval
(Student t over the seeds) of the paired differences, on test NDCG@10 (the issue's aim) and on
the four-metric average, test and valid. The groups' runs must be on the same split as --root's
data (bench runs link the project's data/processed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

# The project root instead of bench/ (bench/ scripts import the project from its root), and
# bench/ after it for the sibling scripts.
BENCH = Path(__file__).resolve().parent
sys.path[0] = str(BENCH.parent)
sys.path.insert(1, str(BENCH))

import torch  # noqa: E402
from runner import cpu_identity, made_on  # noqa: E402
from siit_vs_static import _mean_sd, average, t_interval  # noqa: E402

from components.baselines.sasrec import SASRecConfig, recommend_sasrec, train_sasrec  # noqa: E402
from components.config import load_params  # noqa: E402
from components.data import Dataset  # noqa: E402
from components.evaluation import evaluate_ranking, recommend_popular  # noqa: E402
from components.io import atomic_write_json  # noqa: E402
from components.metrics import METRIC_NAMES  # noqa: E402
from components.paths import Paths  # noqa: E402
from components.reporting import MODEL_ORDER  # noqa: E402

CACHE = BENCH / ".runs" / "peers"  # SASRec's result per seed and setting (--seeds)
AVERAGE = "average"  # the four metrics' mean

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


def sasrec_row(dataset: Dataset, cfg: SASRecConfig, on_epoch=None) -> dict:
    """SASRec trained with `cfg`: {valid, test (metrics), seconds, selected}."""
    start = time.perf_counter()
    run = train_sasrec(dataset, cfg, on_epoch=on_epoch)
    wall = time.perf_counter() - start
    print(
        f"sasrec seed {cfg.seed}: {len(run.epochs)} epochs, best {run.best_epoch}, "
        f"{run.train_seconds:.1f} s training, {wall:.1f} s with validation",
        file=sys.stderr,
        flush=True,
    )
    splits = {s: dataset.eval_split(s) for s in SPLITS}
    return {
        **{
            s: evaluate_ranking(
                recommend_sasrec(run.model, split, cfg.top_k, cfg.exclude_seen), split
            )
            for s, split in splits.items()
        },
        "seconds": run.train_seconds,
        "selected": f"epoch {run.best_epoch} of {len(run.epochs)}",
    }


def data_fingerprint(processed: Path) -> str:
    """sha256 of the processed dataset's files (names and bytes), in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(processed).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cache_file(processed: Path, cfg: SASRecConfig, threads: int, cache: Path) -> Path:
    """Where SASRec's result for this data, setting, thread count and machine is kept."""
    key = {
        "data": data_fingerprint(processed),
        "sasrec": asdict(cfg),
        "threads": threads,
        "torch": torch.__version__,
        "cpu": cpu_identity(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache / f"sasrec-s{cfg.seed}-{digest}.json"


def seed_row(processed: str, cfg: dict, threads: int, cache: str) -> dict:
    """SASRec of one seed, from the cache or trained (on `threads` torch threads) and cached.
    A module-level function of plain arguments: it runs in worker processes too."""
    torch.set_num_threads(threads)
    config = SASRecConfig(**cfg)
    path = cache_file(Path(processed), config, threads, Path(cache))
    if path.exists():
        print(f"sasrec seed {config.seed}: reused {path}", file=sys.stderr, flush=True)
        return json.loads(path.read_text())["row"]
    row = sasrec_row(Dataset.read(Path(processed)), config)
    atomic_write_json(path, {"seed": config.seed, "sasrec": cfg, "threads": threads, "row": row})
    return row


def seed_rows(
    processed: Path, cfg: SASRecConfig, seeds: list[int], jobs: int, threads: int, cache: Path
) -> dict[int, dict]:
    """{seed: SASRec's row}: `jobs` seeds at once, each in its own process when jobs > 1."""
    tasks = {s: (str(processed), asdict(replace(cfg, seed=s)), threads, str(cache)) for s in seeds}
    if jobs <= 1:
        return {s: seed_row(*task) for s, task in tasks.items()}
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {s: pool.submit(seed_row, *task) for s, task in tasks.items()}
        return {s: f.result() for s, f in futures.items()}


def with_average(split: dict[str, float]) -> dict[str, float]:
    return {**split, AVERAGE: average(split)}


def seeds_tables(per_seed: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    """Markdown: every model's test NDCG@10 and four-metric averages per seed, their mean ±
    sd per metric, and (models other than popularity and SASRec) paired against SASRec."""
    per_seed = {
        name: {s: {sp: with_average(rows[s][sp]) for sp in SPLITS} for s in seeds}
        for name, rows in per_seed.items()
    }
    names = list(per_seed)
    out = ["test NDCG@10 per seed (four-metric average, valid / test, below it):", ""]
    out.append("| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    out.append("|---|" + "---:|" * (len(seeds) + 1))
    for name in names:
        values = [per_seed[name][s]["test"]["ndcg@10"] for s in seeds]
        cells = [f"{v:.4f}" for v in values] + [f"{statistics.fmean(values):.4f}"]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    out.append("|---|" + "---|" * len(seeds))
    for name in names:
        cells = [
            f"{per_seed[name][s]['valid'][AVERAGE]:.4f} / {per_seed[name][s]['test'][AVERAGE]:.4f}"
            for s in seeds
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    metrics = [*METRIC_NAMES, AVERAGE]
    out += ["", f"mean ± sd over seeds {', '.join(map(str, seeds))}:", ""]
    out.append("| model | split | " + " | ".join(metrics) + " |")
    out.append("|---|---|" + "---|" * len(metrics))
    for name in names:
        for sp in SPLITS:
            cells = [_mean_sd([per_seed[name][s][sp][m] for s in seeds]) for m in metrics]
            out.append(f"| {name} | {sp} | " + " | ".join(cells) + " |")
    paired = [n for n in names if n not in ("popularity", "sasrec")]
    if paired and "sasrec" in per_seed:
        out += [
            "",
            "against SASRec of the same seed: mean of the per-seed ratios, paired difference of "
            "the means [95% CI, Student t over seeds], seeds ahead:",
            "",
            "| model | split | metric | ratio to SASRec | paired difference [95% CI] | seeds ahead |",
            "|---|---|---|---:|---|---:|",
        ]
        ref = per_seed["sasrec"]
        for name in paired:
            for sp, metric in (("test", "ndcg@10"), ("test", AVERAGE), ("valid", AVERAGE)):
                ours = [per_seed[name][s][sp][metric] for s in seeds]
                theirs = [ref[s][sp][metric] for s in seeds]
                ratio = statistics.fmean(a / b for a, b in zip(ours, theirs, strict=True))
                mean, lo, hi = t_interval([a - b for a, b in zip(ours, theirs, strict=True)])
                ahead = sum(a > b for a, b in zip(ours, theirs, strict=True))
                out.append(
                    f"| {name} | {sp} | {metric} | {ratio:.1%} | {mean:+.4f} [{lo:+.4f}, "
                    f"{hi:+.4f}] | {ahead} of {len(seeds)} |"
                )
    return "\n".join(out)


def against_rows(groups: list[str], seeds: list[int], runs_dir: Path | None) -> dict:
    """{group: {seed: {valid, test}}} of finished bench runs (compare_runs.py's groups)."""
    from compare_runs import load_group

    out = {}
    for group in groups:
        kind, runs = load_group(group, seeds, runs_dir)
        for seed in seeds:  # SASRec trains here: a run made on another CPU is not its pair
            cpu = made_on(runs[seed]["work"])
            if cpu is not None and cpu != cpu_identity():
                raise SystemExit(
                    f"{runs[seed]['work']}: made on {cpu}, not on this CPU "
                    f"({cpu_identity()}); SASRec would be paired with another machine's run"
                )
        out[group] = {s: {sp: runs[s][kind][sp] for sp in SPLITS} for s in seeds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="project copy (default: .)")
    parser.add_argument("--params", default="params.yaml", help="parameter file, relative to root")
    parser.add_argument("--max-epochs", type=int, default=SASRecConfig.max_epochs)
    parser.add_argument("--patience", type=int, default=SASRecConfig.patience)
    parser.add_argument("--seed", type=int, default=SASRecConfig.seed)
    parser.add_argument("--seeds", nargs="+", type=int, help="SASRec on each seed, mean ± sd")
    parser.add_argument("--jobs", type=int, default=1, help="with --seeds: seeds trained at once")
    parser.add_argument(
        "--against", nargs="+", default=[], metavar="GROUP", help="with --seeds: <tag>-<model>"
    )
    parser.add_argument("--runs", type=Path, help="with --against: bench runs folder")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.against and not args.seeds:
        parser.error("--against pairs per seed: give --seeds")
    if args.jobs < 1:
        parser.error("--jobs: 1 or more")

    root = args.root.resolve()
    params = load_params(root / args.params)
    dataset = ensure_dataset(root, args.params)
    exclude, top_k = params.evaluate.exclude_seen, params.evaluate.top_k
    cfg = SASRecConfig(
        max_epochs=args.max_epochs,
        patience=args.patience,
        seed=args.seed,
        top_k=top_k,
        exclude_seen=exclude,
        hold_out_last=params.train.hold_out_last,  # as the generative models train
    )
    popularity = dataset.popularity()
    splits = {s: dataset.eval_split(s) for s in SPLITS}
    pop_row = {
        s: evaluate_ranking(recommend_popular(popularity, split, top_k, exclude), split)
        for s, split in splits.items()
    }
    if args.seeds:
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        against = against_rows(args.against, args.seeds, args.runs)  # fail before training
        sasrec = seed_rows(Paths(root).processed, cfg, args.seeds, args.jobs, threads, CACHE)
        per_seed = {"popularity": {s: pop_row for s in args.seeds}, "sasrec": sasrec, **against}
        print(
            f"\n{dataset.n_users} users, {dataset.n_items} items, max_history "
            f"{dataset.max_history}, exclude_seen={exclude}; SASRec on {threads} torch "
            f"thread(s) per seed, {args.jobs} at once; {platform.processor() or platform.machine()},"
            f" {os.cpu_count()} CPU cores, torch {torch.__version__}\n"
        )
        print(seeds_tables(per_seed, args.seeds))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    rows: dict[str, dict] = {"popularity": pop_row}
    rows["sasrec"] = sasrec_row(dataset, cfg, on_epoch=_progress)

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
