"""Fair evaluation: the target is never masked, training contexts match evaluation's, and the
exported recommendations are enough to recompute the metrics."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from components.data import Dataset
from components.evaluation import (
    evaluate_ranking,
    metrics_from_recommendations,
    recommendations_frame,
)
from components.model.prompts import IGNORE, PromptBuilder
from components.model.training import seqrec_examples


def _dataset(sequences: list[list[int]], n_items: int = 6, max_history: int = 3) -> Dataset:
    items = pl.DataFrame(
        {
            "item_idx": np.arange(n_items, dtype=np.int64),
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"t{i}" for i in range(n_items)],
            "text": [f"x{i}" for i in range(n_items)],
        }
    )
    return Dataset(
        items=items,
        user_ids=[f"u{u}" for u in range(len(sequences))],
        sequences=[np.asarray(s, dtype=np.int64) for s in sequences],
        max_history=max_history,
    )


def test_a_target_consumed_before_is_not_masked_as_seen() -> None:
    ds = _dataset([[0, 1, 2, 1], [3, 4, 5, 3, 0]])
    test = ds.eval_split("test")
    assert test.targets.tolist() == [1, 0]
    assert test.seen[0].tolist() == [0, 2]  # 1 was consumed before, but it is the target
    assert test.seen[1].tolist() == [3, 4, 5]
    valid = ds.eval_split("valid")
    assert valid.targets.tolist() == [2, 3]
    assert valid.seen[1].tolist() == [4, 5]  # 3 was seen before the validation target


class _Ids:
    """A stand-in tokenizer: no text, so a prompt is its identifiers only."""

    bos_token_id = None
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": []}


@pytest.mark.parametrize("stride", [0, 1, "max"])
@pytest.mark.parametrize("max_history", [1, 2, 5, 20])
def test_every_training_target_once_with_at_most_max_history_context(
    max_history: int, stride
) -> None:
    stride = max_history if stride == "max" else stride
    rng = np.random.default_rng(max_history)
    sequences = [rng.integers(0, 50, size=n) for n in (2, 3, 7, 21, 22, 60, 101)]
    tokens = np.arange(50)[:, None] + 1  # one-level identifiers: item i is token i + 1
    examples = seqrec_examples(PromptBuilder(_Ids(), tokens), sequences, max_history, stride=stride)
    seen_targets, contexts = [], []
    for ex in examples:
        labelled = [i for i, label in enumerate(ex.labels) if label != IGNORE]
        assert len(ex.input_ids) <= max_history + 1
        for pos in labelled:
            context = pos  # items before the target in this window
            assert 1 <= context <= max_history
            seen_targets.append(ex.labels[pos] - 1)
            contexts.append(context)
    expected = [int(x) for s in sequences for x in s[1:]]
    assert sorted(seen_targets) == sorted(expected)
    # later windows train their last `stride` items: those targets see at least
    # max_history - stride + 1 items (half a history by default)
    effective = stride or max(1, (max_history + 1) // 2)
    prompts = PromptBuilder(_Ids(), tokens)
    later = [
        ex
        for seq in sequences
        for ex in seqrec_examples(prompts, [seq], max_history, stride=stride)[1:]
    ]
    assert later
    for ex in later:
        first = next(i for i, label in enumerate(ex.labels) if label != IGNORE)
        assert first >= max_history - effective + 1
        assert sum(label != IGNORE for label in ex.labels) <= effective


def test_a_full_history_stride_costs_about_one_item_per_target() -> None:
    sequences = [np.arange(n) % 50 for n in (60, 101, 200)]
    tokens = np.arange(50)[:, None] + 1
    prompts = PromptBuilder(_Ids(), tokens)
    n_targets = sum(n - 1 for n in (60, 101, 200))
    half = sum(len(e.input_ids) for e in seqrec_examples(prompts, sequences, 20))
    full = sum(len(e.input_ids) for e in seqrec_examples(prompts, sequences, 20, stride=20))
    assert full < 1.1 * n_targets < 0.6 * half
    with pytest.raises(ValueError, match="stride"):
        seqrec_examples(prompts, sequences, 20, stride=21)


def test_metrics_recompute_from_the_exported_recommendations() -> None:
    ds = _dataset([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]])
    test = ds.eval_split("test")
    ranked = np.full((3, 10), -1)
    ranked[0, :5] = [3, 0, 1, 2, 5]  # hit at rank 1
    ranked[1, :3] = [5, 0, 4]  # hit at rank 3, short list
    ranked[2, :5] = [0, 1, 2, 3, 4]  # miss
    frame = recommendations_frame("m", test, ranked, ds.item_ids())
    user1 = frame.filter(pl.col("user_id") == "u1")
    assert user1.get_column("target_item_id").to_list() == ["i4"] * 3
    recomputed = metrics_from_recommendations(frame, top_k=10)["m"]
    assert recomputed == pytest.approx(evaluate_ranking(ranked, test))
    assert recomputed["recall@5"] == pytest.approx(2 / 3)
