"""`siit train_siit` with `train.start: champion` on a grown catalogue: the champion's items keep
their identifiers, the new ones get identifiers from the champion's beam search, the run
trains the warm budget and says how it started (report, MLflow tags, model folder)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from tests.flows.test_pipeline_dvc import REPO, TINY_PARAMS, _merge


def _stage(root: Path, params: dict, monkeypatch: pytest.MonkeyPatch, flows: list) -> None:
    """The stage flows in this process (no `siit` subprocess): the real code path, faster."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    base = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    params = _merge(_merge(base, {"train": {"threads": 1}}), params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.chdir(root)
    with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        for flow in flows:
            flow(root=str(root))


def test_champion_start_keeps_identifiers_and_names_new_items(
    tmp_path: Path, prefect_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.model.recommender import GenerativeRecommender
    from components.tokenizers.token_map import TokenMap
    from flows.data import prepare_flow, validate_flow
    from flows.tokenize import tokenize_flow
    from flows.train import train_flow

    monkeypatch.setenv("PREFECT_API_URL", prefect_env["PREFECT_API_URL"])
    # model.item_rows_init: text starts a model trained from scratch, never a champion start
    started: list[np.ndarray] = []
    real_init = GenerativeRecommender.init_item_rows

    def init_item_rows(self: GenerativeRecommender, features: np.ndarray) -> None:
        started.append(np.asarray(features))
        real_init(self, features)

    monkeypatch.setattr(GenerativeRecommender, "init_item_rows", init_item_rows)
    # and model.code_rows_init: text its identifier rows, from the initial map's codes
    coded: list[tuple[np.ndarray, np.ndarray]] = []
    real_codes = GenerativeRecommender.init_code_rows

    def init_code_rows(self: GenerativeRecommender, features: np.ndarray, codes) -> None:
        coded.append((np.asarray(features), np.asarray(codes)))
        real_codes(self, features, codes)

    monkeypatch.setattr(GenerativeRecommender, "init_code_rows", init_code_rows)
    text_rows = {"model": {"item_rows_init": "text", "code_rows_init": "text"}}
    stages = [prepare_flow, validate_flow, tokenize_flow, train_flow]
    first = tmp_path / "first"
    first.mkdir()
    _stage(first, {"train": {"epochs": 1}, "siit": {"rounds": 0}, **text_rows}, monkeypatch, stages)
    # the 40 items' text embeddings (L2-normalised sentence vectors), in the map's order
    assert len(started) == 1 and started[0].shape[0] == 40
    np.testing.assert_allclose(np.linalg.norm(started[0], axis=1), 1.0, rtol=1e-5)
    assert len(coded) == 1
    np.testing.assert_array_equal(coded[0][0], started[0])
    initial = TokenMap.load(first / "artifacts/tokenize/token_map.parquet")
    np.testing.assert_array_equal(coded[0][1], initial.codes)
    champion = first / "artifacts/models/siit"
    assert (champion / "item_encoder/item_encoder.json").exists()
    assert json.loads((champion / "warm_start.json").read_text())["start"] == {"start": "scratch"}

    second = tmp_path / "second"
    second.mkdir()
    grown = {
        "data": {"synthetic": {"n_items": 46}},  # 6 items the champion never saw
        "tokenize": {"new_items": "model"},
        "train": {"start": "champion", "champion": str(champion), "warm": {"epochs": 1}},
        "siit": {"retrain": True},  # a champion start keeps its warm model: no retraining
    }
    _stage(second, {**grown, **text_rows}, monkeypatch, [prepare_flow, validate_flow, train_flow])
    assert len(started) == 1 and len(coded) == 1  # the champion's rows are kept
    report = json.loads((second / "reports/models/siit.json").read_text())
    start = report["start"]
    assert start["start"] == "champion" and start["champion"] == str(champion)
    stats = start["new_item_stats"]
    assert stats["new_count"] == 6 and stats["new_items"] == "model"
    assert stats["new_rows_from"] == "text"  # their rows predicted from their text
    assert 0.0 <= stats["new_collision_rate_before"] <= 1.0
    assert [r["epoch"] for r in report["rounds"]] == [1]  # the warm budget, no refinement
    assert report["retrain_map_round"] == -1
    assert "phase" not in pl.read_csv(second / "reports/rounds.csv").columns

    old = pl.read_parquet(champion / "token_map.parquet").drop("item_idx")
    new = pl.read_parquet(second / "artifacts/models/siit/token_map.parquet").drop("item_idx")
    kept = old.join(new, on="item_id", suffix="_new")
    assert kept.height == 40
    for level in ("c0", "c1", "c2"):
        assert kept.get_column(level).to_list() == kept.get_column(f"{level}_new").to_list()
    assert new.select("c0", "c1", "c2").unique().height == 46
    # the next champion start can continue from this one
    assert (second / "artifacts/models/siit/item_encoder/item_encoder.json").exists()

    with sqlite3.connect(second / "mlflow.db") as db:
        tags = dict(
            db.execute(
                "select t.key, t.value from tags t join runs r on r.run_uuid = t.run_uuid "
                "where r.name = 'siit' and t.key like '%start%'"
            ).fetchall()
        )
    assert tags["train.start"] == "champion"
    assert tags["warm_start.champion"] == str(champion)


def test_an_incompatible_champion_falls_back_to_scratch_and_says_why(tmp_path: Path) -> None:
    from components.config import Params
    from components.paths import Paths
    from flows.train import resolve_start_task, start_tags
    from tests.siit.test_warm_start import _params, make_champion

    params = _params()
    champion = make_champion(tmp_path / "champion", params)

    class Catalogue:
        def item_ids(self) -> list[str]:
            return [str(i) for i in range(20)]

    def resolve(p: Params) -> dict:
        return resolve_start_task.fn(p, Paths(tmp_path), Catalogue())

    warm = params.model_copy(
        update={
            "train": params.train.model_copy(
                update={"start": "champion", "champion": str(champion)}
            )
        }
    )
    assert resolve(warm)["start"] == "champion"
    other = warm.model_copy(update={"model": warm.model.model_copy(update={"num_layers": 2})})
    start = resolve(other)
    assert start["start"] == "scratch" and "model.num_layers" in start["fallback"]
    tags = start_tags(start)
    assert tags["train.start"] == "scratch"
    assert "model.num_layers" in tags["warm_start.fallback"]
    assert resolve(params) == {"start": "scratch"}
    shutil.rmtree(champion)
    with pytest.raises(FileNotFoundError, match="train.champion"):
        resolve(warm)


def test_where_and_how_training_runs_is_not_a_dvc_param_of_the_training_stage() -> None:
    """Switching train.start alone (a scheduled run once a champion exists) or
    train.concurrent (same results) re-runs nothing; every other training parameter still
    does."""
    from components.config import TrainConfig

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    listed = {p.removeprefix("train.") for p in stage["params"] if p.startswith("train.")}
    assert listed == set(TrainConfig.model_fields) - {"start", "champion", "concurrent"}
    assert "train" not in stage["params"]


def test_scheduled_runs_start_from_the_champion_once_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components import tracking
    from components.config import TrackingConfig
    from components.serving import SERVING_CONFIG, ServingConfig
    from flows.deploy import start_override
    from tests.siit.test_warm_start import _params, make_champion

    cfg = TrackingConfig(experiment="t-deploy")  # the default relative sqlite:///mlflow.db
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": cfg.model_dump()}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert start_override(tmp_path, ["train.epochs=2"]) == ["train.epochs=2", "train.start=scratch"]

    bundle = make_champion(tmp_path / "bundle", _params())
    ServingConfig(default_k=5, beam_size=10, max_history=8).write(bundle / SERVING_CONFIG)
    monkeypatch.chdir(tmp_path)
    _, _, version = tracking.log_recommender(
        cfg, bundle, run_id=None, registered_model=cfg.registered_model
    )
    tracking.gate_champion(cfg, version, score=0.1, fingerprint="d")
    monkeypatch.chdir(REPO)  # the project's own URI is resolved in its root, wherever we are
    assert start_override(tmp_path, []) == ["train.start=champion"]
    assert start_override(tmp_path, [], "scratch") == ["train.start=scratch"]
    assert start_override(tmp_path, ["train.start=scratch"]) == ["train.start=scratch"]
    with pytest.raises(ValueError, match="start must be one of"):
        start_override(tmp_path, [], "warm")
