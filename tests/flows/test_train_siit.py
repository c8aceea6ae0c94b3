"""The SIIT model's training flow with the context signal: the immediate effect of every
refinement and the best epoch are recorded and the refined maps are bijections (determinism:
test_resume.py, which runs `siit train_siit` itself). The flow runs in the test's process
against the session's Prefect server: the real code path without a process start per run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from components.metrics import cross_fitted_metrics, metrics_from_ranks
from tests.conftest import flows_in
from tests.flows.conftest import copy_prepared
from tests.flows.test_pipeline_dvc import TINY_PARAMS, _merge

PARAMS = _merge(
    TINY_PARAMS,
    {
        "train": {"epochs": 3},
        "siit": {"rounds": 2, "refine_after": [1, 2], "signal": "context", "contexts_per_item": 2},
    },
)


@pytest.fixture(scope="module")
def prepared(
    tiny_prepared: Path, tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]
) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("train-siit") / "project"
    return root, copy_prepared(tiny_prepared, root, {**os.environ, **prefect_env}, PARAMS)


def _train(src: Path, dst: Path, env: dict[str, str], siit: dict | None = None) -> dict:
    """`siit train_siit`'s flow on a copy of `src` (`siit`: settings merged in), in this
    process, on one thread (a tiny model trains faster on one)."""
    from flows.train import train_flow

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["train"]["threads"] = 1
    params["siit"].update(siit or {})
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with flows_in(dst, env):
        train_flow(mode="siit", root=str(dst))
    return json.loads((dst / "reports/models/siit.json").read_text())


class HashEncoder:
    """A fake sentence encoder (no model to load): a fixed random vector per text."""

    def encode(self, sentences: list[str], **kwargs: object) -> np.ndarray:
        return np.stack(
            [np.random.default_rng(list(s.encode())).normal(size=8) for s in sentences]
        ).astype(np.float32)


def test_context_signal_records_immediate_effect_and_best_epoch(
    prepared: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.tokenizers import embed_texts, text_coherence
    from components.tokenizers import embeddings as embeddings_module

    monkeypatch.setattr(embeddings_module, "_load_encoder", lambda name: HashEncoder())
    root, env = prepared
    report = _train(root, tmp_path / "a", env, {"text_coherence": True})
    rounds = pl.read_csv(tmp_path / "a/reports/rounds.csv")
    assert rounds.get_column("epoch").to_list() == [1, 2, 3]
    refined = rounds.filter(pl.col("churn").is_not_null())
    assert refined.height == 2
    for column in (
        "effect_valid_ndcg@10_old",
        "effect_valid_ndcg@10_new",
        "effect_seqrec_loss_old",
        "effect_seqrec_loss_new",
    ):
        values = refined.get_column(column).to_list()
        assert all(v is not None and v >= 0 for v in values), column
    # the old map's score is the round's own validation
    assert (
        refined.get_column("effect_valid_ndcg@10_old").to_list()
        == refined.get_column("valid_ndcg@10").to_list()
    )
    assert 1 <= report["best_epoch"] <= 3
    maps = sorted((tmp_path / "a/artifacts/token_maps").glob("*.parquet"))
    assert [m.name for m in maps] == [f"round_00{i}.parquet" for i in range(3)]
    for path in maps:
        codes = pl.read_parquet(path).select("c0", "c1", "c2").rows()
        assert len(set(codes)) == len(codes)  # a bijection every round
    # siit.text_coherence: each refinement's old and new map, by prefix depth (levels 0, 0-1),
    # from the items' text embeddings (the tokenize stage made none for random ids: embedded
    # once by the train flow, into the project's cache)
    texts = pl.read_parquet(tmp_path / "a/data/processed/items.parquet")
    vectors = embed_texts(
        texts.get_column("text").to_list(), "all-MiniLM-L6-v2", tmp_path / "a/data/embeddings"
    )
    by_map = [
        text_coherence(pl.read_parquet(m).select("c0", "c1", "c2").to_numpy(), vectors)
        for m in maps
    ]
    for r, row in enumerate(refined.iter_rows(named=True)):
        for depth in (0, 1):
            assert row[f"text_coherence_before_l{depth}"] == pytest.approx(by_map[r][depth])
            assert row[f"text_coherence_l{depth}"] == pytest.approx(by_map[r + 1][depth])
    recs = pl.read_parquet(tmp_path / "a/reports/models/siit_recommendations_test.parquet")
    assert "target_item_id" in recs.columns
    # every validation the best model was chosen from, per user: the best candidate's ranks
    # give the reported validation, and the cross-fitted validation is recomputed from them
    ranks = pl.read_parquet(tmp_path / "a/reports/models/siit_valid_ranks.parquet")
    assert ranks.columns == ["candidate", "epoch", "map_round", "user_id", "rank"]
    candidates = ranks.select("candidate", "epoch", "map_round").unique(maintain_order=True)
    # epochs 1-3 with their maps, and the refined maps after epochs 1 and 2
    assert candidates.rows() == [(0, 1, 0), (1, 1, 1), (2, 2, 1), (3, 2, 2), (4, 3, 2)]
    by_candidate = np.stack(
        [ranks.filter(pl.col("candidate") == c).get_column("rank").to_numpy() for c in range(5)]
    )
    users = ranks.get_column("user_id").n_unique()
    assert by_candidate.shape == (5, users) and ranks.height == 5 * users
    scores = [metrics_from_ranks(r) for r in by_candidate]
    best = int(np.argmax([s["ndcg@10"] for s in scores]))
    assert candidates.row(best)[1] == report["best_epoch"]
    assert scores[best] == pytest.approx(report["valid"], abs=1e-12)
    assert [s["ndcg@10"] for s in scores[0::2]] == pytest.approx(
        rounds.get_column("valid_ndcg@10").to_list(), abs=1e-12
    )
    assert report["valid_cross_fitted"] == pytest.approx(cross_fitted_metrics(by_candidate))


def test_t5_trains_refines_and_ranks_through_the_flow(
    prepared: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`model.architecture: t5` end to end: train, validate, refine by context, test; the saved
    model is a T5 and every test user gets 10 unseen items."""
    root, env = prepared
    src = tmp_path / "src"
    shutil.copytree(root, src, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    params = yaml.safe_load((src / "params.yaml").read_text())
    params["model"]["architecture"] = "t5"
    params["train"].update({"epochs": 2, "threads": 1})  # tiny: one thread is faster
    params["siit"].update({"rounds": 1, "refine_after": [1]})
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    report = _train(src, tmp_path / "t5", env)
    out = tmp_path / "t5"
    meta = json.loads((out / "artifacts/models/siit/model/siit_model.json").read_text())
    assert meta["architecture"] == "t5"
    rounds = pl.read_csv(out / "reports/rounds.csv")
    assert rounds.get_column("epoch").to_list() == [1, 2]
    assert rounds.filter(pl.col("churn").is_not_null()).height == 1
    assert all(0 <= report["test"][m] <= 1 for m in ("recall@10", "ndcg@10"))
    for path in sorted((out / "artifacts/token_maps").glob("*.parquet")):
        codes = pl.read_parquet(path).select("c0", "c1", "c2").rows()
        assert len(set(codes)) == len(codes)
    recs = pl.read_parquet(out / "reports/models/siit_recommendations_test.parquet")
    per_user = recs.group_by("user_id").agg(pl.col("item_id").n_unique().alias("n"))
    assert per_user.get_column("n").min() == 10
    # the saved folder serves: 5 unseen items for a history
    from components.serving import Recommender, ServingConfig

    served = Recommender.load(
        out / "artifacts/models/siit/model",
        out / "artifacts/models/siit/token_map.parquet",
        ServingConfig(beam_size=10),
    )
    history = served.item_ids[:3]
    answer = served.recommend([history], [5])[0]
    assert len(set(answer["item_ids"])) == 5 and not set(answer["item_ids"]) & set(history)


def test_text_holdout_moves_only_each_rounds_fold(
    prepared: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`siit.text_holdout`: each refinement moves items of its own fold only (the fold that
    trained without item2id before it), with `siit.free_candidates` onto identifiers that no
    item held, and every map stays a bijection."""
    from components.siit.refine import text_holdout

    root, env = prepared
    src = tmp_path / "src"
    shutil.copytree(root, src, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    params = yaml.safe_load((src / "params.yaml").read_text())
    params["train"].update({"threads": 1})
    params["siit"].update(
        {
            "signal": "text",
            "text_holdout": 0.5,
            "free_candidates": True,
            "min_gain": 0.0,
            "min_churn": 0.0,
        }
    )
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _train(src, tmp_path / "h", env)
    maps = [
        pl.read_parquet(p).select("c0", "c1", "c2").to_numpy()
        for p in sorted((tmp_path / "h/artifacts/token_maps").glob("*.parquet"))
    ]
    assert len(maps) == 3
    n, seed = len(maps[0]), params["train"]["seed"]
    moved_any = False
    for r in range(2):
        moved = ~(maps[r + 1] == maps[r]).all(axis=1)
        fold = text_holdout(n, 0.5, r, seed)
        assert not (moved & ~fold).any(), f"round {r} moved items outside its fold"
        held = {tuple(c) for c in maps[r]}  # free candidates: onto identifiers no item held
        assert not {tuple(c) for c in maps[r + 1][moved]} & held
        moved_any |= bool(moved.any())
        assert len({tuple(c) for c in maps[r + 1]}) == n
    assert moved_any
    refined = pl.read_csv(tmp_path / "h/reports/rounds.csv").filter(pl.col("churn").is_not_null())
    assert refined.height == 2
    # each refinement's movable share is its fold's
    assert refined["movable"].to_list() == pytest.approx(
        [text_holdout(n, 0.5, r, seed).mean() for r in range(2)]
    )


def test_held_out_contexts_move_only_items_with_a_held_out_history(
    prepared: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """`siit.contexts_from: held_out`: the context signal scores items on the histories before
    the training items `train.hold_out_last` keeps out of training, so only items that follow
    such a history may move (here onto free identifiers, with no minimum gain), and every map
    stays a bijection."""
    from components.data.dataset import Dataset
    from components.paths import Paths

    root, env = prepared
    src = tmp_path / "src"
    shutil.copytree(root, src, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    params = yaml.safe_load((src / "params.yaml").read_text())
    params["train"].update({"threads": 1, "hold_out_last": 1})
    params["siit"].update(
        {"contexts_from": "held_out", "free_candidates": True, "min_gain": 0.0, "min_churn": 0.0}
    )
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _train(src, tmp_path / "c", env)
    dataset = Dataset.read(Paths(src).processed)
    # each user's last training item (validation and test targets are the two after it)
    held = np.zeros(dataset.n_items, dtype=bool)
    held[[seq[-3] for seq in dataset.sequences if len(seq) >= 4]] = True
    assert 0 < held.sum() < dataset.n_items
    maps = [
        pl.read_parquet(p).select("c0", "c1", "c2").to_numpy()
        for p in sorted((tmp_path / "c/artifacts/token_maps").glob("*.parquet"))
    ]
    assert len(maps) == 3
    moved_any = False
    for r in range(2):
        moved = ~(maps[r + 1] == maps[r]).all(axis=1)
        assert not (moved & ~held).any(), f"round {r} moved an item with no held-out history"
        assert len({tuple(c) for c in maps[r + 1]}) == len(maps[r + 1])
        moved_any |= bool(moved.any())
    assert moved_any
    # reports/rounds.csv: the share of the items a held-out history leads to, per refinement
    movable = pl.read_csv(tmp_path / "c/reports/rounds.csv")["movable"].drop_nulls().to_list()
    assert movable == pytest.approx([held.mean()] * 2)


def test_text_rows_stay_fixed_and_a_balanced_assignment_refines_through_the_flow(
    prepared: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`model.text_token` on a model without item rows, the text signal cross-fitted and the
    balanced assignment: the saved model's text rows are still the items' text embeddings'
    principal components (8-dimensional fake embeddings: the rest of each row zero, as it
    started), refinement moved items, and every map is a bijection."""
    from components.model.recommender import GenerativeRecommender
    from components.tokenizers import embeddings as embeddings_module

    monkeypatch.setattr(embeddings_module, "_load_encoder", lambda name: HashEncoder())
    root, env = prepared
    src = tmp_path / "src"
    shutil.copytree(root, src, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    params = yaml.safe_load((src / "params.yaml").read_text())
    params["model"].update({"item_inputs": False, "text_token": True})
    params["train"].update({"item_loss": 0.0})
    params["evaluate"].update({"item_weight": 0.0, "row_candidates": 0})
    (src / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    siit = {
        "signal": "text",
        "text_holdout": 0.5,
        "free_candidates": True,
        "assignment": "balanced",
        "min_gain": 0.0,
        "min_churn": 0.0,
    }
    _train(src, tmp_path / "t", env, siit)
    out = tmp_path / "t"
    maps = [
        pl.read_parquet(p).select("c0", "c1", "c2").to_numpy()
        for p in sorted((out / "artifacts/token_maps").glob("*.parquet"))
    ]
    n = len(maps[0])
    assert all(len({tuple(c) for c in m}) == n for m in maps)
    assert any((a != b).any() for a, b in zip(maps[:-1], maps[1:], strict=True))
    rec = GenerativeRecommender.load(out / "artifacts/models/siit/model")
    assert rec.text_rows == n and rec.item_inputs == 0
    weight = rec.model.get_input_embeddings().weight.detach()
    rows = weight[rec.text_row_base : rec.text_row_base + n]
    assert (rows[:, 8:] == 0).all() and (rows[:, :8].abs().sum(1) > 0).all()
