"""`evaluate.item_weight`: the beam's leaves re-scored by the item rows, in evaluation and
serving alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import EvaluateConfig, Params
from components.data.dataset import EvalSplit
from components.evaluation import recommend_generative, seen_mask
from components.model.decoding import (
    PrefixTrie,
    constrained_beam_search,
    item_log_probs,
    rescore_with_item_rows,
    rescored_beam_search,
    search_item_log_probs,
    sequence_log_probs,
    with_row_candidates,
)
from components.model.head import item_rows
from components.paths import MODEL_DIR, TOKEN_MAP_FILE
from components.serving import SERVING_CONFIG, Recommender, ServingConfig
from components.tokenizers.token_map import TokenMap
from tests.model.test_item_inputs import N_ITEMS, _codes, _rec
from tests.serving.conftest import make_bundle

pytestmark = pytest.mark.usefixtures("one_thread")

HISTORIES = [np.array([3, 7, 1]), np.array([0]), np.array([9, 4, 6, 8, 10, 2]), np.array([5, 11])]


def _split() -> EvalSplit:
    return EvalSplit(
        user_ids=[str(i) for i in range(len(HISTORIES))],
        histories=HISTORIES,
        targets=np.array([2, 5, 3, 0]),
        seen=[np.unique(h) for h in HISTORIES],
    )


def test_item_scores_of_a_padded_batch_are_each_prompts_own() -> None:
    rec = _rec(in_head="training")
    rec.model.eval()
    prompts = [rec.prompt_builder(_codes()).seqrec_prompt(h) for h in HISTORIES]
    batched = item_log_probs(rec.model, prompts, rec.tokenizer.pad_token_id or 0)
    rows = item_rows(rec.model)
    weight = rec.model.get_input_embeddings().weight[rows.base : rows.base + rows.count]
    with torch.no_grad():
        for i, p in enumerate(prompts):
            last = rec.model.model(input_ids=torch.tensor([p])).last_hidden_state[0, -1]
            torch.testing.assert_close(batched[i], torch.log_softmax(last @ weight.T, -1))
    assert batched.shape == (len(HISTORIES), N_ITEMS)
    with pytest.raises(ValueError, match="item input rows"):
        plain = _rec(item_inputs=False)
        item_log_probs(plain.model, prompts[:1])


def test_the_search_keeps_its_prompts_hidden_states_for_the_item_rows() -> None:
    """The re-scoring reads the hidden states the beam search's own pass over the (left-padded)
    prompts computed: the same item scores as a pass of their own, one prompt at a time."""
    rec, codes = _rec(in_head="training"), _codes()
    rec.model.eval()
    prompts = [rec.prompt_builder(codes).seqrec_prompt(h) for h in HISTORIES]
    search = dict(
        model=rec.model,
        prompts=prompts,
        code_token_ids=rec.code_token_ids,
        trie=PrefixTrie.from_codes(codes, rec.codebook_sizes),
        beam_size=6,
        top_k=6,
        pad_id=rec.tokenizer.pad_token_id or 0,
    )
    shared = constrained_beam_search(**search)
    assert shared.prompt_hidden is not None and len(shared.prompt_hidden) == len(prompts)
    kept = search_item_log_probs(rec.model, shared, prompts, search["pad_id"])
    for i, p in enumerate(prompts):
        torch.testing.assert_close(kept[i], item_log_probs(rec.model, [p])[0])
    # transformers' cache path keeps no hidden states: the re-scoring makes its own pass
    stock = constrained_beam_search(**search, shared_prompt=False)
    assert stock.prompt_hidden is None
    assert torch.equal(stock.leaves, shared.leaves)
    torch.testing.assert_close(
        search_item_log_probs(rec.model, stock, prompts, search["pad_id"]), kept
    )


def _search(rec, codes, prompts, width: int, **options):
    """The trie beam search over `codes` with `width` beams and leaves."""
    return constrained_beam_search(
        rec.model,
        prompts,
        rec.code_token_ids,
        PrefixTrie.from_codes(codes, rec.codebook_sizes),
        beam_size=width,
        top_k=width,
        **options,
    )


def _one_user(rec, codes, history, seen, cfg: EvaluateConfig) -> list[int]:
    """One user alone (no batch, no padding): the beam's leaves (and the item rows' best
    `cfg.row_candidates` unseen items it missed, scored one by one), re-ranked by hand."""
    prompt = rec.prompt_builder(codes).seqrec_prompt(history)
    beam = _search(
        rec,
        codes,
        [prompt],
        cfg.beam_size,
        pad_id=rec.tokenizer.pad_token_id or 0,
        exclude=seen_mask([seen], len(codes)),
    )
    logp = item_log_probs(rec.model, [prompt])[0]
    leaves = [int(x) for x in beam.leaves[0] if x >= 0]
    identifier = {item: float(beam.scores[0, j]) for j, item in enumerate(leaves)}
    missed = [
        int(i)
        for i in torch.argsort(logp, descending=True, stable=True)
        if int(i) not in identifier and int(i) not in set(np.asarray(seen).tolist())
    ][: cfg.row_candidates]
    for item in missed:
        tokens = torch.from_numpy(rec.item_tokens(codes)[[item]])
        identifier[item] = float(sequence_log_probs(rec.model, [prompt], tokens)[0])
    combined = {item: identifier[item] + cfg.item_weight * float(logp[item]) for item in identifier}
    return sorted(combined, key=lambda item: -combined[item])[: cfg.top_k]


def test_evaluation_ranks_the_shortlist_by_both_scores() -> None:
    rec, codes = _rec(in_head="training"), _codes()
    cfg = EvaluateConfig(beam_size=6, top_k=3, batch_size=3, item_weight=2.0)
    ranked = recommend_generative(rec, codes, _split(), cfg)
    for row, (h, seen) in enumerate(zip(HISTORIES, _split().seen, strict=True)):
        assert ranked[row].tolist() == _one_user(rec, codes, h, seen, cfg)
        assert not set(ranked[row].tolist()) & set(seen.tolist())
    plain = recommend_generative(rec, codes, _split(), cfg.model_copy(update={"item_weight": 0}))
    assert not np.array_equal(ranked, plain)  # the item rows changed some ranking


def test_the_item_rows_best_missed_items_join_the_shortlist() -> None:
    """evaluate.row_candidates: a beam of 3 reaches few items; the item rows' best unseen items
    it missed join its leaves, scored as the beam scores them, and the union is re-ranked."""
    rec, codes = _rec(in_head="training"), _codes()
    cfg = EvaluateConfig(beam_size=3, top_k=3, batch_size=3, item_weight=2.0, row_candidates=4)
    ranked = recommend_generative(rec, codes, _split(), cfg)
    for row, (h, seen) in enumerate(zip(HISTORIES, _split().seen, strict=True)):
        assert ranked[row].tolist() == _one_user(rec, codes, h, seen, cfg)
        assert not set(ranked[row].tolist()) & set(seen.tolist())
    beam_only = recommend_generative(
        rec, codes, _split(), cfg.model_copy(update={"row_candidates": 0})
    )
    assert not np.array_equal(ranked, beam_only)  # some missed item made a top-3
    # without the item rows' weight there is no re-ranking, and no candidate is added
    plain = cfg.model_copy(update={"item_weight": 0.0})
    assert np.array_equal(
        recommend_generative(rec, codes, _split(), plain),
        recommend_generative(rec, codes, _split(), plain.model_copy(update={"row_candidates": 0})),
    )


def test_missed_items_are_scored_over_the_search_or_alone_alike() -> None:
    """The added candidates' identifier scores over the search's own prompt pass
    (`score_many`) equal transformers' path (`sequence_log_probs` per prompt and item)."""
    rec, codes = _rec(in_head="training"), _codes()
    rec.model.eval()
    prompts = [rec.prompt_builder(codes).seqrec_prompt(h) for h in HISTORIES]
    seen = seen_mask(_split().seen, len(codes))
    common = dict(
        prompts=prompts,
        code_token_ids=rec.code_token_ids,
        trie=PrefixTrie.from_codes(codes, rec.codebook_sizes),
        beam_size=4,
        top_k=6,
        exclude=seen,
        item_weight=1.0,
        item_codes=torch.from_numpy(codes),
        row_candidates=5,
    )
    with_shared = rescored_beam_search(rec.model, **common)

    def union_of(count: int, shared_prompt: bool = True):
        """The beam's 4 leaves and `count` row candidates, over the search's own steps."""
        steps = []
        result = constrained_beam_search(
            rec.model,
            prompts,
            rec.code_token_ids,
            common["trie"],
            4,
            4,
            exclude=seen,
            shared_prompt=shared_prompt,
            steps_out=steps,
        )
        items = search_item_log_probs(rec.model, result, prompts)
        return with_row_candidates(
            rec.model,
            steps[0],
            prompts,
            result,
            items,
            torch.from_numpy(codes),
            rec.code_token_ids,
            count,
            seen,
        )

    alone, union = union_of(5, shared_prompt=False), union_of(5)
    assert torch.equal(union.leaves, alone.leaves)
    torch.testing.assert_close(union.scores, alone.scores, atol=1e-4, rtol=0)
    assert union.leaves.shape[1] == 4 + 5
    for row in range(len(prompts)):
        added = [i for i in union.leaves[row, 4:].tolist() if i >= 0]
        assert not set(added) & set(union.leaves[row, :4].tolist())
        assert not set(added) & set(_split().seen[row].tolist())
        # the added items' codes are theirs
        assert (union.codes[row, 4 : 4 + len(added)].numpy() == codes[added]).all()
    assert with_shared.leaves.shape == (len(prompts), 6)
    # more candidates asked than the catalogue holds: every unseen item joins the shortlist
    everything = union_of(100)
    assert everything.leaves.shape[1] == 4 + N_ITEMS
    for row in range(len(prompts)):
        got = {i for i in everything.leaves[row].tolist() if i >= 0}
        assert got == set(range(N_ITEMS)) - set(_split().seen[row].tolist())


