"""Issue 13, point 3 (part): the local Prefect server started for `siit repro` (and the
tests) does not outlive its parent, even when the parent is killed with SIGKILL; a terminated
`siit repro` stops its stages before their server; a stage's exit cannot hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).parents[2]

PARENT = """
import sys, time
from pathlib import Path
from flows.server import local_prefect_server
with local_prefect_server(Path(sys.argv[1])) as url:
    print(url, flush=True)
    time.sleep(600)
"""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_the_local_prefect_server_dies_with_its_parent(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "prefect-home")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = parent.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        assert _healthy(url)
        parent.send_signal(signal.SIGKILL)  # no cleanup can run
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _healthy(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _healthy(url), "the Prefect server outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


# `siit repro`'s process: dvc (the child) runs a stage (the grandchild), both under the server
# (a stand-in that answers /health: the order of the shutdown is what is tested, not Prefect)
REPRO = """
import contextlib, http.server, sys, threading
from pathlib import Path
from flows import server

@contextlib.contextmanager
def health_only_server(home):  # the server's stand-in: /health until the block ends
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
        def log_message(self, *args):
            pass
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/api"
    finally:
        httpd.shutdown()
        httpd.server_close()

server.local_prefect_server = health_only_server
sys.exit(server.run_with_server([sys.executable, "-c", *sys.argv[2:]], Path(sys.argv[1])))
"""
# dvc's stand-in: starts the stage, says it is ready, dies at once on SIGTERM
DVC = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(600)
"""
# the stage's stand-in: on SIGTERM it takes a moment, then reports to the Prefect API
STAGE = """
import os, pathlib, signal, sys, time, urllib.request
out = pathlib.Path(sys.argv[1])
def on_term(*_):
    time.sleep(1.0)  # a crash report in the making
    try:
        with urllib.request.urlopen(os.environ["PREFECT_API_URL"] + "/health", timeout=5) as r:
            out.write_text(f"server up ({r.status})")
    except OSError as exc:
        out.write_text(f"server down: {exc}")
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
(out.parent / "ready").touch()
time.sleep(600)
"""


def test_a_terminated_repro_stops_its_stages_before_their_server(tmp_path: Path) -> None:
    """SIGTERM to `siit repro` reaches dvc and the stage it runs, and the Prefect server stays
    up until the stage has ended: a stage whose server is gone retries reporting its end to it
    for minutes (seen as stages that ignored SIGTERM)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    report = tmp_path / "report.txt"
    parent = subprocess.Popen(  # the stand-ins get the next script and the report path
        [sys.executable, "-c", REPRO, str(tmp_path / "home"), DVC, STAGE, str(report)],
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists():
            assert parent.poll() is None and time.monotonic() < deadline, "the stage never started"
            time.sleep(0.2)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        assert report.read_text().startswith("server up"), report.read_text()
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_cli_exit_cannot_hang_on_threads_left_behind() -> None:
    """`siit`'s exit is bounded: Prefect's log delivery to a server that is gone (a thread the
    interpreter waits for at exit) would otherwise hold the process for minutes."""
    code = (
        "import threading, time; from flows.cli import exit_within; "
        "threading.Thread(target=time.sleep, args=(600,)).start(); exit_within(3, 1.0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3
    assert "leaving without them" in proc.stderr
