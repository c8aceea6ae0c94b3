"""Attention whose gradients do not depend on the number of CPU threads.

`train.concurrent` trains static and SIIT at once, each on a share of the threads, and must
give the models that training them in turn on all the threads gives. ATen's CPU softmax
backward does not give the same bits on 1 and 2 threads when a row's length is not a
multiple of the vector width (rows of 47 or 100 on an AVX2 machine, fp32), and attention
rows are as long as each batch's longest sequence. `softmax` keeps ATen's forward and writes
the backward out, reducing each row on its own.

The tiny Llama's training path (`training._llama_hidden`) calls `softmax` itself. A model that
trains through transformers' own forward (the tiny T5) gets it through `use_on(model)`, which
switches the model to `ATTENTION`: transformers' eager attention with this softmax, registered
with transformers' attention and mask interfaces (the eager additive mask). Its forward is
T5's eager one, bit for bit."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTENTION = "siit_thread_invariant"


class _Softmax(torch.autograd.Function):
    """Softmax over the last dimension whose backward gives the same bits on any number of
    threads: ATen's forward; the backward, `y * (g - sum(g * y))`, reduces each row on its
    own."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.softmax(x, -1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        gy = grad * y
        return torch.addcmul(gy, y, gy.sum(-1, keepdim=True), value=-1)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, thread-count invariant in its gradient (`_Softmax`)."""
    return _Softmax.apply(x)


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention (query, key, value: [batch, heads, length, head_dim]; an
    additive float mask; T5's `position_bias`; grouped key/value heads repeated) with `softmax`
    in place of `torch.softmax`. Returns the output [batch, length, heads, head_dim] and the
    attention weights, as every eager attention does."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    weights = softmax(scores)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, eager_mask)


def use_on(model: torch.nn.Module) -> torch.nn.Module:
    """Switch `model` (a transformers model with the attention interface) and its sub-models
    to `ATTENTION`. Not saved with the model: its config.json keeps no implementation."""
    model.set_attn_implementation(ATTENTION)
    return model
