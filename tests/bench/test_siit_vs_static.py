"""bench/siit_vs_static.py: variant parsing and the up-front check of every configuration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from components.config import ConfigError

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling `runner`
    try:
        spec = importlib.util.spec_from_file_location("siit_vs_static", BENCH / "siit_vs_static.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_a_variant_keeps_lists_whole(bench) -> None:
    name, sets = bench.parse_variant("late:siit.rounds=1,siit.refine_after=[2,4]")
    assert name == "late"
    assert sets == {"siit": {"rounds": 1, "refine_after": [2, 4]}}


def test_every_configuration_is_checked_before_training(bench) -> None:
    bench.check_configs({}, {"siit": {}}, {"e12": {"train": {"epochs": 12}}})  # all valid
    with pytest.raises(ConfigError) as err:
        bench.check_configs(
            {"train": {"threads": 1}},
            {"siit": {}, "bad": {"siit": {"bogus": 1}}},
            {"e20": {"train": {"epochs": 20}}},
        )
    message = str(err.value)
    assert "bad: siit.bogus" in message  # the variant and the key at fault
    assert "e20:" in message and "multiple of siit.rounds + 1" in message
    assert "siit:" not in message.replace("siit.", "")  # the valid ones are not named


def _report(
    best: float, last: float, test: float, refine: bool = False, cross: float | None = None
) -> dict:
    """A model report as the pipeline writes it: the best epoch's valid, test, and rounds whose
    last validated row is the budget's last epoch (a refinement row has no valid metrics)."""
    metrics = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
    rounds = [{"round": 0, **{f"valid_{m}": best for m in metrics}}]
    if refine:
        effect = {"effect_valid_ndcg@10_old": 0.5, "effect_valid_ndcg@10_new": 0.4}
        effect |= {"effect_seqrec_loss_old": 2.0, "effect_seqrec_loss_new": 2.1}
        rounds.append({"round": 0, "churn": 0.1, "collision_rate_before": 0.6, **effect})
    rounds.append({"round": 1, **{f"valid_{m}": last for m in metrics}})
    return {
        "valid": dict.fromkeys(metrics, best),
        "test": dict.fromkeys(metrics, test),
        "rounds": rounds,
        "best_round": 0,
        "best_epoch": 2,
        "valid_cross_fitted": None if cross is None else dict.fromkeys(metrics, cross),
    }


def test_the_paired_table_shows_the_last_epochs_validation_beside_the_best(bench, capsys) -> None:
    # static peaks early (best 0.20, last 0.10); the variant is still rising (best = last 0.15)
    results = {
        seed: {
            "static": {"static": _report(0.20, 0.10, 0.10)},
            "deep": {"static": _report(0.15, 0.15, 0.12)},
            "siit": {"siit": _report(0.18, 0.12, 0.11, refine=True)},
        }
        for seed in (1, 2)
    }
    bench.print_tables(results, {"siit": {}}, False, {"deep": {}})
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]): line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| deep |") or line.startswith("| siit |")
    }
    assert "| -25.0% | -0.0500 [" in rows[("deep", "valid")]  # 0.15 against the best 0.20
    assert "| +50.0% | +0.0500 [" in rows[("deep", "valid, last epoch")]  # against 0.10
    assert "| +20.0% | +0.0200 [" in rows[("deep", "test")]
    assert "| +20.0% | +0.0200 [" in rows[("siit", "valid, last epoch")]  # refinement row skipped


