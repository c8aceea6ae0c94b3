"""Issue 13, point 3 (part): the local Prefect server started for `siit repro` (and the
tests) does not outlive its parent, even when the parent is killed with SIGKILL."""

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
