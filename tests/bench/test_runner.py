"""bench/runner.py: a stopped bench waits for its `siit` processes before their server goes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"

# ends 1 s after SIGTERM (a stage reporting its end to the Prefect server)
SLOW_TO_END = """
import signal, sys, time
def on_term(*_):
    time.sleep(1.0)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(600)
"""


def _runner():
    spec = importlib.util.spec_from_file_location("bench_runner", BENCH / "runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stopping_children_waits_for_them_to_end() -> None:
    runner = _runner()
    procs = [
        subprocess.Popen([sys.executable, "-c", SLOW_TO_END], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
            runner._children.add(proc)
        runner._stop_children()
        assert [proc.poll() for proc in procs] == [143, 143]  # ended, by their own handler
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    runner = _runner()
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        runner._children.add(proc)
        runner._stop_children(grace_s=0.5)
        assert proc.poll() == -9  # SIGKILL once the grace period was over
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_a_finished_run_is_reused_only_with_the_same_params_on_the_same_cpu(
    tmp_path: Path, monkeypatch
) -> None:
    """run_config(reuse=True) returns a finished run's reports without running its stages
    again, unless params.yaml or the CPU differ: one seed's result is exact on one machine,
    not across machines."""
    runner = _runner()
    root, calls = tmp_path / "project", tmp_path / "calls.txt"
    root.mkdir()
    (root / "params.yaml").write_text("train:\n  seed: 1\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    siit = bin_dir / "siit"  # a stand-in for the console script: records each stage it ran
    siit.write_text(f'#!/bin/sh\necho "$1" >> {calls}\n')
    siit.chmod(0o755)
    monkeypatch.setattr(runner, "ROOT", root)
    monkeypatch.setattr(runner, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(runner, "BIN", bin_dir)

    def ran() -> int:
        return len(calls.read_text().split()) if calls.exists() else 0

    first = runner.run_config("t-s1-static", {}, ["train_static"], {}, reuse=True)
    assert ran() == 1 and set(first["seconds"]) == {"train_static"}
    assert runner.run_config("t-s1-static", {}, ["train_static"], {}, reuse=True) == first
    assert ran() == 1  # reused
    runner.run_config("t-s1-static", {"train": {"seed": 2}}, ["train_static"], {}, reuse=True)
    assert ran() == 2  # other params: run again
    monkeypatch.setattr(runner, "cpu_identity", lambda: "another vendor / 1 / 2 / another CPU")
    runner.run_config("t-s1-static", {"train": {"seed": 2}}, ["train_static"], {}, reuse=True)
    assert ran() == 3  # another CPU: run again
    runner.run_config("t-s1-static", {"train": {"seed": 2}}, ["train_static"], {}, reuse=True)
    assert ran() == 3  # and now reused there
