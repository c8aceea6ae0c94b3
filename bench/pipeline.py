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
  startup  the interpreter and the imports until the stage's flow starts (Prefect, torch,
           transformers, ... whatever the stage's flow module imports)
  orchestration  the rest: Prefect flow and task runs, their logging, the process exit

"outside" = io + tracking + startup + orchestration; the target is under 10 %.
Wrappers are installed as each module is imported, so a stage imports only what its own
`siit <stage>` imports.
The `train` stage's two model processes (flows/train_models.py; at once with
`train.concurrent`) run instrumented as well: each is a row of its own ("train: static",
"train: siit"; not added to the total), and the stage's row splits its wall time in the
proportions of theirs, its own start-up and waiting apart.
Stages that are not `siit` commands (none in today's dvc.yaml) run uninstrumented; all of
their time counts as io.
DVC's own time (hashing, lock file) is not included: stages are run directly.
Targets absent from their module, and targets some stage imported but no stage called (a
stale name whose time would land in another category), are listed after the table.
"""

from __future__ import annotations

import sys
import time

STARTED = time.perf_counter()  # a stage process's bench code starts here

from pathlib import Path  # noqa: E402

# The project root instead of bench/ (bench/ scripts import the project from its root).
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from importlib.machinery import ModuleSpec  # noqa: E402
from types import ModuleType  # noqa: E402

import yaml  # noqa: E402

CATEGORIES = ("model", "data", "io", "tracking", "startup", "orchestration")
OUTSIDE = ("io", "tracking", "startup", "orchestration")

# What is timed, as "module:function" or "module:Class.method" ("Class.*": its public
# methods) -> category, named where defined: wrapped right after that module runs, so every
# `from module import name` gets the timed one. A target absent from its module is listed,
# not fatal, so the bench survives code changes; --time adds targets.
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
    "components.siit.fingerprint:run_fingerprints": "io",
    "flows.report:_read_json": "io",
    "flows.train:_map_bytes": "io",
    "components.tokenizers.embeddings:embed_texts": "model",
    "components.tokenizers:fit_token_map": "model",  # build_token_map calls it too
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
    "components.tracking:start_run": "tracking",
    "components.tracking:set_tags": "tracking",
    "components.tracking:find_run": "tracking",
    "components.tracking:log_recommender": "tracking",  # the registered MLflow model
    "components.tracking:gate_champion": "tracking",
    "components.tracking:load_pyfunc": "tracking",
    "flows.register:served_ndcg": "model",  # the served model on validation (its load: tracking)
}
CONTEXT_MANAGERS = {"components.tracking:start_run"}  # entry and exit timed, not the body

# The default run's override: the synthetic source (300 users, 120 items), a small codebook,
# one epoch per training round.
SMALL = {"data": {"source": "synthetic"}, "tokenize": {"method": "random", "codebook_size": 16}}


# worker: one stage, instrumented -----------------------------------------------------
class Profile:
    """Exclusive seconds per category: a timed call nested in another counts only once."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        # calls per target ("module:path" as in TARGETS), every instrumented one listed
        self.calls: dict[str, int] = {}
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

    def _called(self, target: str | None) -> None:
        if target is not None:
            self.calls[target] += 1

    def wrap(self, category: str, fn: Callable, target: str | None = None) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self._called(target)
            with self.timing(category):
                return fn(*args, **kwargs)

        return timed

    def wrap_context(self, category: str, fn: Callable, target: str | None = None) -> Callable:
        """A context-manager factory whose entry and exit are timed, not its body."""

        @functools.wraps(fn)
        @contextlib.contextmanager
        def timed(*args, **kwargs):
            self._called(target)
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

    def instrument(
        self, module: ModuleType, path: str, category: str, context: bool = False
    ) -> bool:
        """Replace `name` / `Class.name` / `Class.*` of a loaded module by timed versions,
        whose calls count towards the target `module:path` (`calls`)."""
        target = f"{module.__name__}:{path}"
        class_name, _, name = path.rpartition(".")
        owner: object = module
        if class_name:
            owner = getattr(module, class_name, None)
            if not inspect.isclass(owner):
                return False
            if name == "*":
                public = [n for n, v in vars(owner).items() if _is_method(n, v)]
                for method in public:
                    self._patch(owner, method, category, target)
                return bool(public)
        if not hasattr(owner, name):
            return False
        self._patch(owner, name, category, target, context)
        return True

    def _patch(
        self, owner: object, name: str, category: str, target: str, context: bool = False
    ) -> None:
        self.calls.setdefault(target, 0)
        raw = inspect.getattr_static(owner, name)
        if isinstance(raw, classmethod | staticmethod):
            wrapped = type(raw)(self.wrap(category, raw.__func__, target))
        elif context:
            wrapped = self.wrap_context(category, raw, target)
        else:
            wrapped = self.wrap(category, raw, target)
        setattr(owner, name, wrapped)


def _is_method(name: str, value: object) -> bool:
    if name.startswith("_"):
        return False
    return inspect.isfunction(value) or isinstance(value, classmethod | staticmethod)


# where a stage's flow starts: a flow called (`Flow.__call__`), or a model process's flow run
# as the `train` stage's subflow (`run_flow`, flows.subflows)
FLOW_STARTS = ("prefect.flows", "prefect.flow_engine")


class InstrumentOnImport(importlib.abc.MetaPathFinder):
    """Installs the timing wrappers the moment a target's module has been executed.

    Only what the stage itself imports gets imported (and wrapped), and every later
    `from module import name` already receives the wrapped function.
    """

    def __init__(
        self, profile: Profile, targets: dict[str, str], on_flow_start: Callable[[], None]
    ) -> None:
        self.profile = profile
        self.by_module: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for target, category in targets.items():
            module, _, path = target.partition(":")
            self.by_module[module].append((path, category))
        self.on_flow_start = on_flow_start
        self.absent: list[str] = []

    def find_spec(self, name: str, path: object, target: object = None) -> ModuleSpec | None:
        if name not in self.by_module and name not in FLOW_STARTS:
            return None
        sys.meta_path.remove(self)  # let the other finders find it
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def exec_module(module: ModuleType) -> None:
                execute(module)
                self.loaded(module)

            spec.loader.exec_module = exec_module  # a per-module loader instance
        return spec

    def loaded(self, module: ModuleType) -> None:
        if module.__name__ == "prefect.flows":
            call = module.Flow.__call__

            @functools.wraps(call)
            def flow_call(*args, **kwargs):
                self.on_flow_start()
                return call(*args, **kwargs)

            module.Flow.__call__ = flow_call
        if module.__name__ == "prefect.flow_engine":  # a model process's subflow starts here
            run_flow = module.run_flow

            @functools.wraps(run_flow)
            def run_flow_call(*args, **kwargs):
                self.on_flow_start()
                return run_flow(*args, **kwargs)

            module.run_flow = run_flow_call
        for path, category in self.by_module.get(module.__name__, []):
            target = f"{module.__name__}:{path}"
            if not self.profile.instrument(module, path, category, target in CONTEXT_MANAGERS):
                self.absent.append(target)


def worker(out_file: Path, siit_args: list[str], extra: dict[str, str], started: float) -> int:
    """One `siit` command with timing wrappers; writes the seconds per category to out_file."""
    profile = Profile()
    flow_start: list[tuple[float, float]] = []  # (time, seconds timed so far) at the first flow

    def on_flow_start() -> None:
        if not flow_start:
            flow_start.append((time.perf_counter(), sum(profile.seconds.values())))

    hook = InstrumentOnImport(profile, {**TARGETS, **extra}, on_flow_start)
    sys.meta_path.insert(0, hook)
    import flows.cli

    rc = flows.cli.main(siit_args)
    at, timed = flow_start[0] if flow_start else (time.perf_counter(), 0.0)
    seconds = {**profile.seconds, "startup": at - started - timed}
    ended = time.perf_counter()
    out_file.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "started": started,
                "ended": ended,
                "absent": hook.absent,
                "calls": profile.calls,
            }
        )
    )
    return rc


