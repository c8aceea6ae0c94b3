"""The T5 encoder-decoder (`model.architecture: t5`): it trains on prompt -> response, scores
identifiers for refinement, and saves and loads as itself. Its trie-constrained beam search is
tested with the Llama's, in test_decoding.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import T5ForConditionalGeneration

from components.config import ConfigError, ModelConfig, SiitConfig, TrainConfig, load_params
from components.model import attention
from components.model.decoding import PrefixTrie, constrained_beam_search, sequence_log_probs
from components.model.prompts import IGNORE, Example
from components.model.recommender import META_FILE, GenerativeRecommender
from components.model.training import (
    Trainer,
    collate,
    length_bucketed_batches,
    response_loss,
    seq2seq_split,
    seqrec_examples,
    task_examples,
)
from components.siit.refine import propose_identifiers, refine_identifiers, training_contexts
from components.siit.warm_start import RECORD_FILE, grow_codebooks, incompatibility
from tests.model.test_decoding import (
    LEVELS,
    brute_force_scores,
    code_token_ids,
    item_codes,
    tiny_t5,
)
from tests.model.test_training import _on_threads
from tests.siit.test_warm_start import _params, make_champion

PAD = 0  # also the decoder's start token, as in T5
pytestmark = pytest.mark.usefixtures("one_thread")


def test_sequence_log_probs_are_the_teacher_forced_scores() -> None:
    model = tiny_t5(6)
    prompts = [[1, 2, 3], [4], [5, 6]]
    codes = item_codes(3, seed=6)
    ids = code_token_ids()
    tokens = torch.stack([ids[lvl][torch.as_tensor(codes[:, lvl])] for lvl in range(LEVELS)], 1)
    got = sequence_log_probs(model, prompts, tokens, pad_id=PAD)
    for row, prompt in enumerate(prompts):
        expected = brute_force_scores(model, prompt, codes[row : row + 1])[0]
        assert float(got[row]) == pytest.approx(float(expected), abs=1e-4)


# training -----------------------------------------------------------------------------------

SIZES = (4, 4, 4)
N_ITEMS = 16


def t5_recommender(seed: int = 0) -> tuple[GenerativeRecommender, np.ndarray, list[str]]:
    cfg = ModelConfig(
        architecture="t5",
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        text_vocab_size=200,
        dropout=0.0,
    )
    texts = [f"item {i} colour {'red' if i % 2 else 'blue'}" for i in range(N_ITEMS)]
    flat = np.random.default_rng(seed).choice(64, N_ITEMS, replace=False)
    codes = np.stack([flat // 16, (flat // 4) % 4, flat % 4], axis=1)
    return GenerativeRecommender.create(cfg, SIZES, texts, seed=seed), codes, texts


def test_seqrec_examples_have_one_target_each_with_at_most_max_history_items() -> None:
    rec, codes, _ = t5_recommender()
    prompts = rec.prompt_builder(codes)
    seq = np.arange(7)
    examples = seqrec_examples(prompts, [seq], max_history=3, one_per_target=True)
    assert len(examples) == 6  # every item after the first, once
    for t, example in enumerate(examples, start=1):
        history = seq[max(0, t - 3) : t]
        # the target's tokens as a history reads them (item inputs: its own token last); what
        # the decoder is taught is the labels, the identifier
        own = prompts.input_tokens[t].tolist()
        assert example.input_ids == prompts.seqrec_prompt(history) + own
        assert example.labels == [IGNORE] * len(prompts.seqrec_prompt(history)) + (
            prompts.identifier(t)
        )
    enc, mask, targets = seq2seq_split(
        collate(examples, PAD).input_ids, collate(examples, PAD).labels, PAD
    )
    for row, example in enumerate(examples):
        n = len(example.input_ids) - LEVELS
        assert enc[row, :n].tolist() == example.input_ids[:n] and mask[row].sum() == n
        assert targets[row].tolist() == example.labels[n:] == prompts.identifier(row + 1)
    gap = Example([1, 2, 3, 4, 5], [IGNORE, 2, IGNORE, 4, 5])  # two responses: not a t5 example
    with pytest.raises(ValueError, match="one prompt followed by one response"):
        seq2seq_split(collate([gap], PAD).input_ids, collate([gap], PAD).labels, PAD)


def test_t5_trains_its_loss_falls_and_it_recommends_what_it_learned() -> None:
    torch.manual_seed(0)
    rec, codes, texts = t5_recommender()
    prompts = rec.prompt_builder(codes)
    # every user walks the catalogue in order: the next item is always the previous one + 1
    sequences = [np.arange(s, s + 6) % N_ITEMS for s in range(N_ITEMS)]
    cfg = TrainConfig(lr=1e-2, batch_size=16, warmup_ratio=0.1)
    weights = cfg.tasks.model_copy(update={"item2id": 1.0, "id2item": 0.25})
    titles = [t.split(" colour")[0] for t in texts]

    def epoch_examples(epoch: int):
        return task_examples(
            prompts,
            weights,
            train_sequences=sequences,
            texts=texts,
            titles=titles,
            max_history=3,
            rng=np.random.default_rng(epoch),
            one_per_target=True,
        )

    data = [e for task in epoch_examples(0).values() for e in task]
    epochs = 60
    trainer = Trainer(rec.model, cfg, -(-len(data) // 16), epochs, precision="fp32")
    losses = []
    for epoch in range(epochs):
        data = [e for task in epoch_examples(epoch).values() for e in task]
        batches = length_bucketed_batches(data, 16, PAD, np.random.default_rng(epoch))
        losses.append(trainer.train_epoch(batches)["loss"])
    assert losses[-1] < 0.5 * losses[0]
    rec.model.eval()
    trie = PrefixTrie.from_codes(codes, SIZES)
    histories = [np.array([(i - 1) % N_ITEMS, i]) for i in range(N_ITEMS)]
    res = constrained_beam_search(
        rec.model,
        [prompts.seqrec_prompt(h) for h in histories],
        rec.code_token_ids,
        trie,
        beam_size=8,
        top_k=3,
        pad_id=PAD,
    )
    top1 = res.leaves[:, 0].numpy()
    assert (top1 == (np.arange(N_ITEMS) + 1) % N_ITEMS).mean() >= 0.75
    every_item = torch.from_numpy(prompts.item_tokens)
    exact = [
        sequence_log_probs(rec.model, [prompts.seqrec_prompt(h)] * N_ITEMS, every_item, PAD)
        for h in histories
    ]
    assert top1.tolist() == [int(s.argmax()) for s in exact]
    # the evaluation loss of the session path is the training loss's computation
    batch = collate(seqrec_examples(prompts, sequences, 3, one_per_target=True), PAD)
    with torch.no_grad():
        assert float(response_loss(rec.model, batch)) < losses[0]
        rows = response_loss(rec.model, batch, per_row=True)  # the immediate effect's reuse
        torch.testing.assert_close(
            rows.sum() / batch.n_label_tokens, response_loss(rec.model, batch)
        )
        alone = collate(seqrec_examples(prompts, sequences[:1], 3, one_per_target=True)[:1], PAD)
        torch.testing.assert_close(
            rows[0], response_loss(rec.model, alone) * alone.n_label_tokens, rtol=1e-5, atol=1e-5
        )


def test_t5_attends_with_the_thread_invariant_softmax(tmp_path) -> None:
    """`train.concurrent` trains each model on a share of the threads: a T5's gradients must
    not depend on it. Its attention (`components.model.attention`, set at creation and at
    load) has eager attention's forward, bit for bit, and gradients that are the same on one
    and two threads for an encoder row of 47 tokens (ATen's softmax backward, in the eager
    and sdpa attentions, gave other bits on an AVX2 machine)."""
    rec, _, _ = t5_recommender()
    for module in rec.model.modules():  # dropout's masks too (the same seed each time)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
        elif isinstance(getattr(module, "dropout", None), float):  # T5Attention's
            module.dropout = 0.1
    rec.model.train()
    rng = np.random.default_rng(3)
    vocab = len(rec.tokenizer)
    data = [
        Example(ids := rng.integers(4, vocab, 50).tolist(), [IGNORE] * 47 + ids[47:])
        for _ in range(16)
    ]
    batch = collate(data, PAD)

    def loss_and_gradients(impl: str | None = None):
        if impl:
            rec.model.set_attn_implementation(impl)
        torch.manual_seed(0)
        loss = response_loss(rec.model, batch)
        return loss, torch.autograd.grad(loss, list(rec.model.parameters()))

    assert rec.model.config._attn_implementation == attention.ATTENTION
    one, two = (_on_threads(t, loss_and_gradients) for t in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one[1], two[1], strict=True))
    eager, _ = loss_and_gradients("eager")
    assert torch.equal(eager, one[0])
    rec.model.eval()
    rec.save(tmp_path / "model")
    loaded = GenerativeRecommender.load(tmp_path / "model", device=torch.device("cpu"))
    assert loaded.model.config._attn_implementation == attention.ATTENTION


# persistence, config, warm start ------------------------------------------------------------


def test_save_and_load_restore_the_architecture_and_the_logits(tmp_path) -> None:
    rec, codes, _ = t5_recommender(1)
    rec.model.eval()
    rec.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / META_FILE).read_text())["architecture"] == "t5"
    assert list((tmp_path / "model").glob("*.safetensors"))
    loaded = GenerativeRecommender.load(tmp_path / "model", device=torch.device("cpu"))
    assert loaded.architecture == "t5" and loaded.is_encoder_decoder
    assert isinstance(loaded.model, T5ForConditionalGeneration)
    assert loaded.codebook_sizes == rec.codebook_sizes
    prompts = rec.prompt_builder(codes)
    batch = collate(seqrec_examples(prompts, [np.arange(5)], 3, one_per_target=True), PAD)
    enc, mask, targets = seq2seq_split(batch.input_ids, batch.labels, PAD)
    decoder = targets.clamp(min=0)
    with torch.no_grad():
        a = rec.model(input_ids=enc, attention_mask=mask, decoder_input_ids=decoder).logits
        b = loaded.model(input_ids=enc, attention_mask=mask, decoder_input_ids=decoder).logits
    assert torch.equal(a, b)


def test_llama_saves_record_llama_and_old_saves_load_as_llama(tmp_path) -> None:
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    rec = GenerativeRecommender.create(cfg, SIZES, ["a b", "c d"], seed=0)
    assert rec.architecture == "llama" and not rec.is_encoder_decoder
    rec.save(tmp_path / "model")
    meta_file = tmp_path / "model" / META_FILE
    meta = json.loads(meta_file.read_text())
    assert meta["architecture"] == "llama"
    del meta["architecture"]  # as saved before t5 existed
    meta_file.write_text(json.dumps(meta))
    assert GenerativeRecommender.load(tmp_path / "model").architecture == "llama"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"architecture": "gpt"}, "model.architecture: 'gpt' is not allowed.*one of llama, t5"),
        ({"architecture": "t5", "profile": "pretrained"}, "pretrained profile"),
    ],
)
def test_params_check_the_architecture(model: dict, message: str, tmp_path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": model}))
    with pytest.raises(ConfigError, match=message):
        load_params(tmp_path / "params.yaml")


def test_t5_takes_the_default_residual_dropout_as_the_llamas_only(tmp_path) -> None:
    """params.yaml's residual dropout is the tiny llama's; switching the architecture to t5
    needs no other change (its model.dropout covers those outputs) and adds no hooks."""
    from components.model.regularization import add_residual_dropout

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"model": {"architecture": "t5", "residual_dropout": 0.1}})
    )
    assert load_params(tmp_path / "params.yaml").model.residual_dropout == 0.1
    rec, _, _ = t5_recommender()
    assert add_residual_dropout(rec.model, 0.1) == []


def test_params_select_t5(tmp_path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"architecture": "t5"}}))
    assert load_params(tmp_path / "params.yaml").model.architecture == "t5"
    assert ModelConfig().architecture == "llama"


def test_a_t5_champion_grows_its_codebooks() -> None:
    rec, codes, _ = t5_recommender(2)
    before = rec.model.get_input_embeddings().weight.detach().clone()
    grown = grow_codebooks(rec, (4, 4, 5))
    assert grown.architecture == "t5"
    weight = grown.model.get_input_embeddings().weight
    assert weight.shape[0] == before.shape[0] + 1
    base = rec.item_input_base  # the tokenizer's rows; the item input rows follow the new code
    torch.testing.assert_close(weight[:base], before[:base])
    torch.testing.assert_close(weight[grown.item_input_base :], before[base:])
    new_token = int(grown.code_token_ids[2][4])
    torch.testing.assert_close(weight[new_token], before[rec.code_token_ids[2]].mean(0))
    two = np.array([[0, 0, 4], [1, 1, 1]])
    prompts = grown.prompt_builder(np.concatenate([two, codes[2:]]))  # items 0 and 1 moved
    trie = PrefixTrie.from_codes(two, grown.codebook_sizes)
    res = constrained_beam_search(
        grown.model.eval(),
        [prompts.seqrec_prompt(np.array([1]))],
        grown.code_token_ids,
        trie,
        beam_size=4,
        top_k=2,
        pad_id=PAD,
    )
    assert sorted(res.leaves[0].tolist()) == [0, 1]


def test_refinement_proposes_well_formed_identifiers_from_text_and_contexts() -> None:
    rec, codes, texts = t5_recommender(3)
    train = [np.arange(s, s + 5) % N_ITEMS for s in range(N_ITEMS)]
    contexts = training_contexts(train, N_ITEMS, max_history=3, per_item=2, seed=0)
    cfg = SiitConfig(signal="mixed", candidates=3, beam_size=4, batch_size=5)
    cand = propose_identifiers(rec, texts, codes, cfg, seed=0, contexts=contexts)
    assert cand.codes.shape == (N_ITEMS, 3, 3) and np.isfinite(cand.scores).all()
    assert (cand.codes >= 0).all() and (cand.codes < 4).all()
    # the current identifier's score: the same weighted mean, scored exactly
    prompts = rec.prompt_builder(codes)
    item = 5
    text = sequence_log_probs(
        rec.model, [prompts.item2id_prompt(texts[item])], torch.tensor([prompts.identifier(item)])
    )
    ctx = sequence_log_probs(
        rec.model,
        [prompts.seqrec_prompt(h) for h in contexts[item]],
        torch.tensor([prompts.identifier(item)] * len(contexts[item])),
    )
    expected = (1 - cfg.context_weight) * float(text[0]) + cfg.context_weight * float(ctx.mean())
    assert cand.current_scores[item] == pytest.approx(expected, abs=1e-4)
    new, _ = refine_identifiers(rec, texts, codes, cfg, seed=0, contexts=contexts)
    assert len({tuple(r) for r in new.tolist()}) == N_ITEMS  # still a bijection


def test_a_champion_is_continued_only_by_its_own_architecture(tmp_path) -> None:
    llama = _params()
    t5 = _params(model={"architecture": "t5"})
    champion = make_champion(tmp_path / "champion", llama)
    ids = [str(i) for i in range(20)]
    assert incompatibility(champion, llama, ids) is None
    assert "model.architecture" in incompatibility(champion, t5, ids)
    # champions saved before t5 existed have no architecture in their record: llama
    record = json.loads((champion / RECORD_FILE).read_text())
    del record["compatibility"]["model"]["architecture"]
    (champion / RECORD_FILE).write_text(json.dumps(record))
    assert incompatibility(champion, llama, ids) is None
    assert "model.architecture" in incompatibility(champion, t5, ids)
    t5_champion = make_champion(tmp_path / "t5", t5)
    assert incompatibility(t5_champion, t5, ids) is None
    assert "model.architecture" in incompatibility(t5_champion, llama, ids)
