"""`train.item_loss`: SASRec's next-item cross-entropy over the item rows, trained beside the
identifier tokens' loss on the same hidden states; decoding still generates identifiers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.config import Params, TrainConfig
from components.model.head import item_rows
from components.model.prompts import IGNORE
from components.model.training import (
    Trainer,
    _fast_llama,
    collate,
    next_item_positions,
    response_loss,
)
from tests.model.test_item_inputs import _codes, _rec

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOWS = [np.array([3, 7, 1, 5]), np.array([0, 2, 11]), np.array([9, 4, 6, 8, 10])]


def _batch(rec, with_text: bool = True):
    prompts = rec.prompt_builder(_codes())
    rows = [prompts.seqrec_window(w, min_history=1) for w in WINDOWS]
    if with_text:  # an item2id row: labelled, but no item begins there
        rows.append(prompts.item2id("item 3 words", 3))
    return collate(rows, rec.tokenizer.pad_token_id or 0)


def test_the_positions_that_begin_a_target_item_and_their_items() -> None:
    rec = _rec()
    batch = _batch(rec)
    selected = batch.labels[:, 1:] != IGNORE
    at, items = next_item_positions(batch.input_ids, selected, item_rows(rec.model))
    # every window's targets (all items after the first), in order, and nothing else
    np.testing.assert_array_equal(items.numpy(), np.concatenate([w[1:] for w in WINDOWS]))
    assert not at[len(WINDOWS) :].any()  # the text task's row
    first = set(rec.item_tokens(_codes())[:, 0].tolist())
    predicted = batch.labels[:, 1:][at]  # the token each position predicts: a first code
    assert set(predicted.tolist()) <= first
    assert int(at.sum()) == sum(len(w) - 1 for w in WINDOWS)


def _reference_item_loss(rec, batch) -> torch.Tensor:
    """The model's own forward: hidden states, logits against every item's input embedding."""
    hidden = rec.model.model(input_ids=batch.input_ids).last_hidden_state[:, :-1]
    rows = item_rows(rec.model)
    items = rec.model.get_input_embeddings().weight[rows.base : rows.base + rows.count]
    total = torch.zeros(())
    n = 0
    for b, window in enumerate(WINDOWS):
        first_label = int((batch.labels[b] != IGNORE).nonzero()[0])
        prefix = first_label - 3  # the prompt before the window's first item
        for t, item in enumerate(window[1:]):
            pos = prefix + 3 * (t + 1) - 1  # the last token of the item before
            total = total + F.cross_entropy(hidden[b, pos] @ items.T, torch.tensor(item))
            n += 1
    assert n == sum(len(w) - 1 for w in WINDOWS)
    return total


@pytest.mark.parametrize("in_head", [True, "training", False])
def test_the_loss_adds_the_weighted_item_cross_entropy(in_head: bool | str) -> None:
    rec = _rec(in_head=in_head)
    rec.model.eval()  # no dropout: the two computations see the same network
    batch = _batch(rec)
    assert _fast_llama(rec.model, torch.device("cpu"))
    n_labels = int((batch.labels[:, 1:] != IGNORE).sum())
    with torch.no_grad():
        plain = response_loss(rec.model, batch)
        weighted = response_loss(rec.model, batch, item_weight=0.5)
        reference = _reference_item_loss(rec, batch)
        # the per-row loss (the immediate effect's) is the identifiers' alone
        rows = response_loss(rec.model, batch, per_row=True, item_weight=0.5)
    torch.testing.assert_close(weighted - plain, 0.5 * reference / n_labels, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rows.sum() / n_labels, plain, rtol=1e-5, atol=1e-6)


def test_training_on_it_ranks_the_next_item_higher() -> None:
    rec = _rec()
    batch = _batch(rec, with_text=False)
    cfg = TrainConfig(lr=0.01, warmup_ratio=0.0, item_loss=1.0)
    trainer = Trainer(rec.model, cfg, steps_per_epoch=30, total_epochs=1, precision="fp32")

    def item_ce() -> float:
        rec.model.eval()
        with torch.no_grad():
            return float(_reference_item_loss(rec, batch))

    before = item_ce()
    torch.manual_seed(0)
    trainer.train_epoch(iter([batch] * 30))
    assert item_ce() < 0.5 * before


def test_models_without_item_rows_to_score_ignore_it() -> None:
    """The defaults train with it; T5 and models without item inputs train without it (as
    they ignore model.residual_dropout), while a direct call asking for it is refused."""
    assert TrainConfig().item_loss > 0
    Params.model_validate({"model": {"item_inputs": False}})
    Params.model_validate({"model": {"architecture": "t5"}})
    for rec in (_rec(item_inputs=False), _rec(arch="t5")):
        trainer = Trainer(rec.model, TrainConfig(item_loss=1.0), steps_per_epoch=1, total_epochs=1)
        assert trainer._loss.item_weight == 0.0
        with pytest.raises(ValueError, match="train.item_loss"):
            response_loss(rec.model, _batch(rec), item_weight=1.0)
    assert Trainer(_rec().model, TrainConfig(), 1, 1)._loss.item_weight == TrainConfig().item_loss
