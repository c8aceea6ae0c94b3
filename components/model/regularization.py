"""Residual dropout for models whose architecture has none (Llama: attention dropout only).

GPT-2 and SASRec drop the embeddings and each block's attention and MLP outputs before they
join the residual stream; that is what a small recommender trained from scratch on a few
thousand users needs to stop overfitting. Here it is added with forward hooks, so the model
stays a stock transformers model (saved and loaded as usual, nothing extra in its weights)
and the hooks act only in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _drop(p: float):
    def hook(module: torch.nn.Module, args, output):
        if not module.training or p == 0:
            return output
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, training=True), *output[1:])
        return F.dropout(output, p, training=True)

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