def test_an_absent_leaf_does_not_unblock_item_zero() -> None:
    """A beam with fewer leaves than its width (-1) next to item 0: item 0 stays a leaf only,
    never a row candidate too."""
    rec, codes = _rec(in_head="training"), _codes()
    rec.model.eval()
    prompts = [rec.prompt_builder(codes).seqrec_prompt(h) for h in HISTORIES[:1]]
    steps = []
    beam = _search(rec, codes, prompts, 4, steps_out=steps)
    leaves = torch.tensor([[0] + [-1] * 3])  # item 0, then absent leaves (-1 written last)
    short = type(beam)(
        codes=beam.codes, scores=beam.scores.masked_fill(leaves < 0, -torch.inf), leaves=leaves
    )
    items = torch.zeros((1, N_ITEMS))
    items[0, 0] = 5.0  # the item rows' favourite is item 0, already a leaf
    union = with_row_candidates(
        rec.model,
        steps[0],
        prompts,
        short,
        items,
        torch.from_numpy(codes),
        rec.code_token_ids,
        N_ITEMS,
    )
    added = [i for i in union.leaves[0, 4:].tolist() if i >= 0]
    assert 0 not in added
    assert sorted(added) == list(range(1, N_ITEMS))


def test_weight_zero_keeps_the_beams_order() -> None:
    rec, codes = _rec(in_head="training"), _codes()
    prompts = [rec.prompt_builder(codes).seqrec_prompt(h) for h in HISTORIES]
    beam = _search(rec, codes, prompts, 6)
    same = rescore_with_item_rows(beam, item_log_probs(rec.model, prompts), 0.0, 3)
    assert torch.equal(same.leaves, beam.leaves[:, :3])
    assert torch.equal(same.codes, beam.codes[:, :3])


