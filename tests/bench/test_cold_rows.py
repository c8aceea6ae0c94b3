"""bench/cold_rows.py: a finished run's model with some items' rows taken away and put back
as the mean row, a prediction from text, or as trained, ranked as evaluation ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data.dataset import Dataset
from components.model.recommender import GenerativeRecommender
from components.model.session import evaluate_model
from components.siit.warm_start import rows_from_features
from components.tokenizers.token_map import TokenMap
from tests.bench.test_decode_head import _run
from tests.siit.test_warm_start import _text_embeddings


@pytest.fixture
def cold_rows(tmp_path: Path, monkeypatch, bench_script):
    module = bench_script("cold_rows")
    monkeypatch.setattr(sys.modules["compare_runs"], "RUNS", tmp_path)
    asked = []

    def embed(texts, encoder, cache):  # no sentence encoder in tests
        asked.append((encoder, Path(cache)))
        return _text_embeddings([f"{t} topic {i % 5}" for i, t in enumerate(texts)], encoder)

    monkeypatch.setattr(module, "embed_texts", embed)
    module.asked = asked
    return module


def _model(work: Path):
    models = work / "artifacts/models/siit"
    rec = GenerativeRecommender.load(models / "model", device=torch.device("cpu"))
    return rec, TokenMap.load(models / "token_map.parquet").codes


def test_each_start_is_ranked_as_evaluation_ranks(
    cold_rows, tmp_path: Path, monkeypatch, capsys
) -> None:
    torch.set_num_threads(1)
    work = tmp_path / "t-s1-siit"
    params = _run(work, item_inputs_in_head="training")
    got = cold_rows.cold_rows(work, "siit", share=0.25, seed=1)
    assert cold_rows.asked == [(params.tokenize.encoder, work / "data" / "embeddings")]
    dataset = Dataset.read(work / "data/processed")
    rec, codes = _model(work)
    # nothing taken away: the model as evaluation ranks it
    want, _ = evaluate_model(rec, dataset, codes, params.evaluate, "valid")
    assert got["trained"]["all"] == want

    # the same rows replaced by hand give the same figures
    n = rec.item_inputs
    hidden = np.sort(np.random.default_rng(1).choice(n, round(0.25 * n), replace=False))
    visible = np.setdiff1d(np.arange(n), hidden)
    weight = rec.model.get_input_embeddings().weight
    rows = weight.detach()[rec.item_input_base : rec.item_input_base + n].clone()
    texts = dataset.item_texts()
    features = _text_embeddings([f"{t} topic {i % 5}" for i, t in enumerate(texts)], None)
    data = dataset.eval_split("valid")
    cold = np.isin(data.targets, hidden)
    assert got["mean"]["cold users"] == int(cold.sum())
    for variant, start in (
        ("mean", rows[visible].mean(0).expand(len(hidden), -1)),
        ("text", rows_from_features(rows[visible], features[visible], features[hidden])),
    ):
        with torch.no_grad():
            weight[rec.item_input_base + torch.as_tensor(hidden)] = start
        metrics, ranked = evaluate_model(rec, dataset, codes, params.evaluate, "valid")
        assert got[variant]["all"] == metrics
        assert got[variant]["cold"] == cold_rows.ranking_metrics(ranked[cold], data.targets[cold])
    assert got["mean"]["all"] != got["trained"]["all"]  # the replaced rows change the ranking

    monkeypatch.setattr(sys, "argv", ["cold_rows.py", "t-siit", "--seeds", "1", "--share", "0.25"])
    cold_rows.main()
    out = capsys.readouterr().out
    (row,) = [r for r in out.splitlines() if r.startswith("| t-s1-siit |")]
    assert f"{cold_rows.average(got['text']['all']):.4f}" in row
    diff = cold_rows.average(got["text"]["all"]) - cold_rows.average(got["mean"]["all"])
    assert f"| all | {diff:+.4f} |" in out


def test_a_model_without_item_rows_is_refused(cold_rows, tmp_path: Path) -> None:
    work = tmp_path / "p-s1-siit"
    _run(work, item_inputs=False)
    with pytest.raises(SystemExit, match="no item rows"):
        cold_rows.cold_rows(work, "siit", share=0.1, seed=1)
