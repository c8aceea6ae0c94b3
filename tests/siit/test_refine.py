"""Refinement on a tiny real model: well-formed, collision-free, diversity-aware."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from components.config import ModelConfig, SiitConfig
from components.model.recommender import GenerativeRecommender
from components.siit.refine import (
    Candidates,
    PrefixLoad,
    background_histories,
    held_out_contexts,
    load_penalty,
    propose_identifiers,
    refine_identifiers,
    training_contexts,
)

SIZES = (4, 4, 4)


@pytest.fixture(scope="module")
def rec() -> GenerativeRecommender:
    cfg = ModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, text_vocab_size=200
    )
    texts = [f"item {i} colour {'red' if i % 2 else 'blue'}" for i in range(24)]
    return GenerativeRecommender.create(cfg, SIZES, texts, seed=0)


def texts() -> list[str]:
    return [f"item {i} colour {'red' if i % 2 else 'blue'}" for i in range(24)]


def current_codes() -> np.ndarray:
    flat = np.random.default_rng(0).choice(64, 24, replace=False)
    return np.stack([flat // 16, (flat // 4) % 4, flat % 4], axis=1)


def test_load_penalty() -> None:
    usage = np.array([0.0, 1.0, 3.0, 0.0])
    assert (load_penalty(usage, 4, 0.0) == 0).all()
    p = load_penalty(usage, 4, 1.0)
    assert p[0] == 0 and p[3] == 0 and p[2] < p[1] < 0


def test_refined_map_is_a_bijection_over_well_formed_identifiers(
    rec: GenerativeRecommender,
) -> None:
    cfg = SiitConfig(candidates=5, beam_size=8, batch_size=8)
    new, stats = refine_identifiers(rec, texts(), current_codes(), cfg, seed=0)
    assert new.shape == (24, 3)
    assert len({tuple(r) for r in new}) == 24
    assert ((new >= 0) & (new < 4)).all()
    assert 0.0 <= stats["churn"] <= 1.0 and 0.0 <= stats["collision_rate_before"] <= 1.0
    again, _ = refine_identifiers(rec, texts(), current_codes(), cfg, seed=0)
    assert (again == new).all()  # deterministic


def test_diversity_penalty_spreads_first_level_codes(rec: GenerativeRecommender) -> None:
    plain = propose_identifiers(
        rec, texts(), current_codes(), SiitConfig(candidates=3, diversity=0.0, batch_size=4), 0
    )
    spread = propose_identifiers(
        rec, texts(), current_codes(), SiitConfig(candidates=3, diversity=50.0, batch_size=4), 0
    )
    used_plain = len(set(plain.codes[:, 0, 0]))
    used_spread = len(set(spread.codes[:, 0, 0]))
    assert used_spread > used_plain
    # scores are the model's log-probabilities, without the penalty
    assert (spread.scores[:, 0] <= 0).all()


def test_prefix_load_counts_and_penalises_within_a_prefix() -> None:
    load = PrefixLoad((4, 4, 4), 1.0)
    first = torch.zeros((1, 1, 0), dtype=torch.long)
    assert (load.bias(0, first) == 0).all()  # nothing placed yet
    load.add(np.array([[0, 1, 2], [0, 1, 3], [0, 2, 0], [3, 0, 0]]))
    # the first level is the per-level penalty
    usage = np.array([3.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(load.bias(0, first)[0, 0].numpy(), load_penalty(usage, 4, 1.0))
    # under prefix 0, code 1 holds 2 of its 3 items (an even share is 3/4), code 2 one
    under_0 = load.bias(1, torch.tensor([[[0], [1]]])).numpy()
    np.testing.assert_allclose(under_0[0, 0], -np.log1p(np.array([0, 2, 1, 0]) / 0.75), rtol=1e-6)
    assert (under_0[0, 1] == 0).all()  # prefix 1 is empty: no penalty
    # the last level penalises identifiers already taken under the same two-level prefix
    last = load.bias(2, torch.tensor([[[0, 1]]])).numpy()[0, 0]
    assert last[0] == 0 and last[1] == 0 and last[2] < 0 and last[2] == last[3]
    assert load.count(2, np.array([0 * 4 + 1, 3 * 4 + 0, 1 * 4 + 1])).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="too large"):
        PrefixLoad((2**21,) * 3, 1.0)


def test_prefix_scope_spreads_items_over_two_level_prefixes(rec: GenerativeRecommender) -> None:
    """The per-level penalty balances each level's codes; the prefix one balances the
    children of each prefix, so more distinct two-level prefixes are used."""

    def prefixes(scope: str) -> int:
        cfg = SiitConfig(
            candidates=3, diversity=50.0, diversity_scope=scope, batch_size=4, fixed_levels=1
        )
        cand = propose_identifiers(rec, texts(), crowded, cfg, 0)
        assert (cand.codes[:, :, 0] == crowded[:, None, 0]).all()  # the fixed level is kept
        return len({tuple(c) for c in cand.codes[:, 0, :2]})

    crowded = current_codes()
    crowded[:, 0] = np.arange(24) % 2  # two first-level codes, twelve items under each
    level, prefix = prefixes("level"), prefixes("prefix")
    assert prefix > level
    assert prefix == 8  # 2 prefixes x 4 children, every one of them in use


def test_a_balanced_assignment_takes_the_configured_diversity(monkeypatch) -> None:
    """refine_identifiers hands siit.diversity to the balanced assignment: items whose
    favourites all share a first-level code spread over the others, and with no diversity
    they crowd as the greedy assignment lets them."""
    n = 8
    current = np.stack([np.full(n, 3), np.arange(n), np.zeros(n, dtype=np.int64)], axis=1)
    codes = np.stack([[(0, i, 0), (1 + i % 2, i, 0)] for i in range(n)])
    cand = Candidates(codes, np.tile([-0.1, -0.3], (n, 1)), np.full(n, -5.0))
    monkeypatch.setattr("components.siit.refine.propose_identifiers", lambda *args, **kwargs: cand)
    fake = SimpleNamespace(codebook_sizes=(4, 8, 4))

    def first_codes(**kw) -> list[int]:
        cfg = SiitConfig(assignment="balanced", min_gain=0.0, **kw)
        new, _ = refine_identifiers(fake, [""] * n, current, cfg, seed=0)
        assert len({tuple(r) for r in new}) == n
        return np.bincount(new[:, 0], minlength=4).tolist()

    assert first_codes(diversity=1.0) == [3, 2, 3, 0]
    assert first_codes(diversity=0.0) == [8, 0, 0, 0]


class _Rows:
    """The toy model's cache: the tokens of every row so far."""

    def __init__(self, rows: list[list[int]]) -> None:
        self.rows = rows

    def batch_repeat_interleave(self, n: int) -> None:
        self.rows = [list(r) for r in self.rows for _ in range(n)]

    def reorder_cache(self, index: torch.Tensor) -> None:
        self.rows = [list(self.rows[i]) for i in index.tolist()]