def test_serving_answers_as_evaluation_ranks(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    ServingConfig(default_k=3, beam_size=6, max_history=8, item_weight=2.0, row_candidates=3).write(
        bundle / SERVING_CONFIG
    )
    assert ServingConfig.read(bundle / SERVING_CONFIG).item_weight == 2.0
    assert ServingConfig.read(bundle / SERVING_CONFIG).row_candidates == 3
    served = Recommender.from_bundle(bundle)
    loaded = Recommender.load(bundle / MODEL_DIR, bundle / TOKEN_MAP_FILE, ServingConfig())
    rec = loaded.rec  # the bundle's model, decoded one user at a time below
    token_map = TokenMap.load(bundle / TOKEN_MAP_FILE)
    cfg = EvaluateConfig(beam_size=6, top_k=3, item_weight=2.0, row_candidates=3)
    histories = [[1, 4, 7], [], [2]]
    answers = served.recommend([[token_map.item_ids[i] for i in h] for h in histories], [3] * 3)
    for h, answer in zip(histories, answers, strict=True):
        want = _one_user(rec, token_map.codes, np.array(h, dtype=np.int64), np.array(h), cfg)
        assert answer["item_ids"] == [token_map.item_ids[i] for i in want]
        assert answer["scores"] == sorted(answer["scores"], reverse=True)


def test_models_without_item_rows_rank_by_the_beam_alone() -> None:
    """evaluate.item_weight is ignored where there are no item rows to score (as for T5)."""
    Params.model_validate({"model": {"item_inputs": False}})
    plain, codes = _rec(item_inputs=False), _codes()
    cfg = EvaluateConfig(beam_size=6, top_k=3, item_weight=5.0)
    np.testing.assert_array_equal(
        recommend_generative(plain, codes, _split(), cfg),
        recommend_generative(plain, codes, _split(), cfg.model_copy(update={"item_weight": 0})),
    )
