"""`siit.text_holdout`: a fold of the items trains without the item2id task before each
refinement and is the only part of the catalogue that may move in it; `siit.free_candidates`:
refinement proposes only identifiers that no item holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from components.config import ConfigError, SiitConfig, TaskWeights, load_params
from components.model.training import task_examples
from components.siit.refine import text_holdout
from tests.siit.test_refine import SIZES, current_codes, rec, texts  # noqa: F401 (fixture)


def test_folds_are_disjoint_cover_the_items_and_are_fixed_by_the_seed() -> None:
    assert text_holdout(10, 0.0, 0, seed=1) is None
    halves = [text_holdout(10, 0.5, r, seed=1) for r in range(2)]
    assert [h.sum() for h in halves] == [5, 5]
    assert not (halves[0] & halves[1]).any() and (halves[0] | halves[1]).all()
    assert (text_holdout(10, 0.5, 2, seed=1) == halves[0]).all()  # the order wraps around
    assert (text_holdout(10, 0.5, 0, seed=1) == halves[0]).all()
    assert not (text_holdout(10, 0.5, 0, seed=2) == halves[0]).all()
    thirds = [text_holdout(9, 1 / 3, r, seed=0) for r in range(3)]
    assert (sum(t.astype(int) for t in thirds) == 1).all()
    assert text_holdout(3, 0.01, 0, seed=0).sum() == 1  # at least one item


def test_the_item2id_task_leaves_the_held_out_items_out(rec) -> None:  # noqa: F811
    prompts = rec.prompt_builder(current_codes())
    held = text_holdout(24, 0.5, 0, seed=3)
    weights = TaskWeights(seqrec=0.0, item2id=2.0, id2item=0.0)

    def item2id(items):
        return task_examples(
            prompts,
            weights,
            train_sequences=[],
            texts=texts(),
            titles=texts(),
            max_history=5,
            rng=np.random.default_rng(0),
            item2id_items=items,
        )["item2id"]

    every = item2id(None)
    kept = item2id(np.flatnonzero(~held))
    assert len(every) == 48 and len(kept) == 24
    as_examples = {i: prompts.item2id(t, i).input_ids for i, t in enumerate(texts())}
    taught = {tuple(e.input_ids) for e in kept}
    assert taught == {tuple(as_examples[i]) for i in np.flatnonzero(~held)}
    assert not taught & {tuple(as_examples[i]) for i in np.flatnonzero(held)}


def test_only_the_held_out_items_move_and_the_map_stays_a_bijection(rec) -> None:  # noqa: F811
    from components.siit.refine import refine_identifiers

    torch.manual_seed(0)
    cfg = SiitConfig(candidates=5, beam_size=8, batch_size=8, min_gain=0.0)
    current = current_codes()
    free, free_stats = refine_identifiers(rec, texts(), current, cfg, seed=0)
    moved_free = ~(free == current).all(axis=1)
    held = moved_free.copy()
    held[np.flatnonzero(moved_free)[::2]] = False  # half of the items that would move
    new, stats = refine_identifiers(rec, texts(), current, cfg, seed=0, movable=held)
    moved = ~(new == current).all(axis=1)
    assert moved.any() and not (moved & ~held).any()
    assert len({tuple(r) for r in new}) == len(new)
    assert stats["movable"] == pytest.approx(held.mean()) and "movable" not in free_stats


@pytest.mark.parametrize(
    ("siit", "tasks"),
    [({"signal": "context"}, {}), ({"signal": "text"}, {"item2id": 0.0})],
)
def test_params_refuse_a_holdout_the_signal_cannot_use(tmp_path, siit, tasks) -> None:
    path = tmp_path / "params.yaml"
    params = {"siit": {"text_holdout": 0.5, **siit}, "train": {"tasks": tasks}}
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="siit.text_holdout"):
        load_params(path)


def test_free_candidates_are_identifiers_no_item_holds(rec) -> None:  # noqa: F811
    from components.siit.refine import propose_identifiers, refine_identifiers

    current = current_codes()
    held = {tuple(c) for c in current}
    cfg = SiitConfig(candidates=5, beam_size=8, batch_size=8, free_candidates=True)
    cand = propose_identifiers(rec, texts(), current, cfg, seed=0)
    proposed = {tuple(c) for c in cand.codes.reshape(-1, 3)}
    assert np.isfinite(cand.scores).all() and not proposed & held
    anywhere = propose_identifiers(
        rec, texts(), current, SiitConfig(candidates=5, beam_size=8, batch_size=8), 0
    )
    assert {tuple(c) for c in anywhere.codes.reshape(-1, 3)} & held  # the free trie matters here
    # the current identifiers' scores do not depend on which candidates are searched
    np.testing.assert_allclose(cand.current_scores, anywhere.current_scores, rtol=1e-5)
    new, _ = refine_identifiers(rec, texts(), current, cfg.model_copy(update={"min_gain": 0.0}), 0)
    assert len({tuple(r) for r in new}) == len(new)
    moved = ~(new == current).all(axis=1)
    assert moved.any() and not {tuple(c) for c in new[moved]} & held