class _NextIdentifierOfPrevious(torch.nn.Module):
    """A causal LM whose predictions are known: after the identifier of item j it writes the
    identifier `table[j]` (log-probability ~0 per code), whatever came before. With `popular`,
    every history prefers that identifier (logit 21 against 20 per code): a popular item."""

    def __init__(
        self,
        rec: GenerativeRecommender,
        codes: np.ndarray,
        table: np.ndarray,
        popular: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.popular = popular
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(rec.tokenizer)
        self.level_of = {
            int(t): (lvl, c)
            for lvl, ids in enumerate(rec.code_token_ids)
            for c, t in enumerate(ids)
        }
        self.code_ids = rec.code_token_ids
        self.item_of = {tuple(c): i for i, c in enumerate(codes.tolist())}
        self.table = table

    def _logits(self, seq: list[int]) -> torch.Tensor:
        out = torch.zeros(self.vocab)
        trail = []
        for tok in reversed(seq):
            if tok not in self.level_of:
                break
            trail.append(self.level_of[tok])
        trail.reverse()
        levels = len(self.code_ids)
        last_ends = [i for i, (lvl, _) in enumerate(trail) if lvl == levels - 1]
        if not last_ends:
            return out
        end = last_ends[-1]
        m = len(trail) - end - 1
        previous = tuple(c for _, c in trail[end - levels + 1 : end + 1])
        item = self.item_of.get(previous)
        if item is None or end - levels + 1 < 0:
            return out
        out[self.code_ids[m][int(self.table[item][m])]] = 20.0
        if self.popular is not None:
            out[self.code_ids[m][int(self.popular[m])]] = 21.0
        return out

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        use_cache=False,
        logits_to_keep=0,
        past_key_values=None,
    ):
        if past_key_values is not None:
            for row, tok in zip(past_key_values.rows, input_ids[:, -1].tolist(), strict=True):
                row.append(tok)
            cache = past_key_values
        else:
            cache = _Rows([list(r) for r in input_ids.tolist()])
        seqs = cache.rows
        width = input_ids.shape[1] if logits_to_keep != 1 else 1
        logits = torch.stack(
            [
                torch.stack([self._logits(s[: len(s) - width + 1 + t]) for t in range(width)])
                for s in seqs
            ]
        )
        return SimpleNamespace(logits=logits, past_key_values=cache)


