"""`model.text_token`: a model whose identifiers are its only item representation reads each
item's text embedding as one fixed input row in its item2id prompts, so what it proposes for
an item's text follows the items of similar text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from components.config import ModelConfig, TrainConfig
from components.model.recommender import GenerativeRecommender
from components.model.training import Trainer, collate
from tests.model.test_item_inputs import N_ITEMS, SIZES, TINY, _codes
from tests.model.test_item_rows_init import _clustered

pytestmark = pytest.mark.usefixtures("one_thread")


def _rec(text_token: bool = True, n_items: int = N_ITEMS, seed: int = 0) -> GenerativeRecommender:
    cfg = ModelConfig(**TINY, item_inputs=False, text_token=text_token)
    texts = ["a film"] * n_items  # one text for all: only the text rows tell items apart
    return GenerativeRecommender.create(cfg, SIZES, texts, seed=seed, n_items=n_items)


def _text_rows(rec: GenerativeRecommender) -> torch.Tensor:
    weight = rec.model.get_input_embeddings().weight.detach()
    return weight[rec.text_row_base : rec.text_row_base + rec.text_rows].clone()


def test_each_item_gets_a_text_row_read_by_its_item2id_prompt_only() -> None:
    rec, plain = _rec(), _rec(text_token=False)
    base = len(rec.tokenizer)
    assert rec.text_rows == N_ITEMS and rec.text_row_base == base
    assert rec.model.get_input_embeddings().weight.shape[0] == base + N_ITEMS
    assert plain.text_rows == 0
    codes = _codes()
    prompts, plain_prompts = rec.prompt_builder(codes), plain.prompt_builder(codes)
    for item in (0, 7):
        with_row = prompts.item2id_prompt("a film", item)
        without = plain_prompts.item2id_prompt("a film")
        assert with_row == without[:1] + [base + item] + without[1:]  # after the bos
        example = prompts.item2id("a film", item)
        assert example.input_ids[: len(with_row)] == with_row
        assert example.labels[len(with_row) :] == prompts.identifier(item)
    with pytest.raises(ValueError, match="which item"):
        prompts.item2id_prompt("a film")
    # histories read identifiers only; a text-task builder for other items has no text rows
    assert prompts.seqrec_prompt(np.arange(3)) == plain_prompts.seqrec_prompt(np.arange(3))
    others = rec.prompt_builder(codes[:2], histories=False)
    assert others.item2id_prompt("a film") == plain_prompts.item2id_prompt("a film")
    with pytest.raises(ValueError, match="text rows"):
        rec.prompt_builder(codes[:5])
    # never a target: the logits stop before the text rows, in training as in decoding
    ids = torch.tensor([prompts.item2id_prompt("a film", 3)])
    for mode in (True, False):
        rec.model.train(mode)
        assert rec.model(input_ids=ids).logits.shape[-1] == base


def test_text_rows_are_the_features_principal_components_and_the_text_alone() -> None:
    rec = _rec()
    weight = rec.model.get_input_embeddings().weight
    before = weight.detach().clone()
    features = _clustered(N_ITEMS)
    rec.init_text_rows(features)
    rows = _text_rows(rec).double()
    torch.testing.assert_close(weight.detach()[: rec.text_row_base], before[: rec.text_row_base])
    x = torch.as_tensor(features, dtype=torch.float64)
    x = x - x.mean(dim=0)
    k = int(torch.linalg.matrix_rank(x))
    assert (rows[:, k:] == 0).all()  # nothing random left in a row
    gram, target = rows @ rows.T, x @ x.T
    scale = (gram * target).sum() / (target * target).sum()
    torch.testing.assert_close(gram, scale * target, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="text rows"):
        _rec(text_token=False).init_text_rows(features)


def _item2id_batches(rec, codes, items, steps: int, batch: int = 8):
    prompts = rec.prompt_builder(codes)
    examples = [prompts.item2id("a film", int(i)) for i in items]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        pick = rng.choice(len(examples), size=min(batch, len(examples)), replace=False)
        yield collate([examples[i] for i in pick], rec.tokenizer.pad_token_id)


def test_training_leaves_the_text_rows_as_they_were_and_they_save_and_load(tmp_path: Path) -> None:
    rec = _rec()
    rec.init_text_rows(_clustered(N_ITEMS))
    start_rows = _text_rows(rec)
    codes_rows = rec.model.get_input_embeddings().weight.detach()[: rec.text_row_base].clone()
    cfg = TrainConfig(lr=1e-2, batch_size=8, weight_decay=0.5)  # decay would shrink them
    trainer = Trainer(rec.model, cfg, steps_per_epoch=20, total_epochs=1, precision="fp32")
    trainer.train_epoch(_item2id_batches(rec, _codes(), range(N_ITEMS), 20))
    torch.testing.assert_close(_text_rows(rec), start_rows, rtol=0, atol=0)
    after = rec.model.get_input_embeddings().weight.detach()[: rec.text_row_base]
    assert not torch.equal(after, codes_rows)  # everything else trained
    rec.save(tmp_path / "model")
    back = GenerativeRecommender.load(tmp_path / "model", device=torch.device("cpu"))
    assert (back.text_rows, back.text_row_base) == (rec.text_rows, rec.text_row_base)
    torch.testing.assert_close(_text_rows(back), start_rows, rtol=0, atol=0)
    rec.model.eval()
    back.model.eval()
    ids = torch.tensor([rec.prompt_builder(_codes()).item2id_prompt("a film", 5)])
    torch.testing.assert_close(back.model(input_ids=ids).logits, rec.model(input_ids=ids).logits)


def _first_code_guess(rec, codes, item: int) -> int:
    rec.model.eval()
    prompt = rec.prompt_builder(codes).item2id_prompt("a film", item)
    with torch.no_grad():
        logits = rec.model(input_ids=torch.tensor([prompt])).logits[0, -1]
    return int(logits[rec.code_token_ids[0]].argmax())


def test_an_unseen_items_text_row_leads_to_the_identifiers_of_items_of_like_text() -> None:
    """Two text clusters, each with its own first code; two items, one per cluster, never in
    training. With text rows the model gives each the first code of its cluster; without them
    their prompts are the same, so the two guesses are too."""
    n = 24
    features = _clustered(n, clusters=2)
    cluster = np.arange(n) % 2
    codes = np.stack([cluster, np.arange(n) // 2 % 4, np.arange(n) // 8], axis=1)
    held = np.array([0, 1])  # one of each cluster
    train_items = np.setdiff1d(np.arange(n), held)
    guesses = {}
    for text_token in (True, False):
        rec = _rec(text_token=text_token, n_items=n)
        if text_token:
            rec.init_text_rows(features)
        cfg = TrainConfig(lr=3e-3, batch_size=8, warmup_ratio=0.0)
        trainer = Trainer(rec.model, cfg, steps_per_epoch=150, total_epochs=1, precision="fp32")
        trainer.train_epoch(_item2id_batches(rec, codes, train_items, 150))
        guesses[text_token] = [_first_code_guess(rec, codes, int(i)) for i in held]
    assert guesses[True] == cluster[held].tolist()
    assert guesses[False][0] == guesses[False][1]


def test_text_token_is_the_tiny_llamas_without_item_rows() -> None:
    for bad in (
        {"item_inputs": True},
        {"item_inputs": False, "architecture": "t5"},
        {"item_inputs": False, "profile": "pretrained"},
    ):
        with pytest.raises(ValidationError, match="model.text_token"):
            ModelConfig(**TINY, text_token=True, **bad)
    with pytest.raises(ValueError, match="model.text_token needs at least one"):
        GenerativeRecommender.create(
            ModelConfig(**TINY, item_inputs=False, text_token=True), SIZES, [], seed=0, n_items=0
        )
