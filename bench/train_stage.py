"""The `train` stage's two models at once (`train.concurrent: true`) against one after the other.

Three settings: at once, the first model to finish handing its CPU threads to the other (the
stage's default); at once on fixed threads (OMP_NUM_THREADS set to half the cores, which
turns the hand-off off); one after the other with every thread.

    python bench/train_stage.py                          # MovieLens-100k, params.yaml, 3 epochs
    python bench/train_stage.py --epochs 6 --repeats 1   # the full budget
    python bench/train_stage.py --set train.lr=0.003     # any parameter override

Runs `siit prepare`, `validate` and `tokenize` once in a temporary project, then `siit train`
on fresh copies of it, alternating the two settings (`--repeats` times each, so that a
machine whose speed drifts hurts both alike), all against one local Prefect server. Prints
the stage's wall time per run, the best of each setting and their ratio, and checks that
both settings produced the same bytes (reports without timings, token maps, weights).
SIIT needs an epoch per round: `--epochs` below `siit.rounds + 1` is raised to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import BIN, ROOT, merge, prefect_server  # noqa: E402

from flows.train_models import cpu_count  # noqa: E402


def parse_set(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def siit(stage: str, cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [str(BIN / "siit"), stage], cwd=cwd, env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"siit {stage} in {cwd} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def outcome(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for mode in ("static", "siit"):
        report = json.loads((root / f"reports/models/{mode}.json").read_text())
        report.pop("train_seconds", None)
        for row in report["rounds"]:
            row.pop("seconds", None)
        out[mode] = report
        folder = root / f"artifacts/models/{mode}"
        out[f"{mode}/files"] = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".safetensors", ".parquet")
        }
    for path in sorted((root / "artifacts/token_maps").glob("*.parquet")):
        out[path.name] = path.read_bytes()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="train.epochs (default 3)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE params override")
    args = parser.parse_args()

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = merge(params, parse_set(args.set))
    after = params["siit"]["refine_after"]
    least = max(after) + 1 if after else params["siit"]["rounds"] + 1  # an epoch per round
    params = merge(params, {"train": {"epochs": max(args.epochs, least)}})
    half = str(max(1, cpu_count() // 2))
    settings = {  # name: (train.concurrent, environment)
        "at once, threads handed over": (True, {}),
        "at once, fixed threads": (True, {"OMP_NUM_THREADS": half}),
        "in turn": (False, {}),
    }
    walls: dict[str, list[float]] = {name: [] for name in settings}
    outcomes: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="siit-train-stage-") as tmp, prefect_server() as env:
        base = Path(tmp) / "prepared"
        base.mkdir()
        (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, **env, "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}"}
        for stage in ("prepare", "validate", "tokenize"):
            siit(stage, base, env)
        print(
            f"MovieLens/params.yaml with train.epochs={params['train']['epochs']}, "
            f"{os.cpu_count()} CPU cores; `siit train`, alternating:",
            file=sys.stderr,
        )
        for repeat in range(args.repeats):
            for name, (concurrent, extra) in settings.items():
                work = Path(tmp) / f"{name.replace(' ', '-').replace(',', '')}-{repeat}"
                shutil.copytree(base, work, ignore=shutil.ignore_patterns("mlflow.db", "logs"))
                run_params = merge(params, {"train": {"concurrent": concurrent}})
                (work / "params.yaml").write_text(yaml.safe_dump(run_params, sort_keys=False))
                run_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
                run_env = {k: v for k, v in run_env.items() if k != "OMP_NUM_THREADS"} | extra
                walls[name].append(siit("train", work, run_env))
                print(f"  {name}, run {repeat + 1}: {walls[name][-1]:.1f} s", file=sys.stderr)
                outcomes.setdefault(name, outcome(work))
                shutil.rmtree(work)
    same = all(o == outcomes["in turn"] for o in outcomes.values())
    best = {name: min(values) for name, values in walls.items()}
    print("\n| setting | runs (s) | best (s) | speed-up |")
    print("|---|---|---:|---:|")
    for name, values in walls.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {runs} | {best[name]:.1f} | {best['in turn'] / best[name]:.2f}x |")
    print(f"\nsame models, maps and reports in every setting: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
