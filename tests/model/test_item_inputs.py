"""`model.item_inputs`: a history item reads as its leading codes and a token of its own, the
model still generates identifiers; what refinement changes is only what the model generates
and the leading codes, never an item's own token."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.config import ModelConfig
from components.model.decoding import PrefixTrie, constrained_beam_search
from components.model.head import OutputHead, training_rows
from components.model.prompts import IGNORE
from components.model.recommender import GenerativeRecommender
from components.model.training import _fast_llama, collate, response_loss
from tests.siit.test_warm_start import TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = TINY_MODEL
SIZES = (4, 4, 4)
N_ITEMS = 12


def _codes(seed: int = 0) -> np.ndarray:
    flat = np.random.default_rng(seed).choice(4**3, N_ITEMS, replace=False)
    return np.stack([flat // 16, (flat // 4) % 4, flat % 4], axis=1)


def _rec(
    item_inputs: bool = True, arch: str = "llama", in_head: bool | str = True
) -> GenerativeRecommender:
    cfg = ModelConfig(
        **TINY, item_inputs=item_inputs, architecture=arch, item_inputs_in_head=in_head
    )
    texts = [f"item {i} words" for i in range(N_ITEMS)]
    return GenerativeRecommender.create(cfg, SIZES, texts, seed=0, n_items=N_ITEMS)


def test_every_item_gets_its_own_input_row_past_the_tokenizer() -> None:
    rec, plain = _rec(), _rec(item_inputs=False)
    n_vocab = len(rec.tokenizer)
    assert rec.item_inputs == N_ITEMS and rec.item_input_base == n_vocab
    assert rec.model.get_input_embeddings().weight.shape[0] == n_vocab + N_ITEMS
    assert plain.item_inputs == 0
    assert plain.model.get_input_embeddings().weight.shape[0] == n_vocab
    codes = _codes()
    inputs, ids = rec.input_tokens(codes), rec.item_tokens(codes)
    np.testing.assert_array_equal(inputs[:, :-1], ids[:, :-1])  # the leading codes
    np.testing.assert_array_equal(inputs[:, -1], n_vocab + np.arange(N_ITEMS))
    np.testing.assert_array_equal(plain.input_tokens(codes), plain.item_tokens(codes))
    with pytest.raises(ValueError, match="12"):
        rec.input_tokens(codes[:5])


def test_a_window_reads_item_tokens_and_is_taught_identifiers() -> None:
    rec, codes = _rec(), _codes()
    prompts = rec.prompt_builder(codes)
    window = np.array([3, 7, 1, 5])
    ex = prompts.seqrec_window(window, min_history=1)
    n_prefix = len(ex.input_ids) - 3 * len(window)
    body = np.array(ex.input_ids[n_prefix:]).reshape(len(window), 3)
    np.testing.assert_array_equal(body, rec.input_tokens(codes)[window])
    labels = np.array(ex.labels[n_prefix:]).reshape(len(window), 3)
    assert (labels[0] == IGNORE).all()
    np.testing.assert_array_equal(labels[1:], rec.item_tokens(codes)[window[1:]])
    assert (np.array(ex.labels[:n_prefix]) == IGNORE).all()
    # the item's own token is never a target: it is the input in place of the last code
    assert not np.isin(labels, rec.item_input_base + np.arange(N_ITEMS)).any()


def test_a_new_map_changes_the_codes_of_a_history_not_its_item_tokens() -> None:
    rec = _rec()
    old, new = _codes(0), _codes(1)
    history = np.array([2, 9, 4])
    a = np.array(rec.prompt_builder(old).seqrec_prompt(history))
    b = np.array(rec.prompt_builder(new).seqrec_prompt(history))
    own = rec.item_input_base + history
    np.testing.assert_array_equal(a[-9:].reshape(3, 3)[:, -1], own)
    np.testing.assert_array_equal(b[-9:].reshape(3, 3)[:, -1], own)
    assert (a != b).any()  # the leading codes did move
    # a builder for the text tasks only (e.g. a few new items' placeholder identifiers) has
    # no item tokens to read a history with, and says so instead of writing identifiers
    text_only = rec.prompt_builder(old[:3], histories=False)
    with pytest.raises(ValueError, match="text tasks only"):
        text_only.seqrec_prompt(history)


@pytest.mark.parametrize("in_head", [True, False, "training"])
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_decoding_ranks_every_item_exactly_after_item_token_prompts(
    arch: str, in_head: bool | str
) -> None:
    """A wide beam is exact: its top-k is the brute-force ranking of every identifier after a
    prompt holding item tokens (the shared-prompt path reads the item rows as any token),
    whether the item rows are in the decoding softmax or not."""
    rec, codes = _rec(arch=arch, in_head=in_head), _codes()
    rec.model.eval()
    prompt = rec.prompt_builder(codes).seqrec_prompt(np.array([0, 5, 11]))
    trie = PrefixTrie.from_codes(codes, SIZES)
    res = constrained_beam_search(
        rec.model, [prompt], rec.code_token_ids, trie, beam_size=N_ITEMS, top_k=5
    )
    ids = torch.as_tensor(rec.item_tokens(codes))
    scores = []
    with torch.no_grad():
        for row in ids:
            if arch == "t5":
                start = torch.tensor([[rec.model.config.decoder_start_token_id]])
                logits = rec.model(
                    input_ids=torch.tensor([prompt]),
                    decoder_input_ids=torch.cat([start, row[None, :-1]], 1),
                ).logits[0]
            else:
                seq = torch.cat([torch.tensor(prompt), row])[None]
                logits = rec.model(input_ids=seq).logits[0, len(prompt) - 1 : len(prompt) + 2]
            scores.append(
                float(torch.log_softmax(logits.float(), -1).gather(1, row[:, None]).sum())
            )
    expected = np.argsort(-np.array(scores), kind="stable")[:5]
    assert res.leaves[0].tolist() == expected.tolist()
    np.testing.assert_allclose(res.scores[0].numpy(), np.array(scores)[expected], atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_item_rows_are_outside_the_output_softmax(arch: str) -> None:
    """`item_inputs_in_head: false`: the head stops at the tokenizer's vocabulary, logits
    [.., item_input_base], the same tied weight, in training and evaluation; `true`'s head
    covers the rows too."""
    rec, legacy = _rec(arch=arch, in_head=False), _rec(arch=arch)
    base, vocab = rec.item_input_base, rec.item_input_base + N_ITEMS
    prompt = torch.tensor([rec.prompt_builder(_codes()).seqrec_prompt(np.array([1, 4]))])
    kw = {"decoder_input_ids": prompt[:, :2]} if arch == "t5" else {}
    for mode in (True, False):
        rec.model.train(mode)
        legacy.model.train(mode)
        with torch.no_grad():
            assert rec.model(input_ids=prompt, **kw).logits.shape[-1] == base
            assert legacy.model(input_ids=prompt, **kw).logits.shape[-1] == vocab
    head = rec.model.get_output_embeddings()
    assert isinstance(head, OutputHead) and head.size == base
    assert head.weight is rec.model.get_input_embeddings().weight  # still tied
    assert type(legacy.model.get_output_embeddings()) is torch.nn.Linear
    assert [n for n, _ in rec.model.named_parameters()] == [
        n for n, _ in legacy.model.named_parameters()
    ]


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_item_rows_in_the_training_softmax_only(arch: str) -> None:
    """`item_inputs_in_head: training` (the default): in training mode the logits are `true`'s,
    item rows and all; in evaluation mode (every decoding path) they stop at the tokenizer's
    vocabulary: `true`'s logits without the item rows. `training_rows` gives a loss in
    evaluation mode the training's softmax back."""
    assert ModelConfig().item_inputs_in_head == "training"
    split, full = _rec(arch=arch, in_head="training"), _rec(arch=arch)
    base, vocab = split.item_input_base, split.item_input_base + N_ITEMS
    head = split.model.get_output_embeddings()
    assert isinstance(head, OutputHead) and (head.size, head.training_size) == (base, None)
    assert head.weight is split.model.get_input_embeddings().weight  # still tied
    prompt = torch.tensor([split.prompt_builder(_codes()).seqrec_prompt(np.array([1, 4]))])
    kw = {"decoder_input_ids": prompt[:, :2]} if arch == "t5" else {}
    with torch.no_grad():
        split.model.eval(), full.model.eval()  # dropout off: the same numbers both ways
        reference = full.model(input_ids=prompt, **kw).logits
        decoding = split.model(input_ids=prompt, **kw).logits
        torch.testing.assert_close(decoding, reference[..., :base])
        with training_rows(split.model):
            torch.testing.assert_close(split.model(input_ids=prompt, **kw).logits, reference)
        assert split.model(input_ids=prompt, **kw).logits.shape[-1] == base  # restored
        split.model.train()
        assert split.model(input_ids=prompt, **kw).logits.shape[-1] == vocab
    if arch == "llama":  # the CPU training path computes `true`'s loss
        codes, window = _codes(), np.array([3, 7, 1, 5])
        batch = collate([split.prompt_builder(codes).seqrec_window(window, 1)], pad_id=0)
        split.model.train(), full.model.train()
        assert _fast_llama(split.model, torch.device("cpu"))
        losses = []
        for model in (split.model, full.model):
            torch.manual_seed(0)  # the same dropout
            losses.append(response_loss(model, batch))
        torch.testing.assert_close(*losses)


