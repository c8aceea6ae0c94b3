"""Scheduled retraining: `siit deploy --cron "0 3 * * 1" [-S key=value ...]` serves a Prefect
deployment whose flow runs the pipeline through DVC.

Each run of the `retrain` flow:
1. takes the pipeline lock (`.dvc/tmp/siit-pipeline.lock`): a second run started while one
   holds it waits up to `wait_s` seconds (0 by default) and then fails with a message saying
   which run holds it, having changed nothing. Within one deployment Prefect's own
   concurrency limit (1, enqueue) already makes a second triggered run wait for the first;
   the lock also covers a manual `dvc repro` or a second `siit deploy` on the same tree;
2. applies the deployment's `-S` overrides to params.yaml (as `dvc exp run -S` does), and
   `train.start`: with `--start auto` (the default) `champion` once the registry has a
   champion, else `scratch`; an explicit `-S train.start=...` wins. A champion that does not
   fit (other model or identifier parameters, an older layout, another catalogue) makes the
   training stages start from scratch, with the reason in their MLflow tags
   (`train.start`, `warm_start.fallback`) and in this flow's result;
3. when the user's source files (`data.source: files | amazon`) differ from their snapshot in
   data/raw (new interactions appended, say), re-runs `prepare` (`dvc repro -f prepare`):
   DVC cannot track files whose paths live in params.yaml;
4. runs `dvc repro`, so dvc.lock records the lineage and unchanged stages are skipped; every
   stage's MLflow run carries the flow run's id as `siit.pipeline_run`;
5. returns (and logs) the stages that ran, how training started and, when `register` ran,
   the registry decision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

LOCK = ".dvc/tmp/siit-pipeline.lock"
DEFAULT_NAME = "siit-retrain"
FLOW_NAME = "retrain"


class PipelineBusy(RuntimeError):
    """Another pipeline run holds the lock."""


def ran_stages(dvc_output: str) -> list[str]:
    """Stage names from `dvc repro` output ("Running stage 'x':")."""
    return [
        line.split("'")[1] for line in dvc_output.splitlines() if line.startswith("Running stage")
    ]


def pipeline_lock(root: Path):
    from filelock import FileLock

    path = root / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def _holder(root: Path) -> str:
    info = root / (LOCK + ".owner")
    return info.read_text().strip() if info.exists() else "unknown"


def apply_overrides(params_file: Path, overrides: list[str]) -> None:
    """`key=value` overrides written into params.yaml, comments kept (DVC's own helper)."""
    if not overrides:
        return
    from dvc.utils.hydra import apply_overrides as dvc_apply

    dvc_apply(str(params_file), list(overrides))
    from components.config import load_params

    load_params(params_file)  # fail now on a typo, before any stage runs


START_CHOICES = ("auto", "champion", "scratch")


def start_override(root: Path, overrides: list[str], start: str = "auto") -> list[str]:
    """The overrides of one run with its `train.start`: an explicit `-S train.start=...`
    wins; `auto` means `champion` when the registry has one, else `scratch`."""
    import contextlib

    from components import tracking
    from components.config import load_params

    if start not in START_CHOICES:
        raise ValueError(f"start must be one of {', '.join(START_CHOICES)}, not {start!r}")
    if any(o.split("=", 1)[0].strip() == "train.start" for o in overrides):
        return list(overrides)
    if start == "auto":
        with contextlib.chdir(root):  # a relative sqlite:/// URI is the project's
            cfg = load_params(root / "params.yaml").tracking
            start = "champion" if tracking.champion_version(cfg) is not None else "scratch"
    return [*overrides, f"train.start={start}"]


def training_start(root: Path) -> dict | None:
    """How the last SIIT training started (its report), with the fallback reason if any."""
    report = root / "reports/models/siit.json"
    return json.loads(report.read_text()).get("start") if report.exists() else None


def changed_sources(root: Path) -> list[str]:
    """The user's input files that differ from (or are missing in) the data/raw snapshot."""
    from components.config import load_params
    from components.paths import Paths
    from components.tracking import dvc_md5

    data = load_params(root / "params.yaml").data
    if data.source == "files":
        inputs = [data.files.interactions, data.files.items]
    elif data.source == "amazon":
        inputs = [data.amazon.reviews, data.amazon.metadata]
    else:
        return []
    raw = Paths(root).raw
    changed = []
    for value in inputs:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else root / path
        snapshot = raw / path.name
        if path.is_file() and (not snapshot.is_file() or dvc_md5(path) != dvc_md5(snapshot)):
            changed.append(str(value))
    return changed


def repro(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    dvc = str(Path(sys.executable).parent / "dvc")
    return subprocess.run(
        [dvc, "repro", *args], cwd=root, env=env, capture_output=True, text=True, check=False
    )


@flow(name=FLOW_NAME, persist_result=True, log_prints=True)
def retrain_flow(
    root: str = ".", overrides: list[str] | None = None, wait_s: float = 0, start: str = "auto"
) -> dict:
    """The pipeline under one lock: overrides (and `train.start`) -> `dvc repro` -> what ran,
    how training started and what was registered."""
    from filelock import Timeout

    logger = get_run_logger()
    root_path = Path(root).resolve()
    run_id = str(flow_run.get_id() or "")
    lock = pipeline_lock(root_path)
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise PipelineBusy(
            f"another pipeline run holds {root_path / LOCK} ({_holder(root_path)}); "
            f"waited {wait_s:g} s; this run changed nothing. Retry when it has finished."
        ) from None
    try:
        (root_path / (LOCK + ".owner")).write_text(f"flow run {run_id}, pid {os.getpid()}\n")
        run_overrides = start_override(root_path, list(overrides or []), start)
        apply_overrides(root_path / "params.yaml", run_overrides)
        logger.info("training starts: %s", run_overrides[-1] if run_overrides else "as params.yaml")
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
            "SIIT_PIPELINE_RUN": run_id or os.environ.get("SIIT_PIPELINE_RUN", ""),
        }
        stages: list[str] = []
        changed = changed_sources(root_path)
        runs = [("-f", "prepare"), ()] if changed else [()]
        if changed:
            logger.info("source files changed since the last snapshot: %s", changed)
        for args in runs:
            proc = repro(root_path, env, *args)
            stages += [s for s in ran_stages(proc.stdout) if s not in stages]
            if proc.returncode != 0:
                raise RuntimeError(
                    f"dvc repro {' '.join(args)} failed (exit {proc.returncode}) after stages "
                    f"{stages}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
                )
        record = root_path / "artifacts/registered_model.json"
        registered = (
            json.loads(record.read_text()) if "register" in stages and record.exists() else None
        )
        logger.info("dvc repro ran %s", stages or "no stage (nothing changed)")
        started = training_start(root_path) if "train" in stages else None
        if started and "fallback" in started:
            logger.warning("training started from scratch: %s", started["fallback"])
        if registered:
            logger.info(
                "registered %s version %s: %s",
                registered["registered_model"],
                registered["version"],
                registered["reason"],
            )
        return {"stages": stages, "registered": registered, "start": started}
    finally:
        (root_path / (LOCK + ".owner")).unlink(missing_ok=True)
        lock.release()


def serve(
    cron: str,
    overrides: list[str],
    name: str = DEFAULT_NAME,
    root: str = ".",
    wait_s: float = 0,
    start: str = "auto",
) -> None:
    """Create/update the deployment and serve it until interrupted (the Prefect API's runner)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    if overrides:  # a bad override fails here, not at 3 am
        _check_overrides(Path(root), overrides)
    retrain_flow.serve(
        name=name,
        cron=cron,
        parameters={
            "root": str(Path(root).resolve()),
            "overrides": overrides,
            "wait_s": wait_s,
            "start": start,
        },
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE"),
        description="siit: `dvc repro` on a schedule (retrain, register, gate the champion)",
        tags=["siit"],
    )


def _check_overrides(root: Path, overrides: list[str]) -> None:
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copy(root / "params.yaml", copy)
        apply_overrides(copy, overrides)
