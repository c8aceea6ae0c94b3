"""The Trainer's CPU fast path: the same loss and gradients as the model's own forward, the
same run twice for the same seed, and the stock weights it trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from components.config import TrainConfig
from components.model import training
from components.model.prompts import IGNORE, Example
from components.model.regularization import add_residual_dropout, keep_mask
from components.model.training import (
    Batch,
    Trainer,
    collate,
    length_bucketed_batches,
    response_loss,
)

VOCAB = 50


def tiny_llama(dropout: float = 0.1, seed: int = 0, vocab: int = VOCAB) -> LlamaForCausalLM:
    """A random 2-layer Llama (hidden 32, tied head), its attention dropout `dropout`."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        attention_dropout=dropout,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def examples(n: int = 24, seed: int = 0) -> list[Example]:
    """Counting sequences of varied length with a prompt of 2-4 unlabelled tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start, length, prompt = rng.integers(0, VOCAB), rng.integers(6, 20), rng.integers(2, 5)
        ids = ((start + np.arange(length)) % VOCAB).tolist()
        out.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def tiny_dataset(n_items: int, sequences: list[np.ndarray], max_history: int):
    """A Dataset of `n_items` items (titles t<i>, texts "item <i>"), one user per sequence."""
    import polars as pl

    from components.data import Dataset

    items = pl.DataFrame(
        {
            "item_idx": np.arange(n_items, dtype=np.int64),
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"t{i}" for i in range(n_items)],
            "text": [f"item {i}" for i in range(n_items)],
        }
    )
    users = [f"u{i}" for i in range(len(sequences))]
    return Dataset(items=items, user_ids=users, sequences=sequences, max_history=max_history)


def reference_loss(model: LlamaForCausalLM, batch: Batch) -> torch.Tensor:
    """The model's own forward, head on labelled positions (the path other models take)."""
    hidden = model.get_decoder()(input_ids=batch.input_ids).last_hidden_state
    targets = batch.labels[:, 1:]
    selected = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][selected])
    return F.cross_entropy(logits.float(), targets[selected])


def assert_same_gradients(model, ours: torch.Tensor, theirs: torch.Tensor, atol: float) -> None:
    """Every parameter's gradient of two losses agrees."""
    params = list(model.parameters())
    grads = zip(torch.autograd.grad(ours, params), torch.autograd.grad(theirs, params), strict=True)
    for a, b in grads:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol)


