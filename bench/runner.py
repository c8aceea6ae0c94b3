"""Runs pipeline stages for one configuration in its own work folder (the real code path).

Each configuration gets `bench/.runs/<name>/` holding a params.yaml (the project's, with
overrides), a link to the project's `data/processed` and the embeddings cache, and its own
outputs and MLflow store. All `siit` processes of one bench share one local Prefect server,
with its own database in a temporary folder, so that several benches can run at once.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUNS = ROOT / "bench" / ".runs"
MACHINE = ".machine"  # in a run folder: the CPU its runs were made on


@cache
def cpu_identity() -> str:
    """The CPU's vendor, family, model and name (Linux's /proc/cpuinfo; else what `platform`
    knows): one seed's result is exact run to run on one machine but not across machines,
    whose math libraries take other instruction paths (NDCG@10 ~9% apart on two CPUs)."""
    fields = ("vendor_id", "cpu family", "model", "model name")
    found: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in fields and name.strip() not in found:
                found[name.strip()] = value.strip()
            if len(found) == len(fields) or not line.strip():
                break
    except OSError:
        pass
    if found:
        return " / ".join(found.get(f, "?") for f in fields)
    return f"{platform.machine()} / {platform.processor()}"


def made_on(work: Path | str) -> str | None:
    """The CPU a run folder's runs were made on (`cpu_identity` when `run_config` ran them);
    None for a folder from before it was recorded."""
    machine = Path(work) / MACHINE
    return machine.read_text() if machine.exists() else None


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def ensure_dataset() -> None:
    """data/processed of the project (MovieLens-100k by default), made once."""
    if not (ROOT / "data" / "processed").exists():
        for stage in ("prepare", "validate"):
            subprocess.run([str(BIN / "siit"), stage], cwd=ROOT, check=True)


_children: set[subprocess.Popen] = set()  # the `siit` processes running now


def _stop_children(grace_s: float = 60) -> None:
    """SIGTERM every running `siit` process and wait for them (SIGKILL after `grace_s`): the
    Prefect server must outlive them, or they retry reporting their end to it for minutes."""
    from flows.server import stop_processes

    stop_processes(list(_children), grace_s)


def _on_sigterm(signum, frame) -> None:
    _stop_children()  # first, or the worker threads would wait for them on the way out
    raise SystemExit(128 + signum)


@contextmanager
def prefect_server():
    """A local Prefect server for the bench's `siit` processes. Leaving the block (normally,
    on an error or on SIGTERM) also stops every `siit` process still running, so that a killed
    bench leaves no training behind that would write into a folder a rerun uses."""
    sys.path.insert(0, str(ROOT))
    from flows.server import local_prefect_server

    RUNS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RUNS, prefix=".prefect-") as folder:
        home = Path(folder)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            with local_prefect_server(home) as url:
                yield {"PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
        finally:
            _stop_children()
            signal.signal(signal.SIGTERM, previous)


def run_config(
    name: str, overrides: dict, stages: list[str], env: dict[str, str], reuse: bool = False
) -> dict:
    """Run `stages` for one configuration; returns the reports it produced and the wall times.

    reuse: when the folder already holds a finished run of these stages with the very same
    params.yaml, made on this kind of CPU (`cpu_identity`), return its reports instead of
    training again (e.g. the static model shared by several SIIT settings of one seed)."""
    work = RUNS / name
    (work / "data").mkdir(parents=True, exist_ok=True)
    for sub in ("processed", "embeddings"):
        link = work / "data" / sub
        (ROOT / "data" / sub).mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(ROOT / "data" / sub)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    text = yaml.safe_dump(params, sort_keys=False)
    params_file = work / "params.yaml"
    done = work / f".done-{'-'.join(stages)}"
    if (
        reuse
        and done.exists()
        and params_file.exists()
        and params_file.read_text() == text
        and made_on(work) == cpu_identity()
    ):
        return _reports(work, json.loads(done.read_text()))
    done.unlink(missing_ok=True)
    params_file.write_text(text)
    (work / MACHINE).write_text(cpu_identity())
    full_env = {**os.environ, **env, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    seconds = {}
    for stage in stages:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "siit"), stage],
            cwd=work,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _children.add(proc)
        try:
            _, stderr = proc.communicate()
        finally:
            _children.discard(proc)
        if proc.returncode:
            raise RuntimeError(f"{name}: siit {stage} failed:\n{stderr[-3000:]}")
        seconds[stage] = time.perf_counter() - start
    done.write_text(json.dumps(seconds))
    return _reports(work, seconds)


def _reports(work: Path, seconds: dict) -> dict:
    reports = {"seconds": seconds, "work": str(work)}  # the run's folder: per-user outputs
    for key, path in {
        "tokenize": work / "reports/tokenize.json",
        "static": work / "reports/models/static.json",
        "siit": work / "reports/models/siit.json",
    }.items():
        if path.exists():
            reports[key] = json.loads(path.read_text())
    return reports
