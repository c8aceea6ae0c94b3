"""The `train` stage: the static and the SIIT model, at the same time or one after the other.

The two models are independent (same data, initial map, seed and budget; only the
refinements differ), so with `train.concurrent` (the default) each trains in its own
`siit train_<mode>` process on an equal share of the CPU threads. On small models two
single-threaded processes get more out of two cores than one process with two threads
(docs/benchmarks.md), and the results are the same bytes either way. When one model finishes,
the other takes over its threads (components.thread_share).

Each model keeps its checkpoint until both are done: a stage killed after one model finished
re-trains only the other on the next run (the finished one just writes its outputs again).
When one model fails, the other is stopped at once (it resumes from its last round) and the
stage fails naming the model; its own error is printed above by its process and the
traceback is in the log file. In the Prefect UI both models' flow runs are subflows of the
stage's (flows.subflows).

This module imports no torch: the stage process only starts, watches and stops the two.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger

from components.config import load_params
from components.paths import Paths
from components.thread_share import SHARE_ENV, write_share
from flows.common import KEEP_CHECKPOINT_ENV
from flows.server import stop_processes
from flows.subflows import PARENT_ENV, end_model_task_run, start_model_task_run

MODES = ("static", "siit")
# The command a model's process runs, `{mode}` filled in; default: this interpreter's `siit`.
# bench/pipeline.py points it at its instrumented worker.
LAUNCHER_ENV = "SIIT_TRAIN_LAUNCHER"
STOP_GRACE_S = 60.0


class TrainingFailed(RuntimeError):
    pass


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_command(mode: str, params_file: str) -> list[str]:
    launcher = os.environ.get(LAUNCHER_ENV)
    prefix = (
        shlex.split(launcher.format(mode=mode)) if launcher else [sys.executable, "-m", "flows.cli"]
    )
    return [*prefix, "--params", params_file, f"train_{mode}"]


def shares_threads(concurrent: int, threads: int) -> bool:
    """Whether the stage splits the CPU threads itself (neither `train.threads` nor the user's
    OMP_NUM_THREADS fixes them): then it also hands a finished model's threads on."""
    return concurrent > 1 and not threads and "OMP_NUM_THREADS" not in os.environ


def child_env(concurrent: int, threads: int, share_file: Path | None = None) -> dict[str, str]:
    """Each process's environment: its share of the CPU threads unless `train.threads` (or
    the user's OMP_NUM_THREADS) says otherwise, and the file that hands a finished model's
    threads on; no progress bars fighting over one terminal."""
    env = {**os.environ, KEEP_CHECKPOINT_ENV: "1"}
    if concurrent > 1:
        if shares_threads(concurrent, threads):
            env["OMP_NUM_THREADS"] = str(max(1, cpu_count() // concurrent))
            if share_file is not None:
                env[SHARE_ENV] = str(share_file)
        env.setdefault("SIIT_PROGRESS", "0")
    return env


def _die_with_parent() -> None:
    """In the child: SIGTERM when the stage process dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextmanager
def _stopped_on_signal(procs: dict[str, subprocess.Popen]) -> Iterator[None]:
    """SIGTERM to the stage stops its models first (they would otherwise train on, orphaned)."""

    def on_signal(signum, frame) -> None:
        stop_processes(procs.values(), STOP_GRACE_S)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_models(
    modes: tuple[str, ...], params_file: str, root: Path, concurrent: bool, threads: int
) -> dict[str, float]:
    """Run `siit train_<mode>` for every mode (at once or in turn); seconds per mode.
    Raises TrainingFailed naming the first model that failed (the others are stopped)."""
    seconds: dict[str, float] = {}
    batches = [modes] if concurrent else [(mode,) for mode in modes]
    for batch in batches:
        procs: dict[str, subprocess.Popen] = {}
        started = time.perf_counter()
        sharing = shares_threads(len(batch), threads)
        folder = tempfile.TemporaryDirectory(prefix="siit-threads-") if sharing else nullcontext()
        with _stopped_on_signal(procs), folder as tmp:
            share = Path(tmp) / "threads" if tmp is not None else None
            env = child_env(len(batch), threads, share)
            tracked: dict[str, UUID | None] = {}  # the Prefect task runs the processes nest under
            try:
                for mode in batch:
                    tracked[mode] = start_model_task_run(mode)
                    parent = {PARENT_ENV: str(tracked[mode])} if tracked[mode] else {}
                    procs[mode] = subprocess.Popen(
                        child_command(mode, params_file),
                        cwd=root,
                        env={**env, **parent},
                        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                    )
                failed = _wait_all(procs, started, seconds, share, tracked)
            except BaseException:
                stop_processes(procs.values(), STOP_GRACE_S)
                _end_unfinished(tracked, seconds, "the stage was stopped")
                raise
        if failed:
            mode, code = failed
            stop_processes(procs.values(), STOP_GRACE_S)
            _end_unfinished(tracked, seconds, f"stopped: train_{mode} failed")
            others = ", the other model stopped" if len(batch) > 1 else ""
            raise TrainingFailed(
                f"train_{mode} failed (exit {code}); its error is printed above{others}. "
                "A re-run resumes every model from its last finished round."
            )
    return seconds


def _end_unfinished(tracked: dict[str, UUID | None], seconds: dict[str, float], why: str) -> None:
    for mode, task_run in tracked.items():
        if mode not in seconds:
            end_model_task_run(task_run, "cancelled", why)


def _wait_all(
    procs: dict[str, subprocess.Popen],
    started: float,
    seconds: dict[str, float],
    share: Path | None = None,
    tracked: dict[str, UUID | None] | None = None,
) -> tuple[str, int] | None:
    """Wait until all processes ended or one failed: (mode, exit code) of the first failure.
    share: when a model finishes, the CPU threads are shared anew among those still training.
    tracked: the Prefect task runs standing for the processes, ended with them."""
    running = dict(procs)
    tracked = tracked or {}
    while running:
        for mode, proc in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[mode]
            seconds[mode] = time.perf_counter() - started
            end_model_task_run(
                tracked.get(mode),
                "completed" if code == 0 else "failed",
                "" if code == 0 else f"exit {code}",
            )
            if code != 0:
                return mode, code
            if share is not None and running:
                write_share(share, max(1, cpu_count() // len(running)))
        time.sleep(0.2)
    return None


@flow(name="train-models")
def train_models_flow(params_file: str = "params.yaml", root: str = ".") -> dict[str, float]:
    """Both models; each keeps its checkpoint until both are done (then they are removed)."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    logger = get_run_logger()
    concurrent = params.train.concurrent
    logger.info(
        "training %s %s",
        " and ".join(MODES),
        f"at once ({cpu_count()} CPU threads shared)" if concurrent else "one after the other",
    )
    seconds = run_models(MODES, params_file, Path(root), concurrent, params.train.threads)
    for mode in MODES:
        shutil.rmtree(paths.checkpoints / mode, ignore_errors=True)
    logger.info("trained: %s", ", ".join(f"{mode} {seconds[mode]:.1f} s" for mode in MODES))
    return seconds
