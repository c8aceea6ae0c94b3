"""The output head's cross-entropy without its full logits (`linear_cross_entropy`).

`F.cross_entropy(F.linear(x, weight).float(), targets)` writes the logits of every labelled
position over the whole vocabulary ([n, V], 2,600 x 3,768 for the tiny profile's batch), casts
them to fp32, and its backward makes several more passes over arrays of that size (the one-hot
fill, `log_softmax`'s backward with a second exponential, the cast back): on the CPU those
memory-bound passes took a third of a training step. This computes the same loss a slice of
rows at a time, each slice's logits small enough to stay in the cache, and forms the gradient
(softmax minus one-hot) in the same pass, so the backward only scales what the forward left
(the approach of fused linear cross-entropy kernels such as Liger's, written in torch ops).

Numerics follow the unfused path under autocast: the matmuls in the compute dtype (bf16 under
CPU or CUDA autocast, else the inputs' dtype), the softmax and the loss in fp32. The weight's
gradient is summed over the slices in fp32 (the unfused path rounds it once to bf16), and the
loss is summed slice by slice, so the two agree to rounding, not bit for bit. It is
deterministic: the slices and their order are fixed.

A last slice shorter than `CHUNK_ROWS` is padded with zero rows to a multiple of `PAD_ROWS`
(their loss and gradients dropped): the CPU's bf16 matmuls (oneDNN) JIT-compile a kernel for
every new shape, a few ms each, and without the padding every batch's row count is new.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ROWS = 256  # rows of logits per slice: 256 x ~4k fp32 is about one core's L2
PAD_ROWS = 32  # a shorter last slice is padded to a multiple of this: its matmuls' shapes repeat


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of x runs in: autocast's where it is on (CPU or CUDA), else x's."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, scale: float, dtype: torch.dtype, need_x, need_w):
        xs, w = x.to(dtype), weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        gx = torch.empty_like(xs) if need_x else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        for start in range(0, xs.shape[0], CHUNK_ROWS):
            xc = xs[start : start + CHUNK_ROWS]
            tc = targets[start : start + CHUNK_ROWS, None]
            rows = len(xc)
            pad = -rows % PAD_ROWS  # a short last slice: zero rows up to a multiple of PAD_ROWS
            if pad:
                xc, tc = F.pad(xc, (0, 0, 0, pad)), F.pad(tc, (0, 0, 0, pad))
            logits = (xc @ w.t()).float()  # [c, V]: as F.linear in `dtype`, then .float()
            top = logits.amax(1, keepdim=True)
            picked = logits.gather(1, tc)
            probs = logits.sub_(top).exp_()  # in place: unnormalised probabilities
            norm = probs.sum(1, keepdim=True)
            total += (norm.log() + top - picked)[:rows].sum()
            if need_x or need_w:  # d(scale * sum of losses) / d logits = scale * (p - one-hot)
                probs.mul_(scale / norm).scatter_add_(1, tc, torch.full_like(picked, -scale))
                probs[rows:] = 0  # the padding rows add nothing to either gradient
                g = probs.to(dtype)
                if need_x:
                    gx[start : start + rows] = (g @ w)[:rows]
                if need_w:
                    gw += (g.t() @ xc).float()
        ctx.input_dtypes = (x.dtype, weight.dtype)
        ctx.save_for_backward(gx, gw)  # None where that gradient is not needed
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        gx, gw = ctx.saved_tensors
        x_dtype, w_dtype = ctx.input_dtypes
        if gx is not None and ctx.needs_input_grad[0]:
            gx = (gx * grad_loss.to(gx.dtype)).to(x_dtype)
        if gw is not None and ctx.needs_input_grad[1]:
            gw = (gw * grad_loss).to(w_dtype)
        return gx, gw, None, None, None, None, None


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """`F.cross_entropy(F.linear(x, weight).float(), targets, reduction=...)` (`mean` or `sum`)
    without materialising the logits: x [n, hidden], weight [vocab, hidden], targets long [n],
    each in 0..vocab-1 (no ignored index: pass the labelled rows only)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    n = x.shape[0]
    if n == 0 or x.dim() != 2:  # the unfused path's own answer (nan for an empty mean)
        logits = torch.nn.functional.linear(x, weight).float()
        return torch.nn.functional.cross_entropy(logits, targets, reduction=reduction)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        raise IndexError(
            f"targets must lie in 0..{weight.shape[0] - 1}, got {int(targets.min())}.."
            f"{int(targets.max())}"
        )
    grad_mode = torch.is_grad_enabled()
    need_x, need_w = grad_mode and x.requires_grad, grad_mode and weight.requires_grad
    scale = 1.0 / n if reduction == "mean" else 1.0
    dtype = compute_dtype(x)
    return _LinearCrossEntropy.apply(x, weight, targets, scale, dtype, need_x, need_w)
