"""Pipeline overhead: wall time of each DVC stage and the share spent outside model compute.

    python bench/pipeline.py                    # small synthetic override, temporary copy
    python bench/pipeline.py --full             # the parameter file as it is (MovieLens-100k)
    python bench/pipeline.py --full --keep /tmp/siit-ml   # keep the copy (bench/peers.py --root)
    python bench/pipeline.py --in-place         # in this project: writes data/, reports/, ...

Every stage of dvc.yaml runs as its `siit <stage>` command would, in its own process, all
sharing one local Prefect server as `siit repro` does (its start-up is a row of its own).
Each process is the `siit` entry point with timing wrappers installed first, so the wall
time splits into (exclusive times, nested calls are not counted twice):

  model    tokenizer building, model construction, training epochs, evaluation,
           identifier refinement (SIIT), the popularity baseline
  data     Great Expectations validation (raw data, token maps; its import included),
           the leave-one-out split
  io       fetching and reading raw data, reading/writing datasets, token maps, models,
           checkpoints, reports and plots
  tracking every MLflow call (components.tracking), its import included
  imports  importing the flows module (Prefect, torch, transformers, ...)
  orchestration  the rest: interpreter start, Prefect flow/task runs and their logging

"outside" = io + tracking + imports + orchestration; the target is under 10 %.
DVC's own time (hashing, lock file) is not included: stages are run directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project root instead of bench/ (whose tokenize.py would shadow the stdlib module).
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pkgutil  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import yaml  # noqa: E402

CATEGORIES = ("model", "data", "io", "tracking", "imports", "orchestration")
OUTSIDE = ("io", "tracking", "imports", "orchestration")

# What is timed, as "module:function" or "module:Class.method" ("Class.*": its public
# methods) -> category, named where defined: names imported elsewhere are re-bound too.
# Missing targets are skipped (and listed) so the bench survives code changes; --time adds.
TARGETS = {
    "components.data.sources:fetch_raw": "io",
    "components.data.sources:load_raw": "io",
    "components.data.validation:validate_raw": "data",
    "components.data.dataset:build_dataset": "data",
    "components.data.dataset:Dataset.read": "io",
    "components.data.dataset:Dataset.write": "io",
    "components.io:atomic_write_json": "io",
    "components.io:atomic_write_parquet": "io",
    "components.evaluation:recommendations_frame": "io",
    "components.tokenizers.plots:plot_code_usage": "io",
    "components.tokenizers.token_map:TokenMap.save": "io",
    "components.tokenizers.token_map:TokenMap.load": "io",
    "components.model.recommender:GenerativeRecommender.save": "io",
    "components.model.recommender:GenerativeRecommender.load": "io",
    "components.model.training:Trainer.save": "io",
    "components.model.training:Trainer.load": "io",
    "components.siit.checkpoint:RunCheckpoint.*": "io",
    "components.siit.fingerprint:run_fingerprint": "io",
    "flows.report:_read_json": "io",
    "flows.train:_map_bytes": "io",
    "components.tokenizers.embeddings:embed_texts": "model",
    "components.tokenizers:build_token_map": "model",
    "components.model.recommender:GenerativeRecommender.create": "model",
    "components.model.session:TrainingSession.__post_init__": "model",
    "components.model.session:TrainingSession.*": "model",
    "components.siit.refine:refine_identifiers": "model",
    "components.evaluation:recommend_popular": "model",
    "components.evaluation:evaluate_ranking": "model",
    "components.tokenizers.validation:validate_token_map": "data",
    "components.tracking:log_params": "tracking",
    "components.tracking:log_metrics": "tracking",
    "components.tracking:log_artifact": "tracking",
    "components.tracking:log_dict": "tracking",
    "components.tracking:start_run": "tracking",  # entering and leaving the run only
}

# The default run's override: the synthetic source (300 users, 120 items), a small codebook,
# one epoch per training round.
SMALL = {"data": {"source": "synthetic"}, "tokenize": {"method": "random", "codebook_size": 16}}


# worker: one stage, instrumented -----------------------------------------------------
class Profile:
    """Exclusive seconds per category: a timed call nested in another counts only once."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._local = threading.local()

    @contextlib.contextmanager
    def timing(self, category: str) -> Iterator[None]:
        stack = self._local.__dict__.setdefault("stack", [])
        stack.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[category] += elapsed - stack.pop()
            if stack:
                stack[-1] += elapsed

    def wrap(self, category: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.timing(category):
                return fn(*args, **kwargs)

        return timed

    def wrap_context(self, category: str, fn: Callable) -> Callable:
        """A context-manager factory whose entry and exit are timed, not its body."""

        @functools.wraps(fn)
        @contextlib.contextmanager
        def timed(*args, **kwargs):
            with self.timing(category):
                cm = fn(*args, **kwargs)
                value = cm.__enter__()
            try:
                yield value
            except BaseException:
                with self.timing(category):
                    if not cm.__exit__(*sys.exc_info()):
                        raise
            else:
                with self.timing(category):
                    cm.__exit__(None, None, None)

        return timed

    def instrument(self, target: str, category: str) -> bool:
        """Replace `module:name` / `module:Class.name` by a timed version; False if absent."""
        module_name, _, path = target.partition(":")
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            return False
        class_name, _, name = path.rpartition(".")
        if class_name:
            owner = getattr(owner, class_name, None)
            if not inspect.isclass(owner):
                return False
            if name == "*":
                public = [n for n, v in vars(owner).items() if _is_method(n, v)]
                return all(self._patch(owner, n, category) for n in public) and bool(public)
        if not hasattr(owner, name):
            return False
        original = inspect.getattr_static(owner, name)
        wrapped = self._patch(owner, name, category)
        if not class_name:  # `from module import name` elsewhere holds the original
            for module in list(sys.modules.values()):
                if getattr(module, "__name__", "").partition(".")[0] in ("flows", "components"):
                    for key, value in list(vars(module).items()):
                        if value is original:
                            setattr(module, key, wrapped)
        return True

    def _patch(self, owner: object, name: str, category: str) -> object:
        raw = inspect.getattr_static(owner, name)
        if getattr(getattr(raw, "__func__", raw), "__wrapped_by_bench__", False):
            return raw
        if isinstance(raw, classmethod | staticmethod):
            wrapped = type(raw)(self.wrap(category, raw.__func__))
        elif name == "start_run":
            wrapped = self.wrap_context(category, raw)
        else:
            wrapped = self.wrap(category, raw)
        (wrapped.__func__ if hasattr(wrapped, "__func__") else wrapped).__wrapped_by_bench__ = True
        setattr(owner, name, wrapped)
        return wrapped


def _is_method(name: str, value: object) -> bool:
    if name.startswith("_"):
        return False
    return inspect.isfunction(value) or isinstance(value, classmethod | staticmethod)


def worker(out_file: Path, siit_args: list[str], extra: dict[str, str]) -> int:
    from flows.env import configure_environment

    configure_environment()
    profile = Profile()
    with profile.timing("imports"):  # every stage flow: Prefect, torch, transformers, ...
        import flows
        import flows.cli

        for module in pkgutil.iter_modules(flows.__path__):
            importlib.import_module(f"flows.{module.name}")
    missing = [t for t, c in {**TARGETS, **extra}.items() if not profile.instrument(t, c)]
    rc = flows.cli.main(siit_args)
    out_file.write_text(json.dumps({"seconds": profile.seconds, "missing": missing}))
    return rc


# driver: every stage, one Prefect server ---------------------------------------------
def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def stage_commands(root: Path) -> list[tuple[str, list[str]]]:
    """(stage, siit arguments) in dvc.yaml order; stages not run by `siit` are skipped."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = []
    for name, stage in stages.items():
        cmd = shlex.split(stage["cmd"] if isinstance(stage["cmd"], str) else stage["cmd"][0])
        if cmd and cmd[0] == "siit":
            out.append((name, cmd[1:]))
        else:
            print(f"skipping stage {name!r}: not a siit command ({stage['cmd']})", file=sys.stderr)
    return out


def prepare_root(args: argparse.Namespace) -> tuple[Path, str]:
    """The directory the stages run in, and its parameter file (relative to it)."""
    if args.in_place:
        return ROOT, args.params
    root = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="siit-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((ROOT / args.params).read_text())
    if not args.full:
        rounds = params.get("siit", {}).get("rounds", 0) + 1
        params = merge(params, {**SMALL, "train": {"epochs": rounds}})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root, "params.yaml"


def run_stage(root: Path, siit_args: list[str], extra: list[str], env: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "profile.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out_file)]
        cmd += [f"--time={t}" for t in extra] + ["--", *siit_args]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not out_file.exists():
            raise SystemExit(f"siit {' '.join(siit_args)} failed:\n{proc.stderr[-4000:]}")
        profile = json.loads(out_file.read_text())
    seconds = {c: float(profile["seconds"].get(c, 0.0)) for c in CATEGORIES}
    seconds["orchestration"] = wall - sum(v for c, v in seconds.items() if c != "orchestration")
    return {"wall": wall, **seconds, "missing": profile["missing"]}


def table(rows: dict[str, dict]) -> str:
    header = ["stage", "wall (s)", *CATEGORIES, "outside"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        outside = sum(row[c] for c in OUTSIDE)
        cells = [f"{row[c]:.1f}" for c in CATEGORIES]
        share = 100 * outside / row["wall"] if row["wall"] else 0.0
        lines.append(f"| {name} | {row['wall']:.1f} | " + " | ".join(cells) + f" | {share:.1f}% |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="base parameter file")
    parser.add_argument("--full", action="store_true", help="no synthetic override")
    parser.add_argument("--in-place", action="store_true", help="run in this project directory")
    parser.add_argument("--keep", help="run in this directory (kept) instead of a temporary one")
    parser.add_argument(
        "--time", action="append", default=[], help="extra MODULE:ATTR=CATEGORY to time"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("siit_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra = dict(t.split("=", 1) for t in args.time)
    if args.worker:
        return worker(Path(args.worker), args.siit_args, extra)
    if args.in_place and (args.keep or args.params != "params.yaml" and not args.full):
        parser.error("--in-place runs the project's own params file: use it with --full")

    from flows.env import configure_environment
    from flows.server import local_prefect_server

    root, params_file = prepare_root(args)
    os.chdir(root)  # PREFECT_HOME and the MLflow database default to the run directory
    configure_environment()
    rows: dict[str, dict] = {}
    missing: set[str] = set()
    start = time.perf_counter()
    server = local_prefect_server(Path(os.environ["PREFECT_HOME"]))
    url = server.__enter__()
    rows["prefect server start"] = dict.fromkeys(CATEGORIES, 0.0)
    rows["prefect server start"].update(wall=time.perf_counter() - start)
    rows["prefect server start"]["orchestration"] = rows["prefect server start"]["wall"]
    env = {**os.environ, "PREFECT_API_URL": url}
    try:
        for name, siit_args in stage_commands(root):
            print(f"stage {name}: siit {' '.join(siit_args)}", file=sys.stderr)
            row = run_stage(root, ["--params", params_file, *siit_args], args.time, env)
            missing.update(row.pop("missing"))
            rows[name] = row
    finally:
        server.__exit__(None, None, None)
    rows["total"] = {k: sum(r[k] for r in rows.values()) for k in ("wall", *CATEGORIES)}

    print(
        f"\n{'full' if args.full else 'small synthetic'} parameters ({args.params}), run in "
        f"{root}; {os.cpu_count()} CPU cores\n"
    )
    print(table(rows))
    total = rows["total"]
    outside = sum(total[c] for c in OUTSIDE)
    print(
        f"\noutside model compute: {100 * outside / total['wall']:.1f}% of {total['wall']:.1f} s "
        f"(io + tracking + imports + orchestration; model + data = "
        f"{total['model'] + total['data']:.1f} s)"
    )
    if missing:
        print(f"not instrumented (absent): {', '.join(sorted(missing))}", file=sys.stderr)
    if not args.keep and not args.in_place:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
