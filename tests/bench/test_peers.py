"""bench/peers.py --seeds: SASRec over seeds, kept per seed, paired with bench runs."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.baselines.test_sasrec import ring_dataset
from tests.bench.test_compare_runs import _write
from tests.bench.test_siit_vs_static import _report

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project copy: params.yaml and a small processed dataset."""
    root = tmp_path / "project"
    ring_dataset(n_users=40).write(root / "data" / "processed")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    return root


@pytest.fixture
def peers(bench_script, tmp_path: Path, monkeypatch):
    module = bench_script("peers")
    monkeypatch.setattr(module, "CACHE", tmp_path / "cache")
    return module


def _run(peers, monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["peers.py", *args])
    peers.main()
    return capsys.readouterr().out


def _tables(out: str) -> str:
    """The tables, without the line above them (which names the thread and job counts)."""
    return out[out.index("test NDCG@10 per seed") :]


def _row(out: str, start: str) -> list[str]:
    """The cells of the first table row that starts with `start`."""
    line = next(r for r in out.splitlines() if r.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_sasrec_over_seeds_is_kept_per_seed_and_paired_with_bench_runs(
    peers, project, tmp_path, monkeypatch, capsys
) -> None:
    runs = tmp_path / "runs"
    for seed, test in ((1, 0.30), (2, 0.10)):
        _write(runs, f"t-s{seed}-static", "static", _report(0.2, 0.2, test))
    args = ["--root", str(project), "--seeds", "1", "2", "--max-epochs", "2", "--threads", "1"]
    args += ["--against", "t-static", "--runs", str(runs)]
    first = _run(peers, monkeypatch, capsys, *args, "--jobs", "2")  # two worker processes
    cached = sorted((tmp_path / "cache").glob("*.json"))
    assert [p.name.split("-")[1] for p in cached] == ["s1", "s2"]
    kept = {json.loads(p.read_text())["seed"]: json.loads(p.read_text()) for p in cached}
    sasrec = {seed: entry["row"] for seed, entry in kept.items()}
    assert sasrec[1]["test"] != sasrec[2]["test"]  # the seeds differ
    # a worker process's result is the one this process trains with the same setting
    processed, other = str(project / "data" / "processed"), str(tmp_path / "other")
    here = peers.seed_row(processed, kept[1]["sasrec"], 1, other)
    assert {k: v for k, v in here.items() if k != "seconds"} == {
        k: v for k, v in sasrec[1].items() if k != "seconds"
    }

    # the per-seed table: SASRec's cached figures and the run's, their mean
    ndcg = _row(first, "| sasrec | ")  # the first sasrec row is the test NDCG@10 one
    assert ndcg[1:3] == [f"{sasrec[s]['test']['ndcg@10']:.4f}" for s in (1, 2)]
    assert _row(first, "| t-static | ")[1:] == ["0.3000", "0.1000", "0.2000"]
    # paired: the mean of the per-seed ratios and the mean difference on test NDCG@10
    paired = _row(first, "| t-static | test | ndcg@10 |")
    theirs = [sasrec[s]["test"]["ndcg@10"] for s in (1, 2)]
    ratio = (0.30 / theirs[0] + 0.10 / theirs[1]) / 2
    assert paired[3] == f"{ratio:.1%}"
    assert paired[4].startswith(f"{(0.30 + 0.10 - sum(theirs)) / 2:+.4f} [")
    assert (
        paired[5] == f"{sum(ours > t for ours, t in zip((0.30, 0.10), theirs, strict=True))} of 2"
    )
    assert re.search(r"\| t-static \| valid \| average \|", first)

    # repeated: nothing trains, the same tables
    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(peers, "train_sasrec", no_training)
    assert _tables(_run(peers, monkeypatch, capsys, *args)) == _tables(first)
    # another setting is another entry
    with pytest.raises(AssertionError, match="trained again"):
        _run(peers, monkeypatch, capsys, *args, "--patience", "3")
    # and so is another CPU: one seed's result is exact on one machine, not across machines
    assert "/" in peers.cpu_identity()
    monkeypatch.setattr(peers, "cpu_identity", lambda: "another vendor / 1 / 2 / another CPU")
    with pytest.raises(AssertionError, match="trained again"):
        _run(peers, monkeypatch, capsys, *args)


def test_against_needs_seeds_and_finished_runs(
    peers, project, tmp_path, monkeypatch, capsys
) -> None:
    with pytest.raises(SystemExit):
        _run(peers, monkeypatch, capsys, "--root", str(project), "--against", "t-static")
    assert "--against pairs per seed" in capsys.readouterr().err
    args = [
        "--root",
        str(project),
        "--seeds",
        "1",
        "--against",
        "t-static",
        "--runs",
        str(tmp_path),
    ]
    with pytest.raises(SystemExit, match="no finished run"):
        _run(peers, monkeypatch, capsys, *args)
    # a finished run made on another CPU is not SASRec's pair here
    _write(tmp_path, "t-s1-static", "static", _report(0.2, 0.2, 0.1))
    (tmp_path / "t-s1-static" / ".machine").write_text("another vendor / 1 / 2 / another CPU")
    with pytest.raises(SystemExit, match="t-s1-static: made on another vendor .* not on this CPU"):
        _run(peers, monkeypatch, capsys, *args)
    assert not (tmp_path / "cache").exists()  # checked before any training
