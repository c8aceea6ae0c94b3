"""A local Prefect server shared by many flow runs.

Without PREFECT_API_URL every `siit <stage>` process starts (and stops) a temporary
server, about 10 s each. `siit repro` and the tests start one server for all of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_prefect_server(home: Path, timeout_s: float = 120) -> Iterator[str]:
    """Start `prefect server start` on 127.0.0.1 and yield its API URL until the block ends."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    prefect = Path(sys.executable).parent / "prefect"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # The server has its own session (Ctrl-C reaches it only through the cleanup below);
        # a watchdog stops it when this process dies without cleaning up (SIGKILL, OOM).
        watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(proc.pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/api"
        try:
            wait_healthy(f"{url}/health", proc, log_path, timeout_s, "Prefect server")
            yield url
        finally:
            stop_processes([proc], 20)
            watchdog.kill()
            watchdog.wait()


# Run as `python -c _WATCHDOG <server pid>` by the process that started the server (its
# parent): once that parent is gone (this process is re-parented), stop the server's group.
_WATCHDOG = """
import os, signal, sys, time
server, parent = int(sys.argv[1]), os.getppid()
def alive():
    try:
        os.killpg(server, 0)
        return True
    except OSError:
        return False
while alive() and os.getppid() == parent:
    time.sleep(0.5)
if alive():
    os.killpg(server, signal.SIGTERM)
    for _ in range(40):
        time.sleep(0.25)
        if not alive():
            break
    else:
        os.killpg(server, signal.SIGKILL)
"""


def wait_healthy(
    health_url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float, name: str
) -> None:
    """Poll `health_url` until it answers 200; if `proc` (the server `name`, logging to
    `log_path`) exits first or `timeout_s` passes, kill it and raise with the log's tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(health_url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(
                f"{name} did not start; last log lines:\n{log_path.read_text()[-3000:]}"
            )
        time.sleep(0.5)


def run_with_server(command: list[str], home: Path) -> int:
    """Run `command` with PREFECT_API_URL pointing at a fresh local server (unless one is set).

    This environment's bin directory goes first on PATH, so the stages' `siit` commands run
    with the same installation even when the virtual environment is not activated.

    SIGTERM and SIGINT stop the command's whole process group (dvc and the stage it runs)
    and wait for it before the server stops: a stage whose server is gone cannot report its
    end to it, and would retry for minutes before exiting.
    """
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(command, env=env)
    # a SIGTERM while the server starts unwinds through its cleanup
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with local_prefect_server(home) as url:
        child = subprocess.Popen(
            command,
            env={**env, "PREFECT_API_URL": url, "PREFECT_HOME": str(home)},
            **_OWN_GROUP,  # a signal reaches dvc and the stage it runs together
        )
        with _forward_signals(child):
            code = child.wait()
            _wait_for_group(child.pid)  # a stage a signalled dvc left behind ends first
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def stop_processes(procs: Iterable[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM the processes still running and wait for them, SIGKILL after `grace_s`."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


@contextmanager
def _forward_signals(child: subprocess.Popen, grace_s: float = 60) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT (Ctrl-C reaches only the foreground group,
    which is this process's) go to `child`'s process group; leaving the block by an exception
    stops the group too: SIGTERM, then SIGKILL after `grace_s`."""
    signals = (signal.SIGTERM, signal.SIGINT)

    def forward(signum, frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in signals}
    try:
        yield
    except BaseException:
        _stop_group(child, grace_s)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_group(child: subprocess.Popen, grace_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=grace_s)
    _wait_for_group(child.pid, grace_s)


def _wait_for_group(pgid: int, grace_s: float = 60) -> None:
    """Wait until no process of group `pgid` is left; SIGKILL what is still there after
    `grace_s`."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
