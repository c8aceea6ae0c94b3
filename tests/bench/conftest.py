"""Bench scripts are scripts, not a package: tests load them by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench_script(name: str) -> ModuleType:
    """bench/<name>.py as a module (the caller puts bench/ on sys.path for its siblings)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench_script(monkeypatch):
    """Loads a bench script with bench/ on sys.path (the scripts import their siblings)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return load_bench_script
