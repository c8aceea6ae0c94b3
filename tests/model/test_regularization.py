"""Residual dropout hooks: active only in training, the model itself unchanged."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from components.model.regularization import add_residual_dropout


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(cfg)


def test_dropout_acts_in_training_only_and_leaves_weights_alone() -> None:
    plain, hooked = _model(), _model()
    handles = add_residual_dropout(hooked, 0.5)
    assert len(handles) == 1 + 2 * 2  # embeddings, and attention + MLP of each layer
    ids = torch.randint(0, 50, (2, 7))
    plain.eval(), hooked.eval()
    assert torch.equal(plain(input_ids=ids).logits, hooked(input_ids=ids).logits)
    hooked.train(), plain.train()  # attention dropout is 0 in this config: plain is deterministic
    torch.manual_seed(1)
    a = hooked(input_ids=ids).logits
    torch.manual_seed(1)
    b = hooked(input_ids=ids).logits
    assert torch.equal(a, b)  # seeded: reproducible
    assert not torch.equal(a, plain(input_ids=ids).logits)
    assert plain.state_dict().keys() == hooked.state_dict().keys()
    for h in handles:
        h.remove()
    assert torch.equal(hooked(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_zero_dropout_adds_no_hooks() -> None:
    assert add_residual_dropout(_model(), 0.0) == []
