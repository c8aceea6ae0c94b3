"""Residual dropout for models whose architecture has none (Llama: attention dropout only).

GPT-2 and SASRec drop the embeddings and each block's attention and MLP outputs before they
join the residual stream; that is what a small recommender trained from scratch on a few
thousand users needs to stop overfitting. Here it is added with forward hooks, so the model
stays a stock transformers model (saved and loaded as usual, nothing extra in its weights)
and the hooks act only in training mode.

The masks come from `keep_mask`, not `F.dropout`: its `bernoulli_` was the largest kernel of
the residual dropout (issue 11; `bench/train_throughput.py`).
"""

from __future__ import annotations

import math

import torch


def keep_mask(
    shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, float]:
    """A 0/1 keep-mask in `dtype` with P(0) = round(p * 2**16) / 2**16, and its rescaling.

    Four 16-bit draws per 64-bit random word: about 4x cheaper on the CPU than `bernoulli_`;
    deterministic under the seed. In the activations' dtype, so neither the product nor its
    gradient converts a bool mask."""
    n = math.prod(shape)
    cut = round(p * 65536)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    keep = (words.view(torch.int16)[:n].view(shape) >= cut - 32768).to(dtype)
    return keep, 65536 / (65536 - cut)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of `x` with `keep_mask`: each element zeroed with probability p
    (to 2**-16), the rest scaled by 1 / (1 - p) in x's dtype, as `F.dropout` scales."""
    keep, scale = keep_mask(x.shape, p, x.dtype, x.device)
    return x * keep.mul_(scale)


def _drop(p: float):
    def hook(module: torch.nn.Module, args, output):
        if not module.training or p == 0:
            return output
        if isinstance(output, tuple):
            return (dropout(output[0], p), *output[1:])
        return dropout(output, p)

    return hook


def add_residual_dropout(model: torch.nn.Module, p: float) -> list:
    """Dropout `p` on the token embeddings and on every attention and MLP output of a
    Llama-style decoder (`model.model.embed_tokens`, `.layers[i].self_attn` / `.mlp`).
    Returns the hook handles (call `.remove()` to undo). No-op for p == 0 or other layouts."""
    if p == 0:
        return []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, "model", None)
    layers = getattr(decoder, "layers", None)
    embed = getattr(decoder, "embed_tokens", None)
    if layers is None or embed is None:
        return []
    modules = [embed] + [m for layer in layers for m in (layer.self_attn, layer.mlp)]
    return [m.register_forward_hook(_drop(p)) for m in modules]
