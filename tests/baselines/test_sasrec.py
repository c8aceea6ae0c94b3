"""SASRec learns a sequential pattern, never ranks seen items, and is deterministic under a seed."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from components.baselines.sasrec import (
    SASRecConfig,
    history_tokens,
    recommend_sasrec,
    train_sasrec,
    training_windows,
)
from components.data import Dataset
from components.evaluation import evaluate_ranking, recommend_popular

N_ITEMS = 30
FAST = SASRecConfig(hidden_size=32, dropout=0.1, lr=5e-3, batch_size=32, max_epochs=25, patience=5)


def ring_dataset(n_users: int = 60, seed: int = 0) -> Dataset:
    """Every user walks a ring of items (i -> i + 1): the next item is a function of the last one."""
    rng = np.random.default_rng(seed)
    sequences = [
        (int(rng.integers(N_ITEMS)) + np.arange(int(rng.integers(6, 12)))) % N_ITEMS
        for _ in range(n_users)
    ]
    items = pl.DataFrame(
        {
            "item_idx": np.arange(N_ITEMS, dtype=np.int64),
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "title": [f"item {i}" for i in range(N_ITEMS)],
            "text": [f"item {i}" for i in range(N_ITEMS)],
        }
    )
    return Dataset(items, [f"u{u}" for u in range(n_users)], sequences, max_history=5)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    dataset = ring_dataset()
    return dataset, train_sasrec(dataset, FAST)


def test_training_windows_cover_every_target_once() -> None:
    sequences = [np.arange(12), np.arange(3), np.arange(7)]
    for seed in range(5):
        inputs, targets = training_windows(sequences, 5, np.random.default_rng(seed))
        expected = sorted(t + 1 for s in sequences for t in s[1:].tolist())
        assert sorted(targets[targets > 0].tolist()) == expected
        # a target's input is the item just before it
        rows, cols = np.nonzero(targets)
        assert (inputs[rows, cols] == targets[rows, cols] - 1).all()


def test_learns_the_sequence_and_beats_popularity(trained) -> None:
    dataset, run = trained
    split = dataset.eval_split("test")
    sasrec = evaluate_ranking(recommend_sasrec(run.model, split, 10, exclude_seen=True), split)
    popular = evaluate_ranking(recommend_popular(dataset.popularity(), split, 10, True), split)
    assert sasrec["ndcg@10"] > 0.8
    assert sasrec["ndcg@10"] > popular["ndcg@10"] + 0.4
    assert run.valid["ndcg@10"] == max(e["valid_ndcg@10"] for e in run.epochs)


def test_never_ranks_seen_items(trained) -> None:
    dataset, run = trained
    split = dataset.eval_split("valid")
    ranked = recommend_sasrec(run.model, split, 10, exclude_seen=True)
    for row, seen in enumerate(split.seen):
        assert not set(ranked[row].tolist()) & set(seen.tolist())
        assert len(set(ranked[row].tolist())) == 10  # distinct real items


def test_short_and_empty_histories_stay_finite(trained) -> None:
    _, run = trained
    tokens = history_tokens([np.array([4, 5], dtype=np.int64), np.array([], dtype=np.int64)], 5)
    with torch.no_grad():
        assert torch.isfinite(run.model.eval()(tokens)).all()  # padding is masked as a key


def test_deterministic_under_a_seed() -> None:
    torch.set_num_threads(1)
    dataset = ring_dataset(n_users=20)
    cfg = SASRecConfig(hidden_size=16, batch_size=16, max_epochs=2, patience=2)
    first, second = train_sasrec(dataset, cfg), train_sasrec(dataset, cfg)
    split = dataset.eval_split("test")
    assert [e["loss"] for e in first.epochs] == [e["loss"] for e in second.epochs]
    np.testing.assert_array_equal(
        recommend_sasrec(first.model, split, 10, True),
        recommend_sasrec(second.model, split, 10, True),
    )


def test_hold_out_last_trains_without_each_users_last_training_item(monkeypatch) -> None:
    """SASRecConfig.hold_out_last (the pipeline's train.hold_out_last, passed by the peers
    bench): the windows are built from each training sequence without its last item."""
    import components.baselines.sasrec as sasrec

    seen: list[list[np.ndarray]] = []

    def recording(sequences, max_len, rng):
        seen.append([np.array(s) for s in sequences])
        return training_windows(sequences, max_len, rng)

    monkeypatch.setattr(sasrec, "training_windows", recording)
    torch.set_num_threads(1)
    dataset = ring_dataset(n_users=12)
    cfg = SASRecConfig(hidden_size=16, batch_size=16, max_epochs=1, patience=1)
    train = dataset.train_sequences()
    train_sasrec(dataset, cfg)
    assert [s.tolist() for s in seen[-1]] == [s.tolist() for s in train]
    train_sasrec(dataset, SASRecConfig(**{**cfg.__dict__, "hold_out_last": True}))
    assert [s.tolist() for s in seen[-1]] == [s[:-1].tolist() for s in train]