# driver: every stage, one Prefect server ---------------------------------------------
def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def stage_commands(root: Path) -> list[tuple[str, list[str]]]:
    """(stage, command) in dvc.yaml order."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return [
        (name, shlex.split(stage["cmd"] if isinstance(stage["cmd"], str) else stage["cmd"][0]))
        for name, stage in stages.items()
    ]


def run_other(root: Path, cmd: list[str], env: dict) -> dict:
    """A stage that is not a `siit` command, uninstrumented: all of its time counts as io."""
    if cmd[0] in ("python", "python3"):
        cmd = [sys.executable, *cmd[1:]]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return {"wall": wall, **dict.fromkeys(CATEGORIES, 0.0), "io": wall, "absent": [], "calls": {}}


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


def _worker_command(out_file: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", out_file]
    return cmd + [f"--time={t}" for t in extra] + ["--"]


def _categories(profile: dict, start: float, end: float) -> dict:
    seconds = {c: float(profile["seconds"].get(c, 0.0)) for c in CATEGORIES}
    # perf_counter is CLOCK_MONOTONIC, one clock for every process: the interpreter's own start
    seconds["startup"] += profile["started"] - start
    seconds["orchestration"] = (end - start) - sum(
        v for c, v in seconds.items() if c != "orchestration"
    )
    return {"wall": end - start, **seconds}


def run_stage(root: Path, siit_args: list[str], extra: list[str], env: dict) -> dict:
    """One stage's row. The `train` stage's model processes (flows/train_models.py) run the
    instrumented worker too; they become rows of their own ("train: static", ...), and the
    stage's row splits its wall time in the proportions of theirs (they may run at once)."""
    from flows.train_models import LAUNCHER_ENV, MODES

    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "profile.json"
        child = shlex.join(_worker_command(str(Path(tmp) / "{mode}.json"), extra))
        cmd = _worker_command(str(out_file), extra) + siit_args
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=root, env={**env, LAUNCHER_ENV: child}, capture_output=True, text=True
        )
        end = time.perf_counter()
        if proc.returncode != 0 or not out_file.exists():
            raise SystemExit(f"siit {' '.join(siit_args)} failed:\n{proc.stderr[-4000:]}")
        profile = json.loads(out_file.read_text())
        children = {
            mode: json.loads((Path(tmp) / f"{mode}.json").read_text())
            for mode in MODES
            if (Path(tmp) / f"{mode}.json").exists()
        }
    calls = Counter(profile["calls"])
    for child in children.values():
        calls.update(child["calls"])
    row = {**_categories(profile, start, end), "absent": profile["absent"], "calls": dict(calls)}
    if not children:
        return row
    # a child's wall: from its interpreter's start (its parent's spawn, about) to its end
    spawned = min(p["started"] for p in children.values())
    rows = {m: _categories(p, min(spawned, p["started"]), p["ended"]) for m, p in children.items()}
    child_total = {c: sum(r[c] for r in rows.values()) for c in ("wall", *CATEGORIES)}
    own = row["wall"] - (max(p["ended"] for p in children.values()) - spawned)
    scale = (row["wall"] - own) / child_total["wall"]
    startup = row["startup"]  # the stage process's own; the rest of its own time orchestrates
    for c in CATEGORIES:
        row[c] = child_total[c] * scale
    row["startup"] += startup
    row["orchestration"] += own - startup
    row["children"] = rows
    absent = set(row["absent"]).intersection(*(p["absent"] for p in children.values()))
    row["absent"] = sorted(absent)  # instrumented in none of the processes
    return row


