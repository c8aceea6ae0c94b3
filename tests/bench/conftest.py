"""Bench scripts are scripts, not a package: tests load them by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench_script(name: str, modules: dict | None = None) -> ModuleType:
    """bench/<name>.py as a module (the caller puts bench/ on sys.path for its siblings),
    registered in `modules` (default sys.modules) while it runs: dataclasses look their module
    up there."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    (sys.modules if modules is None else modules)[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench_script(monkeypatch):
    """Loads a bench script with bench/ on sys.path (the scripts import their siblings); the
    module leaves sys.modules again after the test."""
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name: str) -> ModuleType:
        monkeypatch.setitem(sys.modules, name, None)  # restored (removed) after the test
        return load_bench_script(name)

    return load
