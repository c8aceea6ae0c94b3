"""Residual dropout hooks: active only in training, the model itself unchanged."""

from __future__ import annotations

import torch

from components.model.regularization import add_residual_dropout
from tests.model.test_training import tiny_llama


def _model():
    return tiny_llama(dropout=0.0)


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


def test_dropout_zeroes_at_its_rate_and_scales_as_torch_does() -> None:
    from components.model.regularization import dropout

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.ones(64, 80, 128, dtype=dtype, requires_grad=True)
        y = dropout(x, 0.1)
        # F.dropout's 1 / (1 - p) (p to 2**-16), in x's dtype
        scaled = torch.tensor(65536 / (65536 - round(0.1 * 65536)), dtype=dtype)
        assert y.dtype == dtype and set(y.unique().tolist()) == {0.0, float(scaled)}
        assert abs(float((y == 0).float().mean()) - 0.1) < 0.003
        y.sum().backward()
        assert torch.equal(x.grad, y.detach())  # the gradient goes through the same mask
    torch.manual_seed(1)
    a = dropout(torch.ones(1000), 0.3)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(torch.ones(1000), 0.3))  # seeded: reproducible