def test_training_gives_no_item_row_a_gradient_as_a_negative() -> None:
    """An item's row learns only where the item is read: the loss of a window without it leaves
    its row untouched (the head over all rows, as before, pushes every row down as a negative).
    The CPU training path computes the loss the model's own forward does."""
    codes, window = _codes(), np.array([3, 7, 1, 5])
    absent = np.setdiff1d(np.arange(N_ITEMS), window)
    for in_head in (False, True):
        rec = _rec(in_head=in_head)
        batch = collate([rec.prompt_builder(codes).seqrec_window(window, 1)], pad_id=0)
        assert _fast_llama(rec.model, torch.device("cpu"))
        rec.model.eval()
        loss = response_loss(rec.model, batch)
        with torch.no_grad():
            logits = rec.model(input_ids=batch.input_ids).logits[0, :-1]
        targets = batch.labels[0, 1:]
        keep = targets != IGNORE
        torch.testing.assert_close(loss, F.cross_entropy(logits[keep], targets[keep]))
        (grad,) = torch.autograd.grad(loss, [rec.model.get_input_embeddings().weight])
        rows = grad[rec.item_input_base :].abs().sum(1)
        # read before a target of the window: learned either way
        assert (rows[window[:-1]] > 0).all()
        if in_head:  # every other row is a negative of every target
            assert (rows[absent] > 0).all()
        else:  # only the rows read before a target (the last item's predicts nothing)
            assert rows.nonzero().flatten().tolist() == sorted(window[:-1].tolist())