def test_context_signal_gives_each_item_what_the_model_predicts_for_its_contexts(
    rec: GenerativeRecommender,
) -> None:
    current = current_codes()
    rng = np.random.default_rng(1)
    flat = rng.choice(64, 24, replace=False)
    desired = np.stack([flat // 16, (flat // 4) % 4, flat % 4], axis=1)
    # every item i is preceded only by item i - 1 in training, so the model's view of item i is
    # what it predicts after item i - 1: desired[i]
    table = desired[(np.arange(24) + 1) % 24]
    toy = GenerativeRecommender(
        _NextIdentifierOfPrevious(rec, current, table), rec.tokenizer, SIZES
    )
    train = [np.array([k, (k + 1) % 24]) for k in range(24)]
    contexts = training_contexts(train, 24, max_history=5, per_item=4, seed=0)
    assert [len(c) for c in contexts] == [1] * 24
    assert all(c[0].tolist() == [(i - 1) % 24] for i, c in enumerate(contexts))
    cfg = SiitConfig(signal="context", diversity=0.0, candidates=3, beam_size=4, batch_size=5)
    new, stats = refine_identifiers(toy, texts(), current, cfg, seed=0, contexts=contexts)
    assert (new == desired).all()
    assert len({tuple(r) for r in new}) == 24
    assert stats["items_with_context"] == 1.0
    # an item never seen in training falls back to its text prompt, where this toy model knows
    # nothing (uniform over the vocabulary)
    contexts[3] = []
    cand = propose_identifiers(toy, texts(), current, cfg, seed=0, contexts=contexts)
    uniform = -3 * np.log(len(rec.tokenizer))
    np.testing.assert_allclose(cand.scores[3], uniform, rtol=1e-5)
    np.testing.assert_allclose(cand.current_scores[3], uniform, rtol=1e-5)
    assert (cand.scores[np.arange(24) != 3, 0] > -1e-3).all()


def test_training_contexts_use_the_most_recent_history_and_at_most_per_item() -> None:
    train = [np.array([0, 1, 2, 3, 1]), np.array([4, 1]), np.array([2, 1])]
    contexts = training_contexts(train, 5, max_history=2, per_item=2, seed=0)
    assert len(contexts[1]) == 2
    for ctx in contexts[1]:
        assert len(ctx) <= 2
    assert {tuple(c) for c in contexts[1]} <= {(0,), (2, 3), (4,), (2,)}
    assert contexts[0] == []
    assert [c.tolist() for c in contexts[3]] == [[1, 2]]


def test_held_out_contexts_are_the_histories_the_model_did_not_train_on() -> None:
    """Only the positions after each user's trained part count, with their whole history (the
    trained items before them included, up to max_history)."""
    whole = [np.array([0, 1, 2, 3, 1]), np.array([4, 1]), np.array([2]), np.array([3, 4, 0])]
    trained = [seq[: max(len(seq) - 2, 0)] for seq in whole]  # hold_out_last: 2
    contexts = held_out_contexts(whole, trained, 5, max_history=2, per_item=4, seed=0)
    as_lists = [sorted(c.tolist() for c in ctx) for ctx in contexts]
    # user 0: 3 after [1, 2], 1 after [2, 3]; user 1: its first item has no history, 1 after
    # [4]; user 2: nothing; user 3: 4 after [3], 0 after [3, 4]
    assert as_lists == [[[3, 4]], [[2, 3], [4]], [], [[1, 2]], [[3]]]
    # a position the model trained on never counts: the whole sequences' own contexts differ
    every = training_contexts(whole, 5, max_history=2, per_item=4, seed=0)
    assert sorted(c.tolist() for c in every[1]) == [[0], [2, 3], [4]]


def test_background_histories_remove_what_every_history_predicts(
    rec: GenerativeRecommender,
) -> None:
    """Every history prefers one popular identifier; the item's own histories also predict its
    desired identifier. The plain context score gives everyone the popular one (a collision the
    assignment resolves by keeping the current map); measured against background histories
    (pointwise mutual information), each item gets what its own histories predict."""
    current = current_codes()
    flat = np.random.default_rng(1).choice(64, 25, replace=False)
    desired = np.stack([flat // 16, (flat // 4) % 4, flat % 4], axis=1)
    popular, desired = desired[24], desired[:24]
    table = desired[(np.arange(24) + 1) % 24]
    toy = GenerativeRecommender(
        _NextIdentifierOfPrevious(rec, current, table, popular=popular), rec.tokenizer, SIZES
    )
    train = [np.array([k, (k + 1) % 24]) for k in range(24)]
    contexts = training_contexts(train, 24, max_history=5, per_item=4, seed=0)
    cfg = SiitConfig(signal="context", diversity=0.0, candidates=3, beam_size=4, batch_size=5)

    plain, stats = refine_identifiers(toy, texts(), current, cfg, seed=0, contexts=contexts)
    assert stats["collision_rate_before"] == 1.0  # every item's favourite: the popular one
    assert (plain != desired).any(axis=1).sum() >= 23

    background = background_histories(train, max_history=5, count=6, seed=0)
    assert len(background) == 6 and all(len(h) == 1 for h in background)
    again = background_histories(train, max_history=5, count=6, seed=0)
    assert [h.tolist() for h in again] == [h.tolist() for h in background]  # seeded
    cfg = cfg.model_copy(update={"background_contexts": 6})
    new, stats = refine_identifiers(
        toy, texts(), current, cfg, seed=0, contexts=contexts, background=background
    )
    assert (new == desired).all()
    assert stats["collision_rate_before"] == 0.0
    # the score is log p(z | own histories) - mean log p(z | background): its current score too
    cand = propose_identifiers(toy, texts(), current, cfg, 0, contexts, background)
    assert (cand.scores[:, 0] > 10).all()  # the background gives the desired codes ~e^-20 each
    # background_weight 0 subtracts nothing: the plain context score again
    cfg = cfg.model_copy(update={"background_weight": 0.0})
    unweighted = propose_identifiers(toy, texts(), current, cfg, 0, contexts, background)
    plain_cand = propose_identifiers(toy, texts(), current, cfg, 0, contexts)
    np.testing.assert_allclose(unweighted.scores, plain_cand.scores, atol=1e-5)
    assert (unweighted.codes == plain_cand.codes).all()


def test_background_histories_cover_training_positions_only() -> None:
    train = [np.array([0, 1, 2, 3]), np.array([4]), np.array([5, 6])]
    drawn = background_histories(train, max_history=2, count=10, seed=3)
    assert len(drawn) == 4  # every (user, next-item position) once: 3 + 0 + 1
    assert {tuple(h) for h in drawn} == {(0,), (0, 1), (1, 2), (5,)}
    assert background_histories(train, max_history=2, count=0, seed=3) == []