def test_collate_pads_right_and_counts_labels() -> None:
    rows = [Example([5, 6, 7], [IGNORE, 6, 7]), Example([1, 2, 3, 4, 5], [IGNORE] * 3 + [4, 5])]
    batch = collate(rows, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.labels.tolist() == [[IGNORE, 6, 7, IGNORE, IGNORE], [IGNORE] * 3 + [4, 5]]
    assert batch.n_label_tokens == 4
    assert batch.input_ids.dtype == batch.labels.dtype == torch.long


def test_fast_path_computes_what_the_model_computes() -> None:
    """Dropout off (eval), fp32: loss and every parameter's gradient as transformers' forward."""
    model = tiny_llama().eval()
    batch = collate(examples(), pad_id=0)
    assert training._fast_llama(model, batch.input_ids.device)
    ours = response_loss(model, batch)
    theirs = reference_loss(model, batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    params = list(model.parameters())
    for a, b in zip(
        torch.autograd.grad(ours, params), torch.autograd.grad(theirs, params), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fast_path_runs_residual_dropout_hooks_and_declines_other_hooks() -> None:
    model = tiny_llama(dropout=0.0).train()
    batch = collate(examples(), pad_id=0)
    plain = response_loss(model, batch)
    handles = add_residual_dropout(model, 0.5)
    assert training._fast_llama(model, batch.input_ids.device)
    torch.manual_seed(0)
    dropped = response_loss(model, batch)
    assert not torch.equal(plain, dropped)  # the hooks ran
    model.eval()
    torch.testing.assert_close(response_loss(model, batch), reference_loss(model, batch))
    for h in handles:
        h.remove()
    handle = model.model.norm.register_forward_hook(lambda *a: None)
    assert not training._fast_llama(model, batch.input_ids.device)  # would skip that hook
    handle.remove()
    assert training._fast_llama(model, batch.input_ids.device)
    assert not training._fast_llama(model, torch.device("meta"))


def test_attention_dropout_mask_rate_and_scale() -> None:
    torch.manual_seed(0)
    shape = torch.Size([64, 100, 100])
    keep, scale = keep_mask(shape, 0.1, torch.bfloat16, torch.device("cpu"))
    assert keep.dtype == torch.bfloat16 and keep.shape == shape
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    assert abs(float(keep.float().mean()) - 0.9) < 0.005
    assert scale == pytest.approx(1 / 0.9, rel=1e-4)


def test_training_precision_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert training.training_precision(cpu, "fp32") == "fp32"
    assert training.training_precision(cpu, "bf16") == "bf16"
    monkeypatch.setattr(training, "cpu_bf16_native", lambda: False)
    assert training.training_precision(cpu) == "fp32"
    monkeypatch.setattr(training, "cpu_bf16_native", lambda: True)
    assert training.training_precision(cpu) == "bf16"
    monkeypatch.setenv("SIIT_TRAIN_PRECISION", "fp32")
    assert training.training_precision(cpu) == "fp32"
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        training.training_precision(cpu, "fp16")
    assert training.training_precision(cpu, "auto") == "fp32"  # auto: the environment decides
    assert training.training_precision(cpu, "bf16") == "bf16"  # an explicit choice wins


@pytest.mark.parametrize(
    ("param", "native", "env", "expected"),
    [
        ("fp32", True, None, "fp32"),
        ("bf16", False, "fp32", "bf16"),
        ("auto", True, None, "bf16"),
        ("auto", False, None, "fp32"),
        ("auto", True, "fp32", "fp32"),
    ],
)
def test_train_precision_param_reaches_the_trainer(
    param: str,
    native: bool,
    env: str | None,
    expected: str,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """params.yaml `train.precision` -> the flows' TrainingSession (scratch and champion
    starts) -> its Trainer."""
    import yaml

    from components.config import load_params
    from components.model.recommender import GenerativeRecommender
    from components.model.session import TrainingSession
    from flows.train import training_config

    monkeypatch.setattr(training, "cpu_bf16_native", lambda: native)
    monkeypatch.delenv("SIIT_TRAIN_PRECISION", raising=False)
    if env:
        monkeypatch.setenv("SIIT_TRAIN_PRECISION", env)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"precision": param}}))
    params = load_params(tmp_path / "params.yaml")
    dataset = tiny_dataset(4, [np.array([0, 1, 2, 3]), np.array([3, 2, 1, 0])], max_history=3)
    model_cfg = params.model.model_copy(
        update={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    )
    rec = GenerativeRecommender.create(model_cfg, (2, 2), ["item a", "item b"], seed=0, n_items=4)
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    for start in ("scratch", "champion"):
        train_cfg, _ = training_config(params, {"start": start})
        session = TrainingSession(rec, dataset, codes, train_cfg, params.evaluate, 1)
        assert session.trainer.precision == expected, start


def test_train_precision_param_is_checked(tmp_path) -> None:
    import yaml

    from components.config import ConfigError, load_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"precision": "fp16"}}))
    with pytest.raises(ConfigError, match="train.precision"):
        load_params(tmp_path / "params.yaml")


