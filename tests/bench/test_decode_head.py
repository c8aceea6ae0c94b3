"""bench/decode_head.py: a finished run's model decoded with and without the item rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from components.data.dataset import Dataset
from components.model.recommender import GenerativeRecommender
from components.model.session import evaluate_model
from components.tokenizers.token_map import TokenMap
from tests.flows.test_register import N_ITEMS, write_dataset, write_report
from tests.siit.test_warm_start import _params, make_champion


@pytest.fixture
def decode_head(tmp_path: Path, monkeypatch, bench_script):
    module = bench_script("decode_head")
    monkeypatch.setattr(sys.modules["compare_runs"], "RUNS", tmp_path)
    return module


def _run(work: Path, **model):
    """A finished SIIT run's folder: params.yaml, data, the selected model, its report."""
    params = _params(model={"item_inputs": True, **model}, evaluate={"batch_size": 4})
    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    write_dataset(work)
    make_champion(work / "artifacts/models/siit", params, n_items=N_ITEMS)
    write_report(work, "siit", 0.2)
    return params


def test_each_run_is_decoded_as_a_model_trained_with_either_setting(
    decode_head, tmp_path: Path, monkeypatch, capsys
) -> None:
    """The rows-in figures are those of the model as trained with `true`, the rows-out ones
    those of the same weights saved with `training` (the same seed: the same model)."""
    torch.set_num_threads(1)
    params = _run(tmp_path / "t-s1-siit", item_inputs_in_head=True)
    _run(tmp_path / "u-s1-siit", item_inputs_in_head="training")
    monkeypatch.setattr(sys, "argv", ["decode_head.py", "t-siit", "--seeds", "1"])
    decode_head.main()
    out = capsys.readouterr().out
    (row,) = [r for r in out.splitlines() if r.startswith("| t-s1-siit |")]
    assert "1 runs; four-metric average" in out
    got = decode_head.redecode(tmp_path / "t-s1-siit", "siit")
    assert got[True] != got["training"]  # an untrained model's item rows change the ranking
    for setting, folder in ((True, "t-s1-siit"), ("training", "u-s1-siit")):
        models = tmp_path / folder / "artifacts/models/siit"
        rec = GenerativeRecommender.load(models / "model", device=torch.device("cpu"))
        assert rec.item_inputs_in_head == setting
        codes = TokenMap.load(models / "token_map.parquet").codes
        data = Dataset.read(tmp_path / folder / "data/processed")
        for split in ("valid", "test"):
            want, _ = evaluate_model(rec, data, codes, params.evaluate, split)
            assert got[setting][split] == want
    assert (
        f"{got[True]['valid']['ndcg@10']:.5f} -> {got['training']['valid']['ndcg@10']:.5f}" in row
    )


def test_a_model_without_item_rows_is_refused(decode_head, tmp_path: Path) -> None:
    work = tmp_path / "p-s1-siit"
    _run(work, item_inputs=False)
    with pytest.raises(SystemExit, match="no item rows"):
        decode_head.redecode(work, "siit")
