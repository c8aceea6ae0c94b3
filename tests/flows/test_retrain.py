"""`siit.retrain` (train-refine-retrain): the co-trained rounds are a probe that makes the map,
then a fresh model trains on the final map. The fresh model is exactly a static model trained
from scratch on that map (same seed, initialisation and schedule), and a run interrupted
before or during the retraining resumes to the same result. The flows run in the test's
process against the session's Prefect server."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import flows_in
from tests.flows.conftest import copy_prepared
from tests.flows.test_pipeline_dvc import TINY_PARAMS, _merge
from tests.flows.test_resume import copy_inputs

PARAMS = _merge(
    TINY_PARAMS,
    {
        "train": {"epochs": 3, "threads": 1},
        "siit": {"rounds": 2, "refine_after": [1, 2], "signal": "context", "retrain": True},
    },
)


@pytest.fixture(scope="module")
def prepared(
    tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]
) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("retrain") / "project"
    return root, copy_prepared(tiny_prepared, root, {**os.environ, **prefect_env}, PARAMS)


def _train(root: Path, env: dict[str, str], mode: str = "siit") -> dict:
    from flows.train import train_flow

    with flows_in(root, env):
        train_flow(mode=mode, root=str(root))
    return json.loads((root / f"reports/models/{mode}.json").read_text())


def _comparable(report: dict) -> dict:
    rounds = [{k: v for k, v in r.items() if k != "seconds"} for r in report["rounds"]]
    return {k: report[k] for k in ("valid", "test", "best_round", "best_epoch")} | {
        "rounds": rounds
    }


@pytest.fixture(scope="module")
def straight(prepared: tuple[Path, dict[str, str]], tmp_path_factory) -> tuple[Path, dict]:
    root, env = prepared
    out = tmp_path_factory.mktemp("retrain-straight") / "project"
    env = copy_inputs(root, out, env)
    return out, _train(out, env)


def test_the_fresh_model_is_static_on_the_final_map(
    prepared: tuple[Path, dict[str, str]], straight: tuple[Path, dict], tmp_path: Path
) -> None:
    root, env = prepared
    out, report = straight
    rounds = pl.read_csv(out / "reports/rounds.csv")
    assert rounds.get_column("phase").to_list() == ["probe"] * 3 + ["retrain"] * 3
    assert rounds.get_column("epoch").to_list() == [1, 2, 3, 1, 2, 3]
    assert rounds.filter(pl.col("churn").is_not_null()).height == 2  # the probe refines twice
    maps = sorted(p.name for p in (out / "artifacts/token_maps").iterdir())
    assert maps == ["round_000.parquet", "round_001.parquet", "round_002.parquet"]
    assert report["retrain_map_round"] == 2
    assert report["best_round"] >= 3  # a round of the fresh model, never the probe's
    # the candidates of the choice: the fresh model's epochs on the final map only
    ranks = pl.read_parquet(out / "reports/models/siit_valid_ranks.parquet")
    candidates = ranks.select("candidate", "epoch", "map_round").unique(maintain_order=True)
    assert candidates.rows() == [(0, 1, 2), (1, 2, 2), (2, 3, 2)]
    kept = pl.read_parquet(out / "artifacts/models/siit/token_map.parquet")
    final = pl.read_parquet(out / "artifacts/token_maps/round_002.parquet")
    assert kept.select("item_id", "c0", "c1", "c2").equals(
        final.select("item_id", "c0", "c1", "c2")
    )

    # static from scratch on that map, same seed and budget: the same model to the last digit
    static = tmp_path / "static"
    static_env = copy_inputs(root, static, env)
    shutil.copy(
        out / "artifacts/token_maps/round_002.parquet",
        static / "artifacts/tokenize/token_map.parquet",
    )
    expected = _train(static, static_env, mode="static")
    assert report["valid"] == expected["valid"]
    assert report["test"] == expected["test"]
    assert report["best_epoch"] == expected["best_epoch"]
    fresh_rows = [r for r in report["rounds"] if r["phase"] == "retrain"]
    assert [r["valid_ndcg@10"] for r in fresh_rows] == [
        r["valid_ndcg@10"] for r in expected["rounds"]
    ]


def test_an_interrupted_retraining_resumes_to_the_same_result(
    prepared: tuple[Path, dict[str, str]],
    straight: tuple[Path, dict],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped after the probe's last round (the fresh model not yet made), resumed; stopped
    again after the fresh model's second round (its checkpoint resumed); then finished."""
    import flows.train as train_module

    root, env = prepared
    out = tmp_path / "stopped"
    env = copy_inputs(root, out, env)
    state_file = out / "artifacts/checkpoints/siit/state.json"
    real = train_module.round_task

    for stop in (2, 4):  # the probe's last round; the fresh model's second

        def stopping(mode, r, *args, stop=stop, **kwargs):
            result = real(mode, r, *args, **kwargs)
            if r == stop:
                raise RuntimeError(f"stopped after round {r}")
            return result

        monkeypatch.setattr(train_module, "round_task", stopping)
        with pytest.raises(RuntimeError, match=f"stopped after round {stop}"):
            _train(out, env)
        state = json.loads(state_file.read_text())
        assert state["next_round"] == stop + 1
        assert state["retrain_map"] == (-1 if stop < 3 else 2)
        assert not (out / "reports/models/siit.json").exists()
    monkeypatch.setattr(train_module, "round_task", real)
    report = _train(out, env)
    assert _comparable(report) == _comparable(straight[1])
    assert report["retrain_map_round"] == 2
    assert not state_file.exists()


def test_the_round_plots_show_the_probe_and_the_fresh_model(straight: tuple[Path, dict]) -> None:
    from components.paths import Paths
    from flows.report import _series, plots_task

    out, _ = straight
    rounds = pl.read_csv(out / "reports/rounds.csv")
    series = _series("siit", rounds.drop_nulls("valid_ndcg@10"))
    assert [label for label, _ in series] == ["siit (probe)", "siit (retrained)"]
    assert [rows.get_column("round").to_list() for _, rows in series] == [[0, 1, 2], [0, 1, 2]]
    # churn: only the probe refines, so one line
    assert [label for label, _ in _series("siit", rounds.drop_nulls("churn"))] == ["siit (probe)"]
    written = plots_task.fn(Paths(out))
    assert {p.name for p in written} >= {
        "valid_ndcg_at_10_per_round.png",
        "churn_per_round.png",
    }