def _train_twice_the_same(precision: str, residual_dropout: float = 0.0) -> None:
    def run() -> tuple[list[float], dict[str, torch.Tensor]]:
        model = tiny_llama()
        add_residual_dropout(model, residual_dropout)
        data = examples(48)
        cfg = TrainConfig(lr=1e-2, batch_size=8, warmup_ratio=0.1)
        trainer = Trainer(model, cfg, -(-len(data) // 8), 2, precision=precision)
        losses = []
        for epoch in range(2):
            torch.manual_seed(100 + epoch)  # as TrainingSession seeds each epoch's dropout
            rng = np.random.default_rng(epoch)
            losses.append(trainer.train_epoch(length_bucketed_batches(data, 8, 0, rng))["loss"])
        return losses, {k: v.clone() for k, v in model.state_dict().items()}

    losses_a, weights_a = run()
    losses_b, weights_b = run()
    assert losses_a == losses_b
    assert losses_a[1] < losses_a[0]
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_training_is_deterministic_in_fp32() -> None:
    _train_twice_the_same("fp32", residual_dropout=0.1)


def test_training_is_deterministic_in_bf16() -> None:
    """bf16 autocast (the CPU default where bf16 is native) is deterministic too; emulated
    bf16 is slow but computes the same way."""
    _train_twice_the_same("bf16", residual_dropout=0.1)


def test_trained_model_saves_as_stock_llama(tmp_path) -> None:
    model = tiny_llama()
    data = examples(16)
    trainer = Trainer(model, TrainConfig(lr=1e-2, batch_size=8), 2, 1)
    trainer.train_epoch(length_bucketed_batches(data, 8, 0, np.random.default_rng(0)))
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    model.eval()
    batch = collate(data, pad_id=0)
    torch.testing.assert_close(reference_loss(loaded, batch), reference_loss(model, batch))
    assert (tmp_path / "model.safetensors").exists()


def test_per_row_losses_are_each_rows_own_loss() -> None:
    """`per_row`: every row's summed loss is what the row alone gives, and together they are
    the batch mean (fast path and the model's own forward alike)."""
    data = examples(12)
    batch = collate(data, pad_id=0)
    for model in (tiny_llama().eval(), tiny_llama(dropout=0.0).eval()):
        if model.config.attention_dropout == 0.0:  # a hook the fast path declines: own forward
            model.model.layers[0].register_forward_hook(lambda *_: None)
        fast = model.config.attention_dropout > 0.0
        assert training._fast_llama(model, batch.input_ids.device) == fast
        rows = response_loss(model, batch, per_row=True)
        assert rows.shape == (len(data),) and rows.dtype == torch.float32
        torch.testing.assert_close(rows.sum() / batch.n_label_tokens, response_loss(model, batch))
        for i, example in enumerate(data):
            alone = collate([example], pad_id=0)
            torch.testing.assert_close(
                rows[i], response_loss(model, alone) * alone.n_label_tokens, rtol=1e-5, atol=1e-5
            )


def _session(codes: np.ndarray, **train):
    """A tiny TrainingSession on 10 items, histories of 3: many windows, each a few items."""
    from components.config import EvaluateConfig, ModelConfig
    from components.model.recommender import GenerativeRecommender
    from components.model.session import TrainingSession

    n = len(codes)
    rng = np.random.default_rng(0)
    sequences = [rng.choice(n, size=rng.integers(3, 9), replace=False) for _ in range(30)]
    sequences += [np.array([0, 1, 2, 3, 4]), np.array([5, 6, 7, 8, 9])]  # windows without 9 / 0
    dataset = tiny_dataset(n, sequences, max_history=3)
    cfg = ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    rec = GenerativeRecommender.create(cfg, (4, 4), [f"item {i}" for i in range(n)], seed=0)
    cfg = TrainConfig(batch_size=8, **train)
    return TrainingSession(rec, dataset, codes, cfg, EvaluateConfig(), 1)


@pytest.mark.parametrize("banded", [False, True])
def test_seqrec_loss_after_a_refinement_scores_only_windows_with_a_moved_item(banded: bool) -> None:
    """The immediate effect's second loss pass: the windows holding an item whose identifier
    moved are scored again, the others taken over, and the result is the full pass's."""
    codes = np.array([[i // 4, i % 4] for i in range(10)])
    session = _session(codes, banded=banded, window_stride=4 if banded else 0)
    assert session.banded == banded
    before = session.seqrec_loss()
    assert before.rescored == len(before.sums) and before.rescored_share == 1.0
    assert session.seqrec_loss(before).rescored == 0  # nothing moved: nothing scored
    assert session.seqrec_loss(before).mean == before.mean

    refined = codes.copy()
    refined[9] = [3, 3]  # item 9 moves to an unused identifier
    session.set_codes(refined)
    reused = session.seqrec_loss(before)
    full = session.seqrec_loss()
    assert 0 < reused.rescored < len(before.sums)
    assert reused.rescored == sum(9 in seq for seq in _window_items(session))
    assert reused.mean != before.mean  # the moved item's windows changed
    np.testing.assert_allclose(reused.sums, full.sums, rtol=1e-5)
    np.testing.assert_array_equal(reused.counts, full.counts)
    assert reused.mean == pytest.approx(full.mean, rel=1e-6)
    # per identifier token, as the training loss: the counts are the rows' label tokens
    rows = session._examples(0)["seqrec"]
    assert full.counts.sum() == collate(rows, pad_id=0).n_label_tokens
    assert all((row.band is not None) == banded for row in rows)
    assert session.train_epoch()["loss"] > 0


def test_seqrec_loss_over_a_sample_is_the_full_passs_on_those_windows() -> None:
    """`siit.effect_windows`: a fixed sample of the windows (the same on every call, by
    train.seed), each scored as the full pass scores it; reuse must cover the same sample."""
    codes = np.array([[i // 4, i % 4] for i in range(10)])
    session = _session(codes)
    full = session.seqrec_loss()
    n = len(full.sums)
    sample = session.seqrec_loss(sample=n // 2)
    assert len(sample.windows) == n // 2 and np.all(np.diff(sample.windows) > 0)
    np.testing.assert_array_equal(session.seqrec_loss(sample=n // 2).windows, sample.windows)
    np.testing.assert_allclose(sample.sums, full.sums[sample.windows], rtol=1e-5)
    np.testing.assert_array_equal(sample.counts, full.counts[sample.windows])
    np.testing.assert_array_equal(session.seqrec_loss(sample=n).windows, np.arange(n))  # all
    refined = codes.copy()
    refined[9] = [3, 3]
    session.set_codes(refined)
    reused = session.seqrec_loss(sample, sample=n // 2)
    np.testing.assert_allclose(reused.sums, session.seqrec_loss().sums[sample.windows], rtol=1e-5)
    with pytest.raises(ValueError, match="windows"):
        session.seqrec_loss(full, sample=n // 2)  # another set of windows


def _windows(session) -> list:
    return training.seqrec_windows(
        session.train_sequences,
        session.dataset.max_history,
        stride=session.stride,
        banded=session.banded,
    )


def _window_items(session) -> list[list[int]]:
    return [list(w) for w, _ in _windows(session)]


def test_hold_out_last_trains_without_each_users_last_training_item() -> None:
    """train.hold_out_last: every user's last training item is neither a target nor context;
    evaluation's histories keep it (the validation split is the dataset's, unchanged)."""
    codes = np.array([[i // 4, i % 4] for i in range(10)])
    kept, held = _session(codes, hold_out_last=False), _session(codes, hold_out_last=True)
    train = held.dataset.train_sequences()
    assert [s.tolist() for s in kept.train_sequences] == [s.tolist() for s in train]
    assert [s.tolist() for s in held.train_sequences] == [s[:-1].tolist() for s in train]
    assert any(len(s) == 0 for s in held.train_sequences)  # a user left with nothing to train

    def targets(session) -> int:
        return sum(max(len(s) - 1, 0) for s in session.train_sequences)

    assert 0 < targets(held) < targets(kept)
    for session in (kept, held):  # the same label tokens per target: only targets are gone
        rows = session._examples(0)["seqrec"]
        assert collate(rows, pad_id=0).n_label_tokens == 2 * targets(session)  # 2 codes each
    # the two users with fixed sequences: their held-out items (2 and 7) are in no window
    windows = _window_items(held)
    assert [0, 1] in windows and [5, 6] in windows
    assert not any(w[:2] in ([0, 1], [5, 6]) and len(w) > 2 for w in windows)
    assert held.seqrec_loss().counts.sum() == 2 * targets(held)
    assert held.train_epoch()["loss"] > 0
    valid = held.dataset.eval_split("valid")
    assert valid.histories[-2].tolist() == [0, 1, 2]  # evaluation still sees the held-out item
    # a number holds out that many: validation's two newest items are new, as test's two are
    two = _session(codes, hold_out_last=2)
    assert [s.tolist() for s in two.train_sequences] == [s[:-2].tolist() for s in train]
    assert 0 < targets(two) < targets(held)
    assert two.seqrec_loss().counts.sum() == 2 * targets(two)  # its windows hold only those
    assert two.dataset.eval_split("valid").histories[-2].tolist() == [0, 1, 2]


def test_seqrec_windows_are_the_rows_of_seqrec_examples() -> None:
    codes = np.array([[i // 4, i % 4] for i in range(10)])
    session = _session(codes)
    sequences = session.dataset.train_sequences()
    for stride in (0, 1, 3):
        rows = training.seqrec_examples(session.prompts, sequences, 3, stride=stride)
        windows = training.seqrec_windows(sequences, 3, stride=stride)
        assert rows == [session.prompts.seqrec_window(w, min_history=h) for w, h in windows]


# Banded windows (train.banded) ---------------------------------------------------------------


class _CharIds:
    """A tokenizer stand-in: one token per character (ids 3-9), BOS 1, EOS 2, PAD 0."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [3 + ord(c) % 7 for c in text]}


def _visible_items(example: Example, blocked: torch.Tensor, window: np.ndarray) -> dict:
    """For each labelled item of a banded window: the window's items its first token's
    prediction may attend to (from `blocked`, [length, length]), and the prefix it sees."""
    prefix, levels, _ = example.band
    out = {}
    for j in range(len(window)):
        q = prefix + levels * j - 1  # this position predicts item j's first token
        if example.labels[q + 1] == IGNORE:
            continue
        keys = (~blocked[q, : q + 1]).nonzero().flatten().tolist()
        assert keys[:prefix] == list(range(prefix))  # the prompt prefix, always
        out[j] = sorted({(k - prefix) // levels for k in keys[prefix:]})
    return out


@pytest.mark.parametrize("history,stride", [(3, 0), (3, 2), (4, 7), (2, 1)])
def test_banded_windows_train_every_target_once_on_exactly_its_last_history(
    history: int, stride: int
) -> None:
    """Train as you evaluate, exactly: every target is trained once and attends to the prompt
    prefix and its last `history` items (all of them when it has fewer), never more."""
    rng = np.random.default_rng(history + stride)
    codes = rng.integers(10, 40, size=(30, 2))
    prompts = training.PromptBuilder(_CharIds(), codes)
    sequences = [rng.integers(0, 30, size=n) for n in (2, 3, 5, 9, 16, 31)]
    trained: list[tuple[int, int]] = []
    for s, seq in enumerate(sequences):
        windows = training.seqrec_windows([seq], history, stride=stride, banded=True)
        rows = training.seqrec_examples(prompts, [seq], history, stride=stride, banded=True)
        assert rows == [prompts.seqrec_window(w, h, band=history) for w, h in windows]
        offset = 0
        for (window, lead), row in zip(windows, rows, strict=True):
            start = next(
                i for i in range(len(seq)) if np.array_equal(seq[i : i + len(window)], window)
            )
            start = max(start, offset - lead)
            blocked = training.band_mask(collate([row], pad_id=0))
            if blocked is None:  # no longer than a history: causal is the band
                blocked = torch.ones(len(row.input_ids), len(row.input_ids), dtype=torch.bool).triu(
                    1
                )
            for j, items in _visible_items(row, blocked, window).items():
                target = start + j
                trained.append((s, target))
                assert items == list(range(max(0, j - history), j))  # its last `history` items
            offset = start + len(window)
    expected = [(s, t) for s, seq in enumerate(sequences) for t in range(1, len(seq))]
    assert sorted(trained) == expected


def _banded_batch(long_plain_row: bool) -> Batch:
    rng = np.random.default_rng(1)
    codes = rng.integers(10, VOCAB, size=(30, 3))
    prompts = training.PromptBuilder(_CharIds(), codes)
    sequences = [rng.integers(0, 30, size=n) for n in (3, 9, 17, 25)]
    rows = training.seqrec_examples(prompts, sequences, 4, stride=9, banded=True)
    text = "a long item text " * 3 if long_plain_row else "ab"  # longer than the band, or not
    rows.append(prompts.item2id(text, 1))
    return collate(rows, pad_id=0)


@pytest.mark.parametrize(
    "long_plain_row,widths", [(False, False), (True, False), (True, True), (False, True)]
)
def test_banded_loss_is_the_model_forward_under_the_band_mask(
    long_plain_row: bool, widths: bool
) -> None:
    """Loss and gradients of the Llama path on banded windows (with an unbanded row in the
    batch, short or long enough to need its own mask; with bands drawn per target as
    `train.band_min` does) are transformers' forward given the band as a 4D mask; the band
    restricts something (not merely causal)."""
    batch = _banded_batch(long_plain_row)
    if widths:
        prefix, levels, history = batch.band
        items = (batch.input_ids.shape[1] - prefix) // levels + 1
        batch.band_widths = torch.randint(
            1, history + 1, (items,), generator=torch.Generator().manual_seed(0)
        )
        assert int(batch.band_widths.min()) < history
    blocked = training.band_mask(batch)
    assert blocked is not None and blocked.dim() == (3 if long_plain_row else 2)
    causal = torch.ones(blocked.shape[-2:], dtype=torch.bool).triu(1)
    assert bool((blocked & ~causal).any())
    if long_plain_row:
        assert torch.equal(blocked[-1], causal)  # the unbanded row attends causally
    if widths:  # each target sees the last band_widths[t] items
        prefix, levels, _ = batch.band
        for t in range(1, len(batch.band_widths)):
            q = prefix + levels * t - 1
            if q >= blocked.shape[-1]:
                break
            row = blocked[0] if blocked.dim() == 3 else blocked
            keys = (~row[q, : q + 1]).nonzero().flatten().tolist()[prefix:]
            items = sorted({(k - prefix) // levels for k in keys})
            assert items == list(range(max(0, t - int(batch.band_widths[t])), t))
    model = tiny_llama().eval()
    ours = response_loss(model, batch, per_row=True)
    rows = blocked if blocked.dim() == 3 else blocked.expand(len(ours), -1, -1)
    mask = torch.zeros(rows.shape).masked_fill(rows, float("-inf"))[:, None]
    logits = model(input_ids=batch.input_ids, attention_mask=mask).logits[:, :-1]
    targets = batch.labels[:, 1:]
    selected = targets != IGNORE
    token = F.cross_entropy(logits[selected].float(), targets[selected], reduction="none")
    theirs = torch.zeros(len(ours)).index_add_(0, selected.nonzero(as_tuple=True)[0], token)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    assert_same_gradients(model, ours.sum(), theirs.sum(), atol=1e-5)


def test_banded_windows_need_a_model_that_can_take_them() -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    batch = _banded_batch(long_plain_row=False)
    assert training.supports_banded(tiny_llama())
    t5 = T5ForConditionalGeneration(
        T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    )
    assert not training.supports_banded(t5)
    with pytest.raises(ValueError, match="banded"):
        response_loss(t5, batch)


def test_banded_windows_fill_batches_as_the_plain_windows_of_their_targets() -> None:
    """A banded window counts as the plain windows (half a history of targets each) its
    targets would fill: an epoch has about the plain layout's steps, each holding at most
    `batch_size` of them, every example once; plain examples still come `batch_size` a batch."""
    rng = np.random.default_rng(3)
    codes = rng.integers(10, 40, size=(30, 2))
    prompts = training.PromptBuilder(_CharIds(), codes)
    sequences = [rng.integers(0, 30, size=n) for n in rng.integers(2, 60, size=40)]
    banded = training.seqrec_examples(prompts, sequences, 4, stride=8, banded=True)
    plain = training.seqrec_examples(prompts, sequences, 4)
    assert len(banded) < len(plain) // 2
    units = [training.batch_units(e) for e in banded]
    assert sum(units) * 2 == sum(len(s) - 1 for s in sequences)  # 2 targets a plain window
    batches = list(length_bucketed_batches(banded, 32, 0, np.random.default_rng(0)))
    assert sum(len(b.input_ids) for b in batches) == len(banded)
    for b in batches:  # the units of a batch, from its labelled targets (2 tokens each)
        assert float((b.labels[:, 1:] != IGNORE).sum()) / 2 / 2 <= 32
    assert abs(len(batches) - training.epoch_steps(banded, 32)) <= 2
    assert abs(training.epoch_steps(banded, 32) - training.epoch_steps(plain, 32)) <= 2
    sizes = [
        len(b.input_ids) for b in length_bucketed_batches(plain, 8, 0, np.random.default_rng(0))
    ]
    assert sorted(sizes)[1:] == [8] * (len(sizes) - 1)  # plain: batch_size a batch


def test_banded_training_with_drawn_bands_is_deterministic() -> None:
    """`train.band_min` draws bands from the seeded torch RNG: the same run twice gives the
    same losses, and other losses than full bands."""
    rng = np.random.default_rng(5)
    codes = rng.integers(10, VOCAB, size=(30, 2))
    prompts = training.PromptBuilder(_CharIds(), codes)
    data = training.seqrec_examples(
        prompts, [rng.integers(0, 30, size=n) for n in (12, 20, 31, 9)], 4, stride=6, banded=True
    )

    def run(band_min: int) -> list[float]:
        model = tiny_llama(dropout=0.0)
        trainer = Trainer(
            model, TrainConfig(batch_size=4, band_min=band_min), steps_per_epoch=4, total_epochs=2
        )
        out = []
        for epoch in range(2):
            torch.manual_seed(epoch)
            batches = length_bucketed_batches(data, 4, 0, np.random.default_rng(epoch))
            out.append(trainer.train_epoch(batches)["loss"])
        return out

    assert run(2) == run(2)
    assert run(2) != run(0)


# Per-level softmax (model.code_softmax) -------------------------------------------------------

LEVEL_IDS = [torch.arange(20, 30), torch.arange(30, 40), torch.arange(40, 46)]  # sizes 10, 10, 6


def _identifier_batch(seed: int = 0) -> Batch:
    """Rows of 2-4 unlabelled text tokens, then labelled identifiers (level 0, 1, 2, ...)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(12):
        prompt = rng.integers(1, 20, size=rng.integers(2, 5)).tolist()
        ids = [int(rng.choice(LEVEL_IDS[j % 3])) for j in range(3 * rng.integers(1, 4))]
        rows.append(Example(prompt + ids, [IGNORE] * len(prompt) + ids))
    return collate(rows, pad_id=0)


def _level_reference(model: LlamaForCausalLM, batch: Batch) -> torch.Tensor:
    """Per-row summed loss from the model's own full logits, each labelled token's softmax
    taken over its level's tokens only."""
    logits = model(input_ids=batch.input_ids).logits[:, :-1]
    targets = batch.labels[:, 1:]
    rows = torch.zeros(len(targets))
    for r, t in (targets != IGNORE).nonzero().tolist():
        token = int(targets[r, t])
        ids = next(ids for ids in LEVEL_IDS if token in ids.tolist())
        logp = torch.log_softmax(logits[r, t, ids].float(), -1)
        rows = rows.index_add(0, torch.tensor([r]), -logp[ids.tolist().index(token)][None])
    return rows


@pytest.mark.parametrize("path", ["fast", "own forward"])
def test_per_level_softmax_loss_is_cross_entropy_within_the_level(path: str) -> None:
    """The Llama path (one small head per level) and the model's own forward (whole head, then
    cut to the level) give the loss and gradients of a softmax over each target's level."""
    from components.model.decoding import CodeLevels

    model = tiny_llama().eval()
    model.siit_code_levels = CodeLevels.build(LEVEL_IDS, VOCAB)
    batch = _identifier_batch()
    handle = model.model.norm.register_forward_hook(lambda *a: None) if path != "fast" else None
    assert training._fast_llama(model, batch.input_ids.device) == (path == "fast")
    ours = response_loss(model, batch, per_row=True)
    theirs = _level_reference(model, batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(response_loss(model, batch), theirs.sum() / batch.n_label_tokens)
    assert_same_gradients(model, ours.sum(), theirs.sum(), atol=1e-6)
    model.siit_code_levels = None  # the whole vocabulary: a larger loss on the same batch
    whole = response_loss(model, batch).detach()
    assert float(whole) > float(ours.detach().sum() / batch.n_label_tokens)
    if handle is not None:
        handle.remove()


def test_per_level_softmax_refuses_text_targets() -> None:
    from components.model.decoding import CodeLevels

    model = tiny_llama().eval()
    model.siit_code_levels = CodeLevels.build(LEVEL_IDS, VOCAB)
    batch = collate([Example([1, 2, 20, 5], [IGNORE, IGNORE, 20, 5])], pad_id=0)  # 5: text
    with pytest.raises(ValueError, match="identifier token"):
        response_loss(model, batch)


@pytest.mark.parametrize("architecture", ["llama", "t5"])
def test_per_level_softmax_is_saved_with_the_model(tmp_path, architecture: str) -> None:
    """`model.code_softmax` is the model's: set on creation, saved, loaded, and both
    architectures train with it (T5 cuts its whole head's logits to the level)."""
    from components.config import ModelConfig
    from components.model.decoding import code_levels
    from components.model.recommender import GenerativeRecommender

    cfg = ModelConfig(
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        architecture=architecture,
        code_softmax=True,
    )
    texts = [f"item {i}" for i in range(6)]
    rec = GenerativeRecommender.create(cfg, (4, 3), texts, seed=0)
    levels = code_levels(rec.model)
    assert rec.code_softmax and [len(ids) for ids in levels.ids] == [4, 3]
    codes = np.array([[i % 4, i % 3] for i in range(6)])
    prompts = rec.prompt_builder(codes)
    rows = [prompts.item2id(t, i) for i, t in enumerate(texts)]
    loss = response_loss(rec.model, collate(rows, rec.tokenizer.pad_token_id or 0))
    assert 0 < float(loss.detach()) < np.log(4) + 1  # a softmax over a handful of codes, not ~1,000
    rec.save(tmp_path / "m")
    loaded = GenerativeRecommender.load(tmp_path / "m")
    assert loaded.code_softmax and code_levels(loaded.model) is not None
    plain = GenerativeRecommender.create(
        cfg.model_copy(update={"code_softmax": False}), (4, 3), texts, 0
    )
    assert not plain.code_softmax and code_levels(plain.model) is None


def test_a_model_that_cannot_take_bands_trains_on_plain_windows(monkeypatch, caplog) -> None:
    """`train.banded` with a model off the Llama training path (a LoRA-wrapped pretrained LM):
    plain windows, a stride beyond a history back to the default, and a warning that says so."""
    import components.model.session as session_module

    monkeypatch.setattr(session_module, "supports_banded", lambda model: False)
    codes = np.array([[i // 4, i % 4] for i in range(10)])
    with caplog.at_level("WARNING", logger="components.model.session"):
        session = _session(codes, banded=True, window_stride=5)
    assert not session.banded and session.stride == 0
    assert "plain windows instead" in caplog.text
    assert all(row.band is None for row in session._examples(0)["seqrec"])


def _on_threads(threads: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_softmax_gradient_is_the_same_on_any_number_of_threads() -> None:
    """`training.softmax`: ATen's forward, a gradient within rounding of ATen's, and the same
    bits on one and two threads for rows whose length is not a multiple of the vector width
    (ATen's CPU backward is not: rows of 47 and 100 differed on an AVX2 machine)."""
    torch.manual_seed(0)
    scores = torch.randn(16, 47, 47).masked_fill(
        torch.ones(47, 47, dtype=torch.bool).triu(1), -torch.inf
    )
    grad = torch.randn(16, 47, 47)

    def gradient(fn):
        x = scores.clone().requires_grad_()
        y = fn(x)
        y.backward(grad)
        return y.detach(), x.grad

    ours = [_on_threads(t, lambda: gradient(training.softmax)) for t in (1, 2)]
    theirs = gradient(lambda x: torch.softmax(x, -1))
    assert torch.equal(ours[0][0], theirs[0])  # the same forward
    torch.testing.assert_close(ours[0][1], theirs[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(ours[0][1], ours[1][1])


def test_training_gradients_are_the_same_on_one_and_two_threads() -> None:
    """`train.concurrent` trains each model on a share of the threads (and hands a finished
    model's threads to the other): the gradients, and so the models, must not depend on it."""
    rng = np.random.default_rng(3)
    data = [
        Example(ids := (rng.integers(0, VOCAB, 47)).tolist(), [IGNORE] * 5 + ids[5:])
        for _ in range(16)
    ]
    batch = collate(data, pad_id=0)
    assert batch.input_ids.shape[1] % 8  # a row length off the vector width

    def gradients():
        model = tiny_llama(dropout=0.1).train()
        add_residual_dropout(model, 0.1)
        torch.manual_seed(0)
        loss = response_loss(model, batch)
        return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]

    one, two = (_on_threads(t, gradients) for t in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_the_last_layer_runs_on_row_counts_that_repeat(matmul_rows) -> None:
    """oneDNN JIT-compiles a bf16 kernel per new matmul shape, and the number of labelled
    positions changes from batch to batch: two batches of one shape whose labelled positions
    differ in number (by less than ROW_QUANTUM) run matmuls of the same shapes, with the loss
    the model's own forward gives."""
    assert training.ROW_QUANTUM > 1
    model = tiny_llama().eval()
    batch = collate(examples(), pad_id=0)
    fewer = batch.labels.clone()
    fewer[:4, :6] = IGNORE  # a few labelled positions fewer, the same shape
    second = Batch(
        batch.input_ids, batch.attention_mask, fewer, int((fewer[:, 1:] != IGNORE).sum())
    )
    assert second.n_label_tokens < batch.n_label_tokens
    shapes = []
    for b in (batch, second):
        with matmul_rows() as rows:
            loss = response_loss(model, b)
            loss.backward()
        shapes.append(sorted(rows))
        torch.testing.assert_close(loss, reference_loss(model, b), rtol=1e-5, atol=1e-6)
    assert shapes[0] == shapes[1]


class _Norm(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.variance_epsilon = 1e-5


def _norm_expression(x: torch.Tensor, norm: _Norm) -> torch.Tensor:
    """LlamaRMSNorm's own formula, through autograd."""
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def test_rms_norm_backward_is_the_formulas_gradient() -> None:
    """`_RMSNorm`'s closed-form backward: exact in float64 (gradcheck), and in fp32 the
    expression's forward and gradients to rounding."""
    torch.manual_seed(0)
    x64 = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    norm64 = _Norm(torch.randn(8, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda x, w: training._RMSNorm.apply(x, w, 1e-5, torch.float64), (x64, norm64.weight)
    )
    x = torch.randn(4, 20, 128, requires_grad=True)
    norm = _Norm(1 + 0.1 * torch.randn(128))
    grad = torch.randn(4, 20, 128)
    ours, theirs = training._rms_norm(x, norm), _norm_expression(x, norm)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    for a, b in zip(
        torch.autograd.grad(ours, (x, norm.weight), grad),
        torch.autograd.grad(theirs, (x, norm.weight), grad),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rms_norm_writes_the_matmul_dtype_and_takes_its_gradient() -> None:
    """Asked for bf16 (what an autocast matmul casts its input to), the norm returns the fp32
    result rounded to bf16, and its gradient wrt the fp32 input is the expression's for the
    same bf16 output gradient."""
    torch.manual_seed(1)
    x = torch.randn(4, 20, 128, requires_grad=True)
    norm = _Norm(1 + 0.1 * torch.randn(128))
    grad = torch.randn(4, 20, 128).to(torch.bfloat16)
    ours = training._rms_norm(x, norm, torch.bfloat16)
    theirs = _norm_expression(x, norm).to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=8e-3, atol=1e-6)
    for a, b in zip(
        torch.autograd.grad(ours, (x, norm.weight), grad),
        torch.autograd.grad(theirs, (x, norm.weight), grad),
        strict=True,
    ):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert training.compute_dtype(x) == torch.bfloat16
    assert training.compute_dtype(x) == torch.float32


def test_rms_norm_gradient_is_the_same_on_one_and_two_threads() -> None:
    """At a training batch's size (the weight's gradient sums 5,120 rows): the same bits on
    one and two threads, as `train.concurrent` needs."""
    torch.manual_seed(2)
    x = torch.randn(64, 80, 128, requires_grad=True)
    norm = _Norm(1 + 0.1 * torch.randn(128))
    grad = torch.randn(64, 80, 128).to(torch.bfloat16)

    def gradients():
        out = training._rms_norm(x, norm, torch.bfloat16)
        return [g.clone() for g in torch.autograd.grad(out, (x, norm.weight), grad)]

    one, two = (_on_threads(t, gradients) for t in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_is_the_expression_to_the_bit(dtype: torch.dtype) -> None:
    """`_SwiGLU` on the fused gate/up projection: the same output and the same gradient,
    bit for bit, as autograd's `silu(gate) * up` of its two halves, in fp32 and in bf16 (the
    autocast matmul's output); and exact in float64 (gradcheck)."""
    torch.manual_seed(3)
    x64 = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(training._SwiGLU.apply, (x64,))
    gate_up = torch.randn(64, 80, 2 * 192).to(dtype).requires_grad_()
    grad = torch.randn(64, 80, 192).to(dtype)
    gate, up = gate_up.chunk(2, -1)
    theirs = F.silu(gate) * up
    ours = training._swiglu(gate_up)
    assert ours.dtype == dtype
    assert torch.equal(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours, gate_up, grad)
    (g_theirs,) = torch.autograd.grad(theirs, gate_up, grad)
    assert g_ours.dtype == dtype
    assert torch.equal(g_ours, g_theirs)