def test_the_immediate_effect_table_shows_text_coherence_where_the_run_measured_it(
    bench, capsys
) -> None:
    measured = _report(0.18, 0.12, 0.11, refine=True)
    measured["rounds"][1] |= {
        "text_coherence_before_l0": 0.2,
        "text_coherence_before_l1": 0.41,
        "text_coherence_l0": 0.19,
        "text_coherence_l1": None,  # no two items share levels 0-1 any more
    }
    results = {
        1: {"static": {"static": _report(0.2, 0.1, 0.1)}, "siit": {"siit": measured}},
        2: {  # siit.text_coherence off, or a run older than it
            "static": {"static": _report(0.2, 0.1, 0.1)},
            "siit": {"siit": _report(0.18, 0.12, 0.11, refine=True)},
        },
    }
    bench.print_tables(results, {"siit": {}}, False)
    effect = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| siit | ")
    ][-2:]
    assert effect[0].endswith("| 0.200 / 0.410 -> 0.190 / – |")
    assert effect[1].endswith("| 2.000 -> 2.100 | – |")


def test_the_cross_fitted_row_appears_when_every_run_has_it(bench, capsys) -> None:
    def results(cross: bool) -> dict:
        return {
            seed: {
                "static": {"static": _report(0.20, 0.10, 0.10, cross=0.15 if cross else None)},
                "siit": {"siit": _report(0.18, 0.12, 0.11, True, cross=0.18 if cross else None)},
            }
            for seed in (1, 2)
        }

    bench.print_tables(results(True), {"siit": {}}, False)
    out = capsys.readouterr().out
    rows = [r for r in out.splitlines() if r.startswith("| siit | valid, cross-fitted |")]
    mean, paired = rows  # mean ± sd over the seeds, then the paired change
    assert "| +20.0% | +0.0300 [" in paired  # 0.18 against 0.15
    assert mean.startswith("| siit | valid, cross-fitted | 0.1800 ± 0.0000 |")
    assert "| 1 | siit | valid, cross-fitted | 0.1800 |" in out  # and per seed
    bench.print_tables(results(False), {"siit": {}}, False)  # older runs: no such row
    assert "cross-fitted" not in capsys.readouterr().out


def test_user_test_gains_read_a_runs_recommendations(bench, tmp_path) -> None:
    import polars as pl

    (tmp_path / "reports/models").mkdir(parents=True)
    rows = [  # u1: target at rank 1; u2: at rank 3; u3: missed
        ("u1", 1, "a", "a"),
        ("u1", 2, "b", "a"),
        ("u2", 1, "c", "e"),
        ("u2", 2, "d", "e"),
        ("u2", 3, "e", "e"),
        ("u3", 1, "a", "z"),
    ]
    pl.DataFrame(
        rows, schema=["user_id", "rank", "item_id", "target_item_id"], orient="row"
    ).with_columns(pl.col("rank").cast(pl.Int32)).write_parquet(
        tmp_path / "reports/models/static_recommendations_test.parquet"
    )
    gains = bench.user_test_gains(tmp_path, "static")
    assert gains["u1"] == pytest.approx(1.0)  # hit at 1: recall and ndcg 1 at 5 and 10
    assert gains["u2"] == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)  # 1/log2(4) = 0.5
    assert gains["u3"] == 0.0
    assert bench.user_test_gains(tmp_path, "siit") == {}  # no such file


def test_the_pigeonhole_interval_holds_both_sources_of_noise(bench) -> None:
    import numpy as np

    assert bench.pigeonhole_interval(np.full((3, 50), 0.02)) == pytest.approx((0.02, 0.02, 0.02))
    rng = np.random.default_rng(0)
    users = rng.normal(0.0, 0.3, size=400)  # the same users' noise in every seed
    same_seeds = np.tile(users, (5, 1))
    mean, lo, hi = bench.pigeonhole_interval(same_seeds)
    se = users.std() / len(users) ** 0.5
    assert mean == pytest.approx(users.mean())
    assert 3.0 * se < hi - lo < 5.0 * se  # about +-1.96 standard errors of the users' mean
    seeds_too = same_seeds + rng.normal(0.0, 0.05, size=(5, 1))  # plus a per-seed shift
    _, lo2, hi2 = bench.pigeonhole_interval(seeds_too)
    assert hi2 - lo2 > hi - lo
    assert bench.pigeonhole_interval(seeds_too)[1:] == (lo2, hi2)  # a fixed seed: deterministic
