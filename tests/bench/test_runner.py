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