def metrics_lines(path: Path) -> str:
    """The run's results, so a faster run can be checked to give the same quality."""
    if not path.exists():
        return ""
    metrics = json.loads(path.read_text())
    lines = ["", "| model | valid ndcg@10 | test recall@10 | test ndcg@10 |", "|---|---|---|---|"]
    for name, split in metrics.items():
        if isinstance(split, dict) and "test" in split:
            valid, test = split.get("valid", {}), split["test"]
            lines.append(
                f"| {name} | {valid.get('ndcg@10', float('nan')):.4f} | "
                f"{test['recall@10']:.4f} | {test['ndcg@10']:.4f} |"
            )
    return "\n".join(lines)


def never_called(calls: list[dict[str, int]]) -> list[str]:
    """Targets some process instrumented (its module imported) but no process called: a stale
    target whose time lands elsewhere (e.g. a model-compute function renamed or no longer on
    the path: its time counted as orchestration)."""
    total: Counter[str] = Counter()
    for counts in calls:
        total.update(counts)
    return sorted(target for target, n in total.items() if n == 0)


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
        return worker(Path(args.worker), args.siit_args, extra, STARTED)
    if args.in_place and (args.keep or args.params != "params.yaml" and not args.full):
        parser.error("--in-place runs the project's own params file: use it with --full")

    from flows.env import configure_environment
    from flows.server import local_prefect_server

    root, params_file = prepare_root(args)
    os.chdir(root)  # PREFECT_HOME and the MLflow database default to the run directory
    configure_environment()
    rows: dict[str, dict] = {}
    absent: set[str] = set()
    calls: list[dict[str, int]] = []
    start = time.perf_counter()
    server = local_prefect_server(Path(os.environ["PREFECT_HOME"]))
    url = server.__enter__()
    rows["prefect server start"] = dict.fromkeys(CATEGORIES, 0.0)
    rows["prefect server start"].update(wall=time.perf_counter() - start)
    rows["prefect server start"]["orchestration"] = rows["prefect server start"]["wall"]
    env = {**os.environ, "PREFECT_API_URL": url}
    try:
        for name, cmd in stage_commands(root):
            print(f"stage {name}: {shlex.join(cmd)}", file=sys.stderr)
            if cmd[0] == "siit":
                row = run_stage(root, ["--params", params_file, *cmd[1:]], args.time, env)
            else:
                row = run_other(root, cmd, env)
            absent.update(row.pop("absent"))
            calls.append(row.pop("calls"))
            children = row.pop("children", {})
            rows[name] = row
            for mode, child in children.items():  # shown, not added to the total again
                rows[f"  {name}: {mode}"] = {**child, "child": True}
    finally:
        server.__exit__(None, None, None)
    top = [r for r in rows.values() if not r.get("child")]
    rows["total"] = {k: sum(r[k] for r in top) for k in ("wall", *CATEGORIES)}

    print(
        f"\n{'full' if args.full else 'small synthetic'} parameters ({args.params}), run in "
        f"{root}; {os.cpu_count()} CPU cores\n"
    )
    print(table(rows))
    total = rows["total"]
    outside = sum(total[c] for c in OUTSIDE)
    print(
        f"\noutside model compute: {100 * outside / total['wall']:.1f}% of {total['wall']:.1f} s "
        f"(io + tracking + startup + orchestration; model + data = "
        f"{total['model'] + total['data']:.1f} s)"
    )
    print(metrics_lines(root / "reports" / "metrics.json"))
    if absent:
        print(f"not instrumented (absent): {', '.join(sorted(absent))}", file=sys.stderr)
    unused = never_called(calls)
    if unused:
        print(f"timed but called in no stage: {', '.join(unused)}", file=sys.stderr)
    if not args.keep and not args.in_place:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
