"""bench/compare_runs.py: two finished groups of bench runs, paired per seed, from their folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.bench.test_siit_vs_static import _report


@pytest.fixture
def compare(tmp_path: Path, monkeypatch, bench_script):
    module = bench_script("compare_runs")
    monkeypatch.setattr(module, "RUNS", tmp_path)
    return module


def _write(runs: Path, folder: str, kind: str, report: dict) -> None:
    out = runs / folder / "reports" / "models"
    out.mkdir(parents=True)
    (out / f"{kind}.json").write_text(json.dumps(report))


def test_a_group_is_compared_with_the_baseline_across_tags(compare, tmp_path, monkeypatch, capsys):
    for seed in (1, 2):  # baseline: SIIT of tag a; compared: SIIT and static of tag b
        _write(tmp_path, f"a-s{seed}-siit", "siit", _report(0.20, 0.20, 0.10, refine=True))
        _write(tmp_path, f"b-s{seed}-siit", "siit", _report(0.25, 0.25, 0.12, refine=True))
        _write(tmp_path, f"b-s{seed}-static", "static", _report(0.10, 0.10, 0.05))
    argv = ["compare_runs.py", "a-siit", "b-siit", "b-static", "--seeds", "1", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    compare.main()
    out = capsys.readouterr().out
    assert "Baseline (`static` below): a-siit." in out
    rows = [r for r in out.splitlines() if r.startswith("| b-") and "%" in r]  # the paired ones
    (valid,) = [r for r in rows if r.startswith("| b-siit | valid |")]
    assert "| +25.0% | +0.0500 [" in valid  # 0.25 against 0.20, read from siit.json
    (test,) = [r for r in rows if r.startswith("| b-static | test |")]
    assert "| -50.0% | -0.0500 [" in test  # static.json of the other group


def test_missing_or_malformed_groups_say_which(compare, tmp_path, monkeypatch) -> None:
    _write(tmp_path, "a-s1-siit", "siit", _report(0.2, 0.2, 0.1))
    with pytest.raises(SystemExit, match="a-s2-siit: no finished run"):
        compare.load_group("a-siit", [1, 2])
    with pytest.raises(SystemExit, match="<tag>-<model>"):
        compare.load_group("siit", [1])
    assert compare.load_group("a-siit", [1])[0] == "siit"


def test_runs_of_one_seed_from_two_cpus_are_not_paired(compare, tmp_path, monkeypatch) -> None:
    for seed in (1, 2):
        _write(tmp_path, f"a-s{seed}-static", "static", _report(0.2, 0.2, 0.1))
        _write(tmp_path, f"b-s{seed}-static", "static", _report(0.3, 0.3, 0.1))
        (tmp_path / f"a-s{seed}-static" / ".machine").write_text("vendor / 6 / 167 / cpu A")
        (tmp_path / f"b-s{seed}-static" / ".machine").write_text("vendor / 6 / 167 / cpu A")
    argv = ["compare_runs.py", "a-static", "b-static", "--seeds", "1", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    compare.main()  # one machine: paired
    (tmp_path / "b-s2-static" / ".machine").write_text("vendor / 25 / 1 / cpu B")
    with pytest.raises(
        SystemExit, match=r"seed 2: .*a-s2-static on .*cpu A; b-s2-static on .*cpu B"
    ):
        compare.main()
