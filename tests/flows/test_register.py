"""Stage `register`: pyfunc models logged into their training runs, SIIT's registered, and the
`champion` alias gated on validation NDCG@10 on the same data (real MLflow, real Prefect)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from components import tracking
from components.config import TrackingConfig
from tests.serving.conftest import make_bundle

N_ITEMS, N_USERS = 30, 24


def write_dataset(root: Path, n_users: int = N_USERS, seed: int = 0) -> None:
    from components.data import Dataset

    rng = np.random.default_rng(seed)
    items = pl.DataFrame(
        {
            "item_idx": np.arange(N_ITEMS, dtype=np.int64),
            "item_id": [str(i + 1) for i in range(N_ITEMS)],
            "title": [f"title {i}" for i in range(N_ITEMS)],
            "text": [f"item {i} about topic {i % 5} words" for i in range(N_ITEMS)],
        }
    )
    sequences = [
        rng.choice(N_ITEMS, size=8, replace=False).astype(np.int64) for _ in range(n_users)
    ]
    Dataset(items, [f"u{i}" for i in range(n_users)], sequences, max_history=8).write(
        root / "data/processed"
    )


def write_report(root: Path, mode: str, ndcg10: float) -> None:
    valid = {"recall@5": 0.1, "recall@10": 0.2, "ndcg@5": ndcg10 / 2, "ndcg@10": ndcg10}
    path = root / "reports/models" / f"{mode}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"valid": valid, "test": valid, "best_round": 0}))


def fake_training_run(cfg: TrackingConfig, mode: str, ndcg10: float) -> str:
    with tracking.start_run(cfg, mode, tags={"stage": f"train_{mode}", "model": mode}) as run:
        tracking.log_metrics({"ndcg@10": ndcg10}, prefix="best_valid/")
    return run.info.run_id


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "project"
    for mode, seed in (("siit", 1), ("static", 2)):
        make_bundle(root / "artifacts/models" / mode, seed=seed)
        write_report(root, mode, 0.30 if mode == "siit" else 0.25)
    write_dataset(root)
    cfg = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="t-register")
    params = {"tracking": cfg.model_dump(), "data": {"max_history": 8}}
    params["evaluate"] = {"beam_size": 10, "top_k": 5, "batch_size": 16}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.uri)
    monkeypatch.chdir(root)
    return root, cfg


def _run_flow(root: Path, prefect_env: dict[str, str]) -> dict:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.register import register_flow

    with temporary_settings({PREFECT_API_URL: prefect_env["PREFECT_API_URL"]}):
        return register_flow(root=str(root))


def test_register_stage_logs_registers_and_gates(project, prefect_env: dict[str, str]) -> None:
    import mlflow

    root, cfg = project
    runs = {mode: fake_training_run(cfg, mode, v) for mode, v in (("siit", 0.30), ("static", 0.25))}
    record = _run_flow(root, prefect_env)

    assert record == json.loads((root / "artifacts/registered_model.json").read_text())
    assert record["version"] == "1" and record["champion"] is True
    assert record["reason"] == "no champion yet"
    # each model went into the training run that made it (the runs table's Model column)
    assert record["logged"]["siit"]["run_id"] == runs["siit"]
    assert record["logged"]["static"]["run_id"] == runs["static"]
    assert record["logged"]["static"]["version"] is None  # logged, not registered
    client = mlflow.MlflowClient()
    models = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{runs['siit']}'", output_format="list"
    )
    assert [m.name for m in models] == ["recommender"]
    champion = client.get_model_version_by_alias(cfg.registered_model, "champion")
    assert str(champion.version) == "1"
    assert champion.tags["dataset_fingerprint"] == tracking.dvc_md5(root / "data/processed")
    assert champion.tags["champion.decision"] == "promoted"
    assert float(champion.tags["valid_ndcg_at_10"]) == pytest.approx(0.30)

    # the registered model answers like the served one will
    model = mlflow.pyfunc.load_model(f"models:/{cfg.registered_model}@champion")
    import pandas as pd

    out = model.predict(pd.DataFrame({"history": [["1", "2"], []]}), params={"k": 3})
    assert [len(x) for x in out["item_ids"]] == [3, 3]
    assert "1" not in out["item_ids"][0] and "2" not in out["item_ids"][0]


def test_champion_moves_only_for_a_better_model_on_the_same_data(project) -> None:
    import mlflow

    root, cfg = project
    run_id, uri, first = tracking.log_recommender(
        cfg, root / "artifacts/models/siit", run_id=None, registered_model=cfg.registered_model
    )
    fingerprint = "data-v1"
    decision = tracking.gate_champion(cfg, first, score=0.30, fingerprint=fingerprint)
    assert decision.promoted

    def new_version() -> str:
        return str(mlflow.register_model(uri, cfg.registered_model).version)

    worse = new_version()
    decision = tracking.gate_champion(cfg, worse, score=0.20, fingerprint=fingerprint)
    assert not decision.promoted
    assert tracking.champion_version(cfg) == first
    tags = mlflow.MlflowClient().get_model_version(cfg.registered_model, worse).tags
    assert tags["champion.decision"] == "rejected"
    assert float(tags["champion.challenger_valid_ndcg_at_10"]) == pytest.approx(0.20)
    assert float(tags["champion.incumbent_valid_ndcg_at_10"]) == pytest.approx(0.30)
    assert tags["champion.incumbent_version"] == first

    equal = new_version()
    assert not tracking.gate_champion(cfg, equal, score=0.30, fingerprint=fingerprint).promoted

    better = new_version()
    decision = tracking.gate_champion(cfg, better, score=0.40, fingerprint=fingerprint)
    assert decision.promoted and decision.champion == pytest.approx(0.30)
    assert tracking.champion_version(cfg) == better
    tags = mlflow.MlflowClient().get_model_version(cfg.registered_model, better).tags
    assert tags["champion.decision"] == "promoted"
    assert float(tags["champion.challenger_valid_ndcg_at_10"]) == pytest.approx(0.40)

    # other data: recorded figures are not comparable; both versions are scored again on it
    scored: list[str] = []

    def rescore(model_uri: str) -> float:
        scored.append(model_uri)
        return 0.5 if model_uri.endswith(f"/{better}") else 0.6

    on_new_data = new_version()
    decision = tracking.gate_champion(
        cfg, on_new_data, score=0.10, fingerprint="data-v2", rescore=rescore
    )
    assert scored == [
        f"models:/{cfg.registered_model}/{better}",
        f"models:/{cfg.registered_model}/{on_new_data}",
    ]
    assert decision.promoted and (decision.champion, decision.challenger) == (0.5, 0.6)
    assert "re-scored" in decision.tags["champion.compared_on"]
    # without a way to re-score, a model trained on other data never replaces the champion
    other = new_version()
    assert not tracking.gate_champion(cfg, other, score=0.99, fingerprint="data-v3").promoted
    assert tracking.champion_version(cfg) == on_new_data


def test_siit_compare_shows_two_runs_side_by_side(
    project, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows import cli

    root, cfg = project
    ids = []
    for lr, ndcg in ((0.001, 0.2), (0.003, 0.25)):
        with tracking.start_run(cfg, f"static-lr{lr}", tags={"stage": "train_static"}) as run:
            tracking.log_params({"train": {"lr": lr, "epochs": 6}})
            tracking.log_metrics({"ndcg@10": ndcg}, prefix="best_valid/")
        ids.append(run.info.run_id)
    assert cli.main(["compare", ids[0], "static-lr0.003"]) == 0
    out = capsys.readouterr().out
    assert "train.lr" in out and "0.001" in out and "0.003" in out and "differs" in out
    assert "train.epochs" not in out  # equal params only with --all
    assert "best_valid/ndcg_at_10" in out and "+0.05" in out
    assert cli.main(["compare", ids[0], ids[1], "--all"]) == 0
    assert "train.epochs" in capsys.readouterr().out
    assert cli.main(["compare", ids[0], "no-such-run"]) == 1


def _leaves(section: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in section.items():
        path = f"{prefix}{key}"
        out += _leaves(value, f"{path}.") if isinstance(value, dict) else [path]
    return out


def _perturbed(value) -> list:
    """Other values of a number or flag, up and down (a setting may be clamped either way)."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, max(1, value // 4)]
    if isinstance(value, float):
        return [value * 2 + 1, value / 4]
    return []  # strings, lists: none of them reaches serving.json today


def test_every_param_that_changes_serving_json_reruns_register() -> None:
    """`serving.json` is written by the register stage from params.yaml: a parameter that
    changes it must be a dvc param of that stage, or `dvc repro` keeps a stale one."""
    from components.config import Params
    from flows.register import serving_config

    repo = Path(__file__).resolve().parents[2]
    listed = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["register"]["params"]
    base = Params().model_dump()
    default = serving_config(Params())
    changing = []
    for path in _leaves(base):
        *parents, key = path.split(".")
        section = base
        for part in parents:
            section = section[part]
        for value in _perturbed(section[key]):
            changed = json.loads(json.dumps(base))
            target = changed
            for part in parents:
                target = target[part]
            target[key] = value
            try:
                params = Params.model_validate(changed)
            except ValueError:
                continue  # a value the config refuses
            if serving_config(params) != default:
                changing.append(path)
                break
    assert {"evaluate.top_k", "evaluate.item_weight", "data.max_history"} <= set(changing)
    uncovered = [p for p in changing if not any(p == q or p.startswith(f"{q}.") for q in listed)]
    assert not uncovered, f"dvc.yaml register params lack {uncovered}"
