"""bench/item_head.py: a finished run's model ranked by its identifiers, its item rows, both."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data.dataset import Dataset
from components.evaluation import evaluate_ranking
from components.model.head import item_rows
from components.model.recommender import GenerativeRecommender
from components.model.session import evaluate_model
from components.tokenizers.token_map import TokenMap
from tests.bench.test_decode_head import _run


@pytest.fixture
def item_head(tmp_path: Path, monkeypatch, bench_script):
    module = bench_script("item_head")
    monkeypatch.setattr(sys.modules["compare_runs"], "RUNS", tmp_path)
    return module


def _brute_force_item_ranking(rec, codes, data, k: int) -> np.ndarray:
    """One prompt at a time, no padding: every unseen item by its row's dot product."""
    builder = rec.prompt_builder(codes)
    rows = item_rows(rec.model)
    weight = rec.model.get_input_embeddings().weight[rows.base : rows.base + rows.count]
    ranked = []
    with torch.no_grad():
        for history, seen in zip(data.histories, data.seen, strict=True):
            ids = torch.tensor([builder.seqrec_prompt(history)])
            last = rec.model.model(input_ids=ids).last_hidden_state[0, -1]
            scores = (last @ weight.T).numpy().astype(np.float64)
            scores[seen] = -np.inf
            ranked.append(np.argsort(-scores, kind="stable")[:k])
    return np.stack(ranked)


def test_three_rankings_of_one_model(item_head, tmp_path: Path, monkeypatch, capsys) -> None:
    torch.set_num_threads(1)
    work = tmp_path / "t-s1-siit"
    params = _run(work, item_inputs_in_head="training")
    got = item_head.rank_all(work, "siit", weights=[0.0, 1.0])
    models = work / "artifacts/models/siit"
    rec = GenerativeRecommender.load(models / "model", device=torch.device("cpu"))
    rec.model.eval()
    codes = TokenMap.load(models / "token_map.parquet").codes
    dataset = Dataset.read(work / "data/processed")
    for split in ("valid", "test"):
        beam_order = params.evaluate.model_copy(update={"item_weight": 0.0})
        want, _ = evaluate_model(rec, dataset, codes, beam_order, split)
        assert got[split]["identifiers"] == want  # the beam's own ranking
        # weight 0: the beam's order again (its shortlist re-ranked by its own scores)
        assert got[split]["both, w=0"] == want
        # weight 1: what evaluation ranks with evaluate.item_weight 1
        rescored = params.evaluate.model_copy(update={"item_weight": 1.0})
        assert got[split]["both, w=1"] == evaluate_model(rec, dataset, codes, rescored, split)[0]
        data = dataset.eval_split(split)
        brute = _brute_force_item_ranking(rec, codes, data, params.evaluate.top_k)
        assert got[split]["item rows"] == evaluate_ranking(brute, data)
    assert got["valid"]["both, w=1"] != got["valid"]["identifiers"]

    monkeypatch.setattr(sys, "argv", ["item_head.py", "t-siit", "--seeds", "1", "--weights", "1"])
    item_head.main()
    out = capsys.readouterr().out
    (row,) = [r for r in out.splitlines() if r.startswith("| t-s1-siit | valid |")]
    assert f"{got['valid']['identifiers']['ndcg@10']:.4f}" in row
    assert "| t-siit | test |" in out


def test_a_model_without_item_rows_is_refused(item_head, tmp_path: Path) -> None:
    work = tmp_path / "p-s1-siit"
    _run(work, item_inputs=False)
    with pytest.raises(SystemExit, match="no item rows"):
        item_head.rank_all(work, "siit", weights=[1.0])


def test_headroom_scores_the_item_rows_shortlist_as_the_beam_does(
    item_head, tmp_path: Path
) -> None:
    """--headroom: the item rows' own shortlist is scored by its identifiers' log-probability,
    the same figure the beam search gives the items both shortlists hold."""
    torch.set_num_threads(1)
    work = tmp_path / "h-s1-siit"
    params = _run(work, item_inputs_in_head="training")
    got = item_head.rank_all(work, "siit", weights=[1.0], headroom=True)
    models = work / "artifacts/models/siit"
    rec = GenerativeRecommender.load(models / "model", device=torch.device("cpu"))
    rec.model.eval()
    codes = TokenMap.load(models / "token_map.parquet").codes
    data = Dataset.read(work / "data/processed").eval_split("valid")
    cfg = params.evaluate
    builder = rec.prompt_builder(codes)
    prompts = [builder.seqrec_prompt(h) for h in data.histories]
    seen = item_head.seen_mask(data.seen, len(codes))
    beam = item_head.constrained_beam_search(
        rec.model,
        prompts,
        rec.code_token_ids,
        item_head.PrefixTrie.from_codes(codes, rec.codebook_sizes),
        beam_size=cfg.beam_size,
        top_k=cfg.beam_size,
        pad_id=rec.tokenizer.pad_token_id or 0,
        exclude=seen,
    )
    items = item_head.search_item_log_probs(
        rec.model, beam, prompts, rec.tokenizer.pad_token_id or 0
    )
    items = items.masked_fill(seen, -torch.inf)
    own = item_head.rows_shortlist(rec, prompts, items, codes, cfg.beam_size)
    brute = _brute_force_item_ranking(rec, codes, data, cfg.beam_size)
    assert (own.leaves.numpy() == brute).all()  # the item rows' own favourites, seen excluded
    shared = 0
    for u in range(len(prompts)):
        beam_score = dict(zip(beam.leaves[u].tolist(), beam.scores[u].tolist(), strict=True))
        for item, score in zip(own.leaves[u].tolist(), own.scores[u].tolist(), strict=True):
            if item in beam_score:
                assert score == pytest.approx(beam_score[item], abs=1e-4)
                shared += 1
    assert shared > 0
    recall = got["valid"]["recall"]
    assert recall["shortlist"] == pytest.approx(
        np.mean([t in row for t, row in zip(data.targets, beam.leaves.tolist(), strict=True)])
    )
    assert recall["rows' shortlist"] == pytest.approx(
        np.mean([t in row for t, row in zip(data.targets, brute.tolist(), strict=True)])
    )
    # --row-candidates: evaluation's own ranking with evaluate.row_candidates
    union = item_head.rank_all(work, "siit", weights=[1.0], row_candidates=(3,))
    with_rows = cfg.model_copy(update={"item_weight": 1.0, "row_candidates": 3})
    dataset = Dataset.read(work / "data/processed")
    for split in ("valid", "test"):
        want, _ = evaluate_model(rec, dataset, codes, with_rows, split)
        assert union[split]["both, w=1, +3"] == want
    # a huge weight ranks the rows' shortlist by the item rows alone
    again = item_head.rank_all(work, "siit", weights=[1e6], headroom=True)
    assert again["valid"]["rows' shortlist, w=1e+06"] == again["valid"]["item rows"]
