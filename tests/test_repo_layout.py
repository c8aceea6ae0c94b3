"""The repository's own wiring: what git versions of the pipeline's outputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _outputs(kind: str) -> list[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in stages.values()
        for entry in stage.get(kind, [])
    ]


def _ignored(paths: list[str]) -> set[str]:
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: none ignored
    return set(proc.stdout.split())


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout"
)
def test_metrics_and_plot_data_are_versioned_and_bulky_outputs_are_not() -> None:
    """`dvc exp show` / `dvc metrics diff` read metrics from each commit: git must keep them."""
    small = _outputs("metrics") + _outputs("plots")
    assert small and not _ignored(small)
    bulky = ["reports/recommendations_test.parquet", "reports/code_usage.png", "artifacts/models"]
    assert _ignored(bulky) == set(bulky)


def test_the_long_modules_run_first_and_exist() -> None:
    """`tests/conftest.py` orders the long modules first for the xdist workers: a renamed or
    removed one would silently go back to the end."""
    from tests.conftest import LONG_MODULES

    assert len(set(LONG_MODULES)) == len(LONG_MODULES)
    assert [m for m in LONG_MODULES if not (REPO / m).is_file()] == []
    # xdist's loadscope re-sorts modules by their number of tests unless told not to, which
    # puts the one-test modules (a whole pipeline, the browser) last: the order above would
    # then be ignored
    makefile = (REPO / "Makefile").read_text().splitlines()
    command = next(line for line in makefile if "-m pytest" in line and "-n " in line)
    assert "--dist loadscope" in command and "--no-loadscope-reorder" in command, command
