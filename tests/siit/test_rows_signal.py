"""`siit.signal: rows`: each item is scored over the training histories after which the
model's item rows expect it most."""

from __future__ import annotations

import numpy as np
import pytest

from components.config import Params, SiitConfig
from components.model.decoding import item_log_probs
from components.siit.refine import background_histories, expected_contexts, refine_identifiers
from tests.model.test_item_inputs import N_ITEMS, _codes, _rec

TRAIN = [np.array([(u * 5 + j * 3) % N_ITEMS for j in range(2 + u % 5)]) for u in range(30)]


def test_expected_contexts_are_each_items_most_expecting_histories() -> None:
    rec, codes = _rec(in_head="training"), _codes()
    rec.model.eval()
    got = expected_contexts(
        rec, codes, TRAIN, max_history=4, per_item=3, pool=40, seed=3, batch_size=7
    )  # several batches: the running top-k across them
    pool = background_histories(TRAIN, 4, 40, seed=3)
    builder = rec.prompt_builder(codes)
    for item in range(N_ITEMS):
        scored = []
        for j, h in enumerate(pool):  # one history at a time, no padding
            if item in h.tolist():
                continue  # never a history that already holds the item
            logp = item_log_probs(rec.model, [builder.seqrec_prompt(h)])[0, item]
            scored.append((-float(logp), j))
        want = [pool[j].tolist() for _, j in sorted(scored)[:3]]
        assert [h.tolist() for h in got[item]] == want, item


def test_fewer_histories_than_asked_and_none_at_all() -> None:
    rec, codes = _rec(in_head="training"), _codes()
    got = expected_contexts(rec, codes, TRAIN, max_history=4, per_item=10, pool=5, seed=0)
    assert all(len(c) <= 5 for c in got) and any(len(c) == 5 for c in got)
    none = expected_contexts(rec, codes, [np.array([1])], max_history=4, per_item=2, pool=5, seed=0)
    assert none == [[] for _ in range(N_ITEMS)]


def test_rows_signal_refines_to_a_bijection_deterministically() -> None:
    rec, codes = _rec(in_head="training"), _codes()
    cfg = SiitConfig(signal="rows", min_gain=0.0, candidates=4, beam_size=6, batch_size=5)
    contexts = expected_contexts(rec, codes, TRAIN, 4, cfg.contexts_per_item, 40, seed=1)
    texts = [f"item {i} words" for i in range(N_ITEMS)]
    new, stats = refine_identifiers(rec, texts, codes, cfg, seed=0, contexts=contexts)
    assert len({tuple(r) for r in new}) == N_ITEMS
    assert stats["items_with_context"] == 1.0
    again = expected_contexts(rec, codes, TRAIN, 4, cfg.contexts_per_item, 40, seed=1)
    assert [[h.tolist() for h in c] for c in again] == [[h.tolist() for h in c] for c in contexts]
    assert (refine_identifiers(rec, texts, codes, cfg, seed=0, contexts=again)[0] == new).all()
    with pytest.raises(ValueError, match="item input rows"):  # no item rows to rank with
        expected_contexts(_rec(item_inputs=False), codes, TRAIN, 4, 2, 10, seed=0)


@pytest.mark.parametrize(
    "model",
    [{"item_inputs": False}, {"architecture": "t5"}, {"profile": "pretrained"}],
)
def test_rows_signal_needs_the_tiny_llama_with_item_rows(model: dict) -> None:
    Params.model_validate({"siit": {"signal": "rows"}})
    with pytest.raises(ValueError, match="siit.signal rows"):
        Params.model_validate({"siit": {"signal": "rows"}, "model": model})


def test_the_training_flow_refines_over_the_expecting_histories() -> None:
    """flows/train.py's refinement task hands the rows signal `expected_contexts` over the
    session's training sequences."""
    from types import SimpleNamespace

    from flows.train import refine_task

    rec, codes = _rec(in_head="training"), _codes()
    texts = [f"item {i} words" for i in range(N_ITEMS)]
    session = SimpleNamespace(
        rec=rec,
        codes=codes,
        train_sequences=TRAIN,
        dataset=SimpleNamespace(max_history=4, n_items=N_ITEMS, item_texts=lambda: texts),
        item2id_holdout=None,  # siit.text_holdout off: every item may move
    )
    params = Params.model_validate(
        {
            "train": {"seed": 2},
            "siit": {"signal": "rows", "min_gain": 0.0, "row_pool": 40, "batch_size": 5},
        }
    )
    new, stats = refine_task.fn(session, params, round_index=1)
    contexts = expected_contexts(rec, codes, TRAIN, 4, 4, 40, seed=201)
    want, _ = refine_identifiers(rec, texts, codes, params.siit, seed=201, contexts=contexts)
    assert (new == want).all()
    assert stats["items_with_context"] == 1.0