@pytest.mark.parametrize("in_head", [False, "training"])
def test_saved_and_loaded_with_its_item_rows(tmp_path: Path, in_head: bool | str) -> None:
    rec, codes = _rec(in_head=in_head), _codes()
    rec.save(tmp_path / "model")
    back = GenerativeRecommender.load(tmp_path / "model", device=torch.device("cpu"))
    assert (back.item_inputs, back.item_input_base) == (rec.item_inputs, rec.item_input_base)
    np.testing.assert_array_equal(back.input_tokens(codes), rec.input_tokens(codes))
    torch.testing.assert_close(
        back.model.get_input_embeddings().weight, rec.model.get_input_embeddings().weight
    )
    assert back.item_inputs_in_head == in_head
    head = back.model.get_output_embeddings()
    assert head.size == rec.item_input_base
    assert head.training_size == (None if in_head == "training" else rec.item_input_base)
    assert back.model.get_output_embeddings().weight is back.model.get_input_embeddings().weight
    # a model saved before the setting existed loads with the head it was trained with
    meta = tmp_path / "model" / "siit_model.json"
    old = json.loads(meta.read_text())
    del old["item_inputs_in_head"]
    meta.write_text(json.dumps(old))
    legacy = GenerativeRecommender.load(tmp_path / "model", device=torch.device("cpu"))
    assert legacy.item_inputs_in_head is True
    assert type(legacy.model.get_output_embeddings()) is torch.nn.Linear


def test_an_unknown_head_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="item_inputs_in_head"):
        ModelConfig(**TINY, item_inputs_in_head="decoding")
    rec = _rec()
    with pytest.raises(ValueError, match="true, false or 'training'"):
        GenerativeRecommender(
            rec.model,
            rec.tokenizer,
            SIZES,
            item_inputs=N_ITEMS,
            item_input_base=rec.item_input_base,
            item_inputs_in_head="decoding",
        )


def test_item_inputs_need_a_catalogue_and_are_the_tiny_profiles() -> None:
    with pytest.raises(ValueError, match="n_items"):
        GenerativeRecommender.create(
            ModelConfig(**TINY, item_inputs=True), SIZES, ["a"], seed=0, n_items=0
        )
    one_per_text = GenerativeRecommender.create(ModelConfig(**TINY), SIZES, ["a b", "c d"], seed=0)
    assert one_per_text.item_inputs == 2  # params.yaml's default, one item per text
    # the pretrained profile reads histories as identifiers, like its other tiny-only settings
    assert ModelConfig(profile="pretrained").item_inputs
