"""bench/pipeline.py: what it times exists, and a target no stage calls is reported."""

from __future__ import annotations

import importlib
import inspect
import sys
import textwrap

import pytest

FAKE = textwrap.dedent(
    """
    def used():
        return 1

    def unused():
        return 2

    class Store:
        def put(self):
            return 3

        def get(self):
            return 4
    """
)


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    """A module to time, importable after the bench is loaded (the bench sets sys.path[0])."""
    (tmp_path / "siit_bench_fake.py").write_text(FAKE)
    monkeypatch.delitem(sys.modules, "siit_bench_fake", raising=False)
    yield lambda: monkeypatch.syspath_prepend(str(tmp_path)) or "siit_bench_fake"
    sys.modules.pop("siit_bench_fake", None)


def test_calls_are_counted_per_target_and_missing_targets_listed(bench_script, fake_module):
    bench = bench_script("pipeline")
    fake_module = fake_module()
    profile = bench.Profile()
    targets = {
        f"{fake_module}:used": "model",
        f"{fake_module}:unused": "io",
        f"{fake_module}:Store.*": "io",
        f"{fake_module}:renamed": "model",
    }
    hook = bench.InstrumentOnImport(profile, targets, on_flow_start=lambda: None)
    sys.meta_path.insert(0, hook)
    try:
        module = importlib.import_module(fake_module)
    finally:
        sys.meta_path.remove(hook)
    assert module.used() == 1 and module.used() == 1
    store = module.Store()
    assert store.put() == 3 and store.get() == 4
    assert profile.calls == {
        f"{fake_module}:used": 2,
        f"{fake_module}:unused": 0,
        f"{fake_module}:Store.*": 2,
    }
    assert hook.absent == [f"{fake_module}:renamed"]
    assert profile.seconds["model"] > 0 and set(profile.seconds) == {"model", "io"}


def test_a_target_is_never_called_only_if_no_process_called_it(bench_script):
    bench = bench_script("pipeline")
    stages = [{"a:f": 0, "a:g": 1}, {"a:f": 0, "b:h": 0}, {"b:h": 3}]
    assert bench.never_called(stages) == ["a:f"]
    assert bench.never_called([]) == []


def test_every_timed_target_exists_in_the_code(bench_script):
    """A renamed or removed function would leave its time to 'orchestration' silently."""
    bench = bench_script("pipeline")
    for target in bench.TARGETS:
        module_name, _, path = target.partition(":")
        owner = importlib.import_module(module_name)
        *classes, name = path.split(".")
        for cls in classes:
            owner = getattr(owner, cls)
            assert inspect.isclass(owner), target
        if name == "*":
            assert any(bench._is_method(n, v) for n, v in vars(owner).items()), target
        else:
            assert hasattr(owner, name), target
