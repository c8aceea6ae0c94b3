"""Training: task mixing, length-bucketed batches, loss on response tokens only.

The LM head is applied only at positions that have a label, which on identifier-heavy
sequences skips most of the vocabulary projection (the most expensive matmul for a
small model with a large vocabulary).

Under torchrun (WORLD_SIZE > 1) the same `Trainer` runs data-parallel: the model is wrapped
in DDP, each rank trains on its rows of every batch and the logged loss is all-reduced (see
`components.model.distributed`). On CUDA the forward runs under bf16 autocast.

On the CPU (where the tiny profile trains) a step of a small model is mostly elementwise
traffic, not matmuls, so a plain `LlamaForCausalLM` trains through `_llama_response_features`: the
same computation as the model's own forward, written for it (the q/k/v and gate/up weights are
concatenated at use, so the saved weights stay the stock ones; cheaper attention dropout; the
last layer's attention output, MLP, final norm and head only where there are labels; the head
and its cross-entropy fused, a cache-sized slice of rows at a time, `fused_loss`), and
under bf16 autocast where the CPU multiplies bf16 natively (AVX512-BF16 or AMX), with fp32
master weights, optimizer and loss. See docs/benchmarks.md (training throughput) for the
profile behind each choice.

An encoder-decoder (`model.architecture: t5`) trains on the same examples, each one prompt
followed by one response: the prompt goes to the encoder and the response is the decoder's
target (`_seq2seq_response_logits`). Its seqrec examples have one target each
(`one_per_target`), with at most `max_history` items before it.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from components.config import TaskWeights, TrainConfig
from components.io import atomic_write_bytes
from components.model import distributed
from components.model.attention import softmax
from components.model.decoding import (
    CodeLevels,
    code_levels,
    is_encoder_decoder,
    scores_item_rows,
)
from components.model.fused_loss import compute_dtype, linear_cross_entropy
from components.model.head import ItemRows, item_rows, output_weight
from components.model.prompts import IGNORE, Example, PromptBuilder
from components.model.regularization import keep_mask
from components.progress import progress

ROW_QUANTUM = 64  # the last layer's rows: a multiple of this (_padded_positions)


def seqrec_examples(
    prompts: PromptBuilder,
    sequences: list[np.ndarray],
    max_history: int,
    one_per_target: bool = False,
    stride: int = 0,
    banded: bool = False,
) -> list[Example]:
    """Each training target exactly once, with at most `max_history` items of context, as in
    evaluation (train as you evaluate).

    one_per_target: one example per target, its prompt the (at most `max_history`) items
    before it (an encoder-decoder, which cannot train several targets in one pass).

    Otherwise windows (a causal LM): a window holds at most `max_history + 1` items, so no
    target sees more than `max_history` before it. The first window trains every item after
    the first; each later window trains its last `stride` items (`train.window_stride`; 0, the
    default, is about half a history), so those targets see between `max_history - stride + 1`
    and `max_history` items. At half a history a target costs about two items of forward
    pass; at `max_history` the windows overlap by one item (as SASRec trains: a target sees
    1 to `max_history` items) and a target costs about one.

    banded (`train.banded`): a window holds `max_history + stride` items (stride 0: twice a
    history) and its attention is banded, so that every target sees exactly its last
    `max_history` items (fewer only at the start of a sequence), as evaluation gives them; a
    target costs `(max_history + stride) / stride` items of forward pass (1.5 at the default).
    """
    band = max_history if banded and not one_per_target else 0
    return [
        prompts.seqrec_window(window, min_history=min_history, band=band)
        for window, min_history in seqrec_windows(
            sequences, max_history, one_per_target, stride, banded
        )
    ]


def seqrec_windows(
    sequences: list[np.ndarray],
    max_history: int,
    one_per_target: bool = False,
    stride: int = 0,
    banded: bool = False,
) -> list[tuple[np.ndarray, int]]:
    """The items of every `seqrec_examples` row, in its order, and how many of them lead in
    unlabelled (map-free: which rows a change of identifiers touches)."""
    out: list[tuple[np.ndarray, int]] = []
    if one_per_target:
        for seq in sequences:
            for t in range(1, len(seq)):
                window = seq[max(0, t - max_history) : t + 1]
                out.append((window, len(window) - 1))
        return out
    if banded:
        stride = stride or 2 * max_history
        first, lead = max_history + stride, max_history
    else:
        if stride < 0 or stride > max_history:
            raise ValueError(
                f"window stride must be 0 (half a history) to {max_history}, not {stride}"
            )
        stride = stride or max(1, (max_history + 1) // 2)
        first, lead = max_history + 1, max_history + 1 - stride
    for seq in sequences:
        n = len(seq)
        if n < 2:
            continue
        done = min(n, first)
        out.append((seq[:done], 1))
        while done < n:
            end = min(n, done + stride)
            start = max(0, min(done - lead, end - max_history - 1))
            out.append((seq[start:end], done - start))
            done = end
    return out


def task_examples(
    prompts: PromptBuilder,
    weights: TaskWeights,
    *,
    train_sequences: list[np.ndarray],
    texts: list[str],
    titles: list[str],
    max_history: int,
    rng: np.random.Generator,
    one_per_target: bool = False,
    stride: int = 0,
    banded: bool = False,
    item2id_items: np.ndarray | None = None,
) -> dict[str, list[Example]]:
    """One epoch's examples per task; a weight is the expected passes over that task's data.
    one_per_target, stride, banded: how seqrec targets are laid out (`seqrec_examples`).
    item2id_items: the items the item2id task covers (`siit.text_holdout`); None = all."""

    def sample(pool: list[Example], weight: float) -> list[Example]:
        whole, frac = int(weight), weight - int(weight)
        extra = (
            [pool[i] for i in rng.choice(len(pool), int(round(frac * len(pool))), replace=False)]
            if frac
            else []
        )
        return pool * whole + extra

    out: dict[str, list[Example]] = {}
    if weights.seqrec > 0:
        out["seqrec"] = sample(
            seqrec_examples(prompts, train_sequences, max_history, one_per_target, stride, banded),
            weights.seqrec,
        )
    if weights.item2id > 0:
        items = range(len(texts)) if item2id_items is None else item2id_items
        out["item2id"] = sample([prompts.item2id(texts[i], i) for i in items], weights.item2id)
    if weights.id2item > 0:
        out["id2item"] = sample(
            [prompts.id2item(i, t) for i, t in enumerate(titles)], weights.id2item
        )
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    n_label_tokens: int
    # banded seqrec windows (`Example.band`): the band, and which rows have it (bool [rows])
    band: tuple[int, int, int] | None = None
    band_rows: torch.Tensor | None = None
    # training only (`train.band_min`): each target item's band this step, long [items]
    band_widths: torch.Tensor | None = None


def length_bucketed_batches(
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    rng: np.random.Generator,
    bucket_factor: int = 50,
) -> Iterator[Batch]:
    """Shuffle, sort within large buckets by length, batch, shuffle batches: little padding.

    A batch holds `batch_size` examples, counted in `batch_units`: a banded window counts as
    the plain windows its targets would fill, so the steps of an epoch and the targets of a
    step are those of plain windows (the optimisation is the same, only cheaper)."""
    order = rng.permutation(len(examples))
    units = np.array([batch_units(e) for e in examples])
    chunks: list[np.ndarray] = []
    bucket = batch_size * bucket_factor
    for start in range(0, len(order), bucket):
        block = order[start : start + bucket]
        block = block[np.argsort([len(examples[i].input_ids) for i in block], kind="stable")]
        chunks.extend(_fill(block, units[block], batch_size))
    for b in rng.permutation(len(chunks)):
        yield collate([examples[i] for i in chunks[b]], pad_id)


def batch_units(example: Example) -> float:
    """What an example counts for in a batch: 1, or for a banded window its targets over a
    plain window's (about half a history)."""
    if example.band is None:
        return 1.0
    _, levels, history = example.band
    targets = sum(label != IGNORE for label in example.labels) / levels
    return targets / max(1, (history + 1) // 2)


def epoch_steps(examples: list[Example], batch_size: int) -> int:
    """About how many batches `length_bucketed_batches` makes of `examples` (exactly, when
    every example counts 1)."""
    return math.ceil(sum(batch_units(e) for e in examples) / batch_size - 1e-9)


def _fill(block: np.ndarray, units: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive runs of `block` holding at most `batch_size` units each (at least one
    example): runs of `batch_size` examples when every unit is 1."""
    if bool((units == 1).all()):
        return [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    out, start, total = [], 0, 0.0
    for i, u in enumerate(units):
        if i > start and total + u > batch_size + 1e-9:
            out.append(block[start:i])
            start, total = i, 0.0
        total += u
    out.append(block[start:])
    return out


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right-padded rows; built in numpy with one copy per array, not one tensor per row."""
    n = len(examples)
    lengths = np.fromiter((len(e.input_ids) for e in examples), dtype=np.int64, count=n)
    label_lengths = np.fromiter((len(e.labels) for e in examples), dtype=np.int64, count=n)
    width = int(lengths.max())
    columns = np.arange(width)
    mask = columns < lengths[:, None]
    ids = np.full((n, width), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter(
        itertools.chain.from_iterable(e.input_ids for e in examples),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    labels = np.full((n, width), IGNORE, dtype=np.int64)
    labels[columns < label_lengths[:, None]] = np.fromiter(
        itertools.chain.from_iterable(e.labels for e in examples),
        dtype=np.int64,
        count=int(label_lengths.sum()),
    )
    n_label = int((labels[:, 1:] != IGNORE).sum())
    bands = {e.band for e in examples} - {None}
    if len(bands) > 1:
        raise ValueError(f"one batch holds windows of different bands: {sorted(bands)}")
    band = bands.pop() if bands else None
    band_rows = torch.tensor([e.band is not None for e in examples]) if band is not None else None
    return Batch(
        torch.from_numpy(ids),
        torch.from_numpy(mask.astype(np.int64)),
        torch.from_numpy(labels),
        n_label,
        band,
        band_rows,
    )


def response_loss(
    model: torch.nn.Module, batch: Batch, per_row: bool = False, item_weight: float = 0.0
) -> torch.Tensor:
    """Next-token cross-entropy on labelled positions; the head runs only there.

    The mean over the batch's labelled tokens, or with `per_row` each row's sum (float32, one
    per row: the loss of a batch's rows can then be reused one by one). `item_weight` > 0
    (`train.item_loss`; not with `per_row`, which measures the identifiers' loss alone): plus
    that weight times each seqrec target's next-item cross-entropy over the item rows
    (`next_item_loss`), summed and divided by the same count of labelled tokens."""
    mask = band_mask(batch)
    levels = code_levels(model)
    features = None  # the decoder-only paths: final hidden states at the labelled positions
    if is_encoder_decoder(model) and mask is None:
        logits, targets, selected = _seq2seq_response_logits(model, batch.input_ids, batch.labels)
        if levels is not None:
            logits, targets = _level_logits(logits, targets, selected, levels)
    elif _fast_llama(model, batch.input_ids.device, banded=mask is not None):
        features, targets, selected = _llama_response_features(
            model, batch.input_ids, batch.labels, mask
        )
        if levels is not None:
            logits, targets = _level_head(features, model.lm_head.weight, targets, selected, levels)
        elif per_row:
            logits = F.linear(features, output_weight(model))
        else:  # the head and its loss fused, slice by slice (fused_loss)
            loss = linear_cross_entropy(features, output_weight(model), targets[selected])
            return _plus_item_loss(loss, model, batch, selected, features, item_weight)
    elif mask is not None:
        raise ValueError(
            "banded seqrec windows (train.banded) train through the Llama training path only; "
            f"{type(model).__name__} cannot take it (supports_banded)"
        )
    else:
        # Right padding + causal attention: real tokens never attend to the padding, so no mask
        # is needed, and without one SDPA takes its fast causal kernel (a padding mask is ~8x
        # slower on CPU).
        hidden = model.get_decoder()(input_ids=batch.input_ids).last_hidden_state
        targets = batch.labels[:, 1:]
        selected = targets != IGNORE
        features = hidden[:, :-1][selected]
        logits = model.get_output_embeddings()(features)
        if levels is not None:
            logits, targets = _level_logits(logits, targets, selected, levels)
    if not per_row:
        loss = F.cross_entropy(logits.float(), targets[selected])
        return _plus_item_loss(loss, model, batch, selected, features, item_weight)
    token = F.cross_entropy(logits.float(), targets[selected], reduction="none")
    rows = selected.nonzero(as_tuple=True)[0]  # row-major, as the boolean index above
    return torch.zeros(selected.shape[0], dtype=token.dtype, device=token.device).index_add_(
        0, rows, token
    )


def _plus_item_loss(
    loss: torch.Tensor,
    model: torch.nn.Module,
    batch: Batch,
    selected: torch.Tensor,
    features: torch.Tensor | None,
    item_weight: float,
) -> torch.Tensor:
    """`loss` plus `item_weight` times the batch's next-item loss per labelled token."""
    if not item_weight:
        return loss
    if features is None:
        raise ValueError(
            f"train.item_loss ({item_weight}) trains through a decoder-only model's "
            f"hidden states; {type(model).__name__} has none to give: set it to 0"
        )
    items = next_item_loss(model, batch.input_ids, selected, features)
    return loss + item_weight * items / selected.sum().clamp(min=1)


def next_item_positions(
    input_ids: torch.Tensor, selected: torch.Tensor, rows: ItemRows
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a seqrec target item begins, and which item it is: bool [batch, length - 1] over
    the positions that predict a token (position t predicts token t + 1; `selected` are the
    labelled ones), True where the predicted token is an item's first code, and each such
    item's row index (long [n], row-major).

    A history item reads as its leading codes and then its own token (`model.item_inputs`), so
    the position predicting an item's first code is the one whose `levels`-th next input token
    is an item token; no other labelled position is (the tokens there are codes), and the
    text tasks hold no item tokens."""
    ahead = F.pad(input_ids[:, rows.levels :], (0, rows.levels - 1), value=-1) - rows.base
    at = selected & (ahead >= 0) & (ahead < rows.count)
    return at, ahead[at]


def next_item_loss(
    model: torch.nn.Module, input_ids: torch.Tensor, selected: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """SASRec's objective on the generative model (`train.item_loss`): at every position that
    predicts a seqrec target's first code, the cross-entropy of that item among all item rows
    (the items' input embeddings, tied to the output head), summed over those positions.
    `features` are the final hidden states at the `selected` positions, in their order."""
    rows = item_rows(model)
    if rows is None:
        raise ValueError(
            "train.item_loss trains the item rows of model.item_inputs; this model has none "
            "(set model.item_inputs true, or train.item_loss 0)"
        )
    at, items = next_item_positions(input_ids, selected, rows)
    weight = model.get_input_embeddings().weight[rows.base : rows.base + rows.count]
    return linear_cross_entropy(features[at[selected]], weight, items, reduction="sum")


def _level_targets(
    targets: torch.Tensor, selected: torch.Tensor, levels: CodeLevels
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each labelled token's identifier level, and the targets renumbered within their level."""
    tokens = targets[selected]
    level = levels.level_of.to(tokens.device)[tokens]
    if bool((level < 0).any()):
        raise ValueError(
            "model.code_softmax: every training target must be an identifier token (text "
            "targets, the id2item task, need the whole-vocabulary softmax)"
        )
    renumbered = targets.masked_scatter(selected, levels.index_of.to(tokens.device)[tokens])
    return level, renumbered


def _level_head(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    selected: torch.Tensor,
    levels: CodeLevels,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output head over each labelled position's level only (`model.code_softmax`): one
    small matmul per level instead of the whole vocabulary. Logits [n, largest level], -inf
    past a smaller level's end, and the targets renumbered within their level."""
    level, renumbered = _level_targets(targets, selected, levels)
    width = max(len(ids) for ids in levels.ids)
    parts = []
    for lvl, ids in enumerate(levels.ids):
        rows = (level == lvl).nonzero().flatten()
        if len(rows):
            part = F.linear(x[rows], weight[ids.to(weight.device)])
            parts.append((rows, F.pad(part, (0, width - len(ids)), value=float("-inf"))))
    logits = torch.cat([p for _, p in parts])
    order = torch.cat([r for r, _ in parts]).argsort()
    return logits[order], renumbered


def _level_logits(
    logits: torch.Tensor, targets: torch.Tensor, selected: torch.Tensor, levels: CodeLevels
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-vocabulary logits [n, vocabulary] of labelled positions cut to each one's level
    (a model whose forward computes the whole head, e.g. T5)."""
    level, renumbered = _level_targets(targets, selected, levels)
    width = max(len(ids) for ids in levels.ids)
    table = torch.stack([F.pad(ids, (0, width - len(ids)), value=-1) for ids in levels.ids]).to(
        logits.device
    )[level]  # [n, width] vocabulary ids, -1 past the level's end
    cut = logits.gather(1, table.clamp(min=0))
    return cut.masked_fill(table < 0, float("-inf")), renumbered


def band_mask(batch: Batch) -> torch.Tensor | None:
    """The attention that banded windows need, as a bool `blocked` mask (True: may not attend;
    the causal mask included): [length, length] shared by the batch's rows, or [rows, length,
    length] when rows without the band are long enough to tell the difference. None: plain
    causal attention is already exact (no band, or windows no longer than a history).

    With `prefix` prompt tokens before items of `levels` tokens each, a token predicts the
    next token, which belongs to item t = (position - prefix + 1) // levels; it may attend to
    the prefix and to items t - history .. t, causally: exactly the context that evaluation
    gives when it generates item t after its last `history` items. With `band_widths`
    (training, `train.band_min`), item t's band is `band_widths[t]` items instead."""
    if batch.band is None:
        return None
    prefix, levels, history = batch.band
    length = batch.input_ids.shape[1]
    widths = batch.band_widths
    shortest = history if widths is None else int(widths.min())
    first = prefix + levels * (shortest + 1) - 1  # the first position the band can restrict
    if length <= first:
        return None
    device = batch.input_ids.device
    pos = torch.arange(length, device=device)
    item = torch.div(pos - prefix, levels, rounding_mode="floor")  # a key's item, prefix < 0
    target = torch.div(pos - prefix + 1, levels, rounding_mode="floor")  # a query's target item
    if widths is None:
        band = torch.full_like(target, history)
    else:
        band = widths.to(device)[target.clamp(0, len(widths) - 1)]
    blocked = (pos[None, :] > pos[:, None]) | (
        (pos[:, None] >= prefix)
        & (pos[None, :] >= prefix)
        & (item[None, :] < (target - band)[:, None])
    )
    rows = batch.band_rows
    if rows is None or bool(rows.all()):
        return blocked
    plain_lengths = batch.attention_mask[~rows.to(batch.attention_mask.device)].sum(1)
    if int(plain_lengths.max()) <= first:  # other rows end before the band restricts anything
        return blocked
    causal = pos[None, :] > pos[:, None]
    return torch.where(rows.to(device)[:, None, None], blocked, causal)


def seq2seq_split(
    input_ids: torch.Tensor, labels: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows laid out as prompt, response, padding (right-padded `collate` rows whose labels
    are the response) -> (encoder ids, encoder mask, decoder targets), right-padded, the
    targets with IGNORE as padding."""
    labelled = labels != IGNORE
    n = labelled.sum(1)
    width = labels.shape[1]
    first = labelled.int().argmax(1)
    last = width - 1 - labelled.flip(1).int().argmax(1)
    if bool(((n > 0) & (last - first + 1 != n)).any()):
        raise ValueError(
            "an encoder-decoder example is one prompt followed by one response (seqrec windows "
            "with several targets need seqrec_examples(..., one_per_target=True))"
        )
    first = torch.where(n > 0, first, width).clamp(min=1)  # a row without labels: all prompt
    columns = torch.arange(width, device=labels.device)
    enc_width = int(first.max())
    enc_mask = columns[None, :enc_width] < first[:, None]
    enc_ids = input_ids[:, :enc_width].masked_fill(~enc_mask, pad_id)
    dec_columns = columns[: max(1, int(n.max()))]
    index = (first[:, None] + dec_columns[None]).clamp(max=width - 1)
    targets = labels.gather(1, index).masked_fill(dec_columns[None] >= n[:, None], IGNORE)
    return enc_ids, enc_mask.long(), targets


def _seq2seq_response_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An encoder-decoder's cross-entropy on the response: the prompt is encoded, the decoder
    reads the response shifted right (after its start token) and predicts every token of it."""
    c = model.config
    enc_ids, enc_mask, targets = seq2seq_split(input_ids, labels, c.pad_token_id)
    start = torch.full_like(targets[:, :1], c.decoder_start_token_id)
    shifted = torch.cat([start, targets[:, :-1]], 1)
    decoder_ids = shifted.masked_fill(shifted == IGNORE, c.pad_token_id)
    logits = model(input_ids=enc_ids, attention_mask=enc_mask, decoder_input_ids=decoder_ids).logits
    selected = targets != IGNORE
    return logits[selected], targets, selected


# The CPU training path of a plain Llama --------------------------------------------------------


def _fast_llama(model: torch.nn.Module, device: torch.device, banded: bool = False) -> bool:
    """Whether `_llama_response_features` computes exactly what the model's own forward would: a
    stock `LlamaForCausalLM`, default RoPE, no biases, SiLU, as many k/v heads as query heads,
    and no hooks but plain forward hooks on the embeddings and the attention and MLP blocks
    (residual dropout), which it calls itself. It is the path on the CPU, and on any device
    for banded windows (whose attention the model's own forward does not take)."""
    from transformers import LlamaForCausalLM

    if (device.type != "cpu" and not banded) or type(model) is not LlamaForCausalLM:
        return False
    c = model.config
    rope = getattr(c, "rope_parameters", None) or {}
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if (
        rope.get("rope_type", "default") != "default"
        or c.attention_bias
        or getattr(c, "mlp_bias", False)
        or c.hidden_act != "silu"
        or getattr(c, "pretraining_tp", 1) != 1
        or c.num_key_value_heads != c.num_attention_heads
        or head_dim * c.num_attention_heads != c.hidden_size
    ):
        return False
    inner = model.model
    hookable = {id(inner.embed_tokens)} | {
        id(m) for layer in inner.layers for m in (layer.self_attn, layer.mlp)
    }
    for module in model.modules():
        if (
            module._forward_pre_hooks
            or module._forward_hooks_with_kwargs
            or module._backward_hooks
            or getattr(module, "_backward_pre_hooks", None)
            or (module._forward_hooks and id(module) not in hookable)
        ):
            return False
    return not (
        torch.nn.modules.module._global_forward_hooks
        or torch.nn.modules.module._global_forward_pre_hooks
    )


def supports_banded(model: torch.nn.Module) -> bool:
    """Whether `model` can train on banded seqrec windows (`train.banded`): the Llama training
    path can take it (the tiny decoder-only profile; not T5, not a LoRA-wrapped model)."""
    return _fast_llama(model, torch.device("cpu"), banded=True)


def _hooks(module: torch.nn.Module, inputs: tuple, output):
    """The module's forward hooks, as its own `__call__` would run them."""
    for hook in module._forward_hooks.values():
        result = hook(module, inputs, output)
        if result is not None:
            output = result
    return output


class _RMSNorm(torch.autograd.Function):
    """LlamaRMSNorm, `weight * (x * rsqrt(mean(x**2) + eps))`, in fewer passes over x.

    Autograd's graph of the expression makes about eleven passes over a tensor of x's size in
    the backward (each elementwise op's own, the mean's expansion, the sum of the two paths
    into x) and five in the forward with the cast a bf16 matmul then makes of the result;
    this makes three and seven: the sum of squares in one reduction, the output written in
    `dtype` directly (bf16 where it feeds an autocast matmul, which then casts nothing), and
    the backward in closed form, gx = r * (gy*w - xhat * mean(gy*w * xhat))."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, dtype: torch.dtype):
        d = x.shape[-1]
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(d).add_(eps).rsqrt_()
        xhat = x * r
        ctx.save_for_backward(xhat, r, weight)
        return torch.mul(xhat, weight, out=torch.empty(x.shape, dtype=dtype, device=x.device))

    @staticmethod
    def backward(ctx, grad):
        xhat, r, weight = ctx.saved_tensors
        grad = grad.float()  # once, not inside each mixed-dtype product (the same values)
        gw = None
        if ctx.needs_input_grad[1]:
            gw = (grad * xhat).flatten(0, -2).sum(0).to(weight.dtype)
        gx = None
        if ctx.needs_input_grad[0]:
            gxhat = grad * weight
            dot = (gxhat * xhat).sum(-1, keepdim=True).div_(xhat.shape[-1])
            gx = torch.addcmul(gxhat, xhat, dot, value=-1).mul_(r)
        return gx, gw, None, None


class _SwiGLU(torch.autograd.Function):
    """`silu(gate) * up` for `gate, up = gate_up.chunk(2, -1)`, the Llama MLP's activation,
    with both halves' gradients written into one [.., 2 x intermediate] tensor.

    Autograd's graph of the expression computes the two halves' gradients as tensors of
    their own and its `chunk` backward then copies them into a new tensor of gate_up's size
    (`aten::cat`, the largest single operator of a MovieLens epoch's profile); here each is
    computed into its half of the one output. The same kernels in the same order as
    autograd's (`mul`, then `silu_backward` on the rounded product), so the gradients are
    the same bits in fp32 and bf16."""

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, -1)
        activated = F.silu(gate)
        ctx.save_for_backward(gate_up, activated)
        return activated * up

    @staticmethod
    def backward(ctx, grad):
        gate_up, activated = ctx.saved_tensors
        gate, up = gate_up.chunk(2, -1)
        out = torch.empty_like(gate_up)
        grad_gate, grad_up = out.chunk(2, -1)
        torch.mul(grad, activated, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return out


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """The Llama MLP's `silu(gate) * up` on the fused gate/up projection: `_SwiGLU`."""
    return _SwiGLU.apply(gate_up)


def _rms_norm(
    x: torch.Tensor, norm: torch.nn.Module, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """LlamaRMSNorm on an fp32 input (the residual stream is fp32, also under autocast),
    computed in fp32 and returned in `dtype` (default x's): `_RMSNorm`."""
    return _RMSNorm.apply(x, norm.weight, norm.variance_epsilon, dtype or x.dtype)


def _llama_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    selected: torch.Tensor | None = None,
    blocked: torch.Tensor | None = None,
) -> torch.Tensor:
    """The decoder's last hidden states before the final norm: [batch, length, hidden], or
    with `selected` (bool [batch, length]) only at those positions: [n_selected, hidden].
    `blocked` (`band_mask`): the attention mask, [length, length] or per row; None: causal.

    Only the last layer's keys and values are needed at the other positions, so with
    `selected` its attention output projection, residual and MLP run at the selected
    positions only (most of a layer's work; with item2id prompts most positions)."""
    inner, c = model.model, model.config
    batch, length = input_ids.shape
    n_selected = None if selected is None else int(selected.sum())
    heads = c.num_attention_heads
    head_dim = c.hidden_size // heads
    dropout = c.attention_dropout if model.training else 0.0

    rotary = inner.rotary_emb
    positions = torch.arange(length, device=input_ids.device, dtype=torch.float32)
    freqs = positions[:, None] * rotary.inv_freq.to(input_ids.device, torch.float32)[None]
    cos = freqs.cos() * rotary.attention_scaling
    sin = freqs.sin() * rotary.attention_scaling
    # x * cos + rotate_half(x) * sin == x * [cos, cos] + swap_halves(x) * [-sin, sin]
    cos = torch.cat((cos, cos), -1).view(length, 1, 1, head_dim)
    sin = torch.cat((-sin, sin), -1).view(length, 1, 1, head_dim)
    if blocked is None:
        causal = torch.full((length, length), float("-inf"), device=input_ids.device).triu(1)
    else:
        causal = torch.zeros(blocked.shape, device=input_ids.device).masked_fill(
            blocked, float("-inf")
        )
        if causal.dim() == 3:  # one mask per row: the same for each of its heads
            causal = causal[:, None].expand(batch, heads, length, length).flatten(0, 1)

    h = _hooks(inner.embed_tokens, (input_ids,), inner.embed_tokens(input_ids))
    into = compute_dtype(h)  # the norms' outputs feed matmuls only
    layers = inner.layers[: c.num_hidden_layers]
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        last = selected is not None and i == len(layers) - 1
        x = _rms_norm(h, layer.input_layernorm, into)
        w = torch.cat((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))
        # split/unbind, not indexing: their backward joins the pieces' gradients in one pass,
        # where each index's backward fills a zero tensor of the whole and adds them up
        qk, v = F.linear(x, w).view(batch, length, 3, heads, head_dim).split((2, 1), 2)
        swapped = qk.roll(head_dim // 2, -1)  # the halves swapped
        qk = torch.addcmul(qk * cos.to(qk.dtype), swapped, sin.to(qk.dtype))
        q, k = (t.transpose(1, 2).reshape(batch * heads, length, head_dim) for t in qk.unbind(2))
        v = v.squeeze(2).transpose(1, 2).reshape(batch * heads, length, head_dim)
        scores = torch.baddbmm(causal.to(q.dtype), q, k.transpose(1, 2), alpha=head_dim**-0.5)
        probs = softmax(scores)
        if dropout:
            keep, scale = keep_mask(probs.shape, dropout, probs.dtype, probs.device)
            out = torch.bmm(probs * keep, v) * scale
        else:
            out = torch.bmm(probs, v)
        out = out.view(batch, heads, length, head_dim).transpose(1, 2)
        if last:  # from here on each position is on its own: keep the selected ones
            rows, cols = _padded_positions(selected)
            out, h = out[rows, cols].flatten(1), h[rows, cols]
        else:
            out = out.reshape(batch, length, -1)
        out = F.linear(out, attn.o_proj.weight)
        h = h + _hooks(attn, (x,), (out, None))[0]
        x = _rms_norm(h, layer.post_attention_layernorm, into)
        gate_up = F.linear(x, torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)))
        out = F.linear(_swiglu(gate_up), mlp.down_proj.weight)
        h = h + _hooks(mlp, (x,), out)
    return h if n_selected is None else h[:n_selected]


def _padded_positions(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (row, column) indices of `selected`'s True positions, row-major as `x[selected]`
    takes them, padded to a multiple of `ROW_QUANTUM` by repeating the first one.

    The last layer's matmuls run on these rows. Their count differs from batch to batch, and
    oneDNN (the CPU's bf16 matmuls) JIT-compiles a kernel for every new shape: a few ms each,
    10-20% of a step when every step brings new ones (issue 11). Rounded up, the shapes repeat
    and its primitive cache serves them; the repeated rows are computed and dropped."""
    rows, cols = selected.nonzero(as_tuple=True)
    extra = -len(rows) % ROW_QUANTUM
    if extra and len(rows):
        rows = torch.cat((rows, rows[:1].expand(extra)))
        cols = torch.cat((cols, cols[:1].expand(extra)))
    return rows, cols


def _llama_response_features(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    blocked: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(final hidden states at the labelled positions, after the final norm; targets; selected):
    the output head's input, whose logits are `F.linear(features, output_weight(model))`."""
    targets = labels[:, 1:]
    selected = targets != IGNORE
    positions = F.pad(selected, (0, 1))  # position t predicts token t + 1
    hidden = _llama_hidden(model, input_ids, positions, blocked)  # [n_selected, hidden]
    return _rms_norm(hidden, model.model.norm), targets, selected


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def training_precision(device: torch.device, precision: str | None = None) -> str:
    """'bf16' or 'fp32' for training on `device`. `precision` (`train.precision`): 'bf16',
    'fp32' or 'auto' (the default): SIIT_TRAIN_PRECISION when set, else bf16 autocast on CUDA
    and on CPUs with native bf16."""
    choice = precision if precision not in (None, "auto") else None
    choice = choice or os.environ.get("SIIT_TRAIN_PRECISION") or "auto"
    if choice not in ("auto", "bf16", "fp32"):
        raise ValueError(f"training precision must be auto, bf16 or fp32, not {choice!r}")
    if choice != "auto":
        return choice
    return "bf16" if device.type == "cuda" or cpu_bf16_native() else "fp32"


def shard(batch: Batch) -> tuple[Batch, float]:
    """This rank's rows of a global batch, and the factor that turns its mean loss into its share.

    DDP averages gradients over ranks; scaling each rank's mean by (its label tokens x world /
    the batch's label tokens) makes that average the gradient of the global batch's mean loss.
    """
    rows, real = distributed.shard_rows(len(batch.input_ids))
    mask = batch.attention_mask[rows]
    width = int(mask.sum(1).max())
    labels = batch.labels[rows, :width]
    n_label = int((labels[:, 1:] != IGNORE).sum()) if real else 0
    band_rows = batch.band_rows[rows] if batch.band_rows is not None else None
    local = Batch(
        batch.input_ids[rows, :width], mask[:, :width], labels, n_label, batch.band, band_rows
    )
    return local, n_label * distributed.world_size() / max(1, batch.n_label_tokens)


class _ResponseLossModule(torch.nn.Module):
    """`response_loss` as a forward, so that DDP sees (and synchronises) the pass it runs."""

    def __init__(self, model: torch.nn.Module, item_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.item_weight = item_weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        band: tuple[int, int, int] | None = None,
        band_rows: torch.Tensor | None = None,
        band_widths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch = Batch(input_ids, attention_mask, labels, 0, band, band_rows, band_widths)
        return response_loss(self.model, batch, item_weight=self.item_weight)


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16: autocast (on CUDA also flash/efficient attention rather than cuDNN's, which plans
    anew for every sequence length; bucketed batches have many). fp32: nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    if device.type == "cuda":
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        stack.enter_context(sdpa_kernel(backends))
    return stack


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Owns model, optimizer and schedule; one call of `train_epoch` = one epoch.

    `state_dict`/`load_state_dict` make a checkpoint one dict (nanoGPT style) so a killed
    run resumes exactly. Under torchrun it trains data-parallel (DDP) with the same steps.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        steps_per_epoch: int,
        total_epochs: int,
        precision: str | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        device = next(model.parameters()).device
        # `precision` (else train.precision; its 'auto' decides by SIIT_TRAIN_PRECISION or device)
        self.precision = training_precision(device, precision or cfg.precision)
        self.data_parallel = distributed.setup(device)
        # train.item_loss: models without item rows to score (T5, pretrained) ignore it
        item_weight = cfg.item_loss if scores_item_rows(model) else 0.0
        self._loss: torch.nn.Module = _ResponseLossModule(model, item_weight)
        if self.data_parallel:
            device_ids = None
            if device.type == "cuda":  # one GPU per rank
                torch.cuda.set_device(distributed.local_device())
                model.to(distributed.local_device())
                device_ids = [distributed.local_device().index]
            self._loss = torch.nn.parallel.DistributedDataParallel(
                self._loss, device_ids=device_ids
            )
        params = [p for p in model.parameters() if p.requires_grad]
        self._params = list(model.parameters())
        # `model.text_token`: the items' text rows stay as they are now (no gradient, no decay)
        rows = getattr(model, "siit_text_rows", None)
        self._fixed = None
        if rows is not None:
            weight = model.get_input_embeddings().weight
            self._fixed = (weight, rows, weight.detach()[rows].clone())
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.98),
            # one kernel for all parameters instead of ~10 per parameter (CPU and CUDA)
            fused=device.type in ("cpu", "cuda") or None,
        )
        self.steps_per_epoch = steps_per_epoch
        total = max(1, steps_per_epoch * total_epochs)
        warmup = max(1, int(cfg.warmup_ratio * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_with_warmup(s, total, warmup)
        )
        self.epoch = 0

    def train_epoch(self, batches: Iterator[Batch]) -> dict[str, float]:
        device = next(self.model.parameters()).device
        self.model.train()
        loss_sum, label_tokens, tokens, steps = 0.0, 0, 0, 0
        start = time.perf_counter()
        bar = progress(batches, total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}")
        for batch in bar:
            batch, share = shard(batch) if self.data_parallel else (batch, 1.0)
            batch = Batch(
                batch.input_ids.to(device),
                batch.attention_mask.to(device),
                batch.labels.to(device),
                batch.n_label_tokens,
                batch.band,
                batch.band_rows,
                self._band_widths(batch),
            )
            with precision_context(device, self.precision):
                loss = self._loss(
                    batch.input_ids,
                    batch.attention_mask,
                    batch.labels,
                    band=batch.band,
                    band_rows=batch.band_rows,
                    band_widths=batch.band_widths,
                )
            self.optimizer.zero_grad(set_to_none=True)
            (loss * share).backward()
            if self._fixed is not None and self._fixed[0].grad is not None:
                self._fixed[0].grad[self._fixed[1]] = 0  # nor counted in the clipping norm
            torch.nn.utils.clip_grad_norm_(self._params, self.cfg.grad_clip, foreach=True)
            self.optimizer.step()
            if self._fixed is not None:  # undo the weight decay
                with torch.no_grad():
                    self._fixed[0][self._fixed[1]] = self._fixed[2]
            self.scheduler.step()
            loss_sum += loss.item() * batch.n_label_tokens
            label_tokens += batch.n_label_tokens
            tokens += int(batch.attention_mask.sum())
            steps += 1
        self.epoch += 1
        seconds = time.perf_counter() - start
        loss_sum, label_tokens, tokens = distributed.all_reduce_sum(
            [loss_sum, label_tokens, tokens], device
        )
        return {
            "loss": loss_sum / max(1, label_tokens),
            "seconds": seconds,
            "steps": steps,
            "tokens_per_s": tokens / max(seconds, 1e-9),
        }

    def _band_widths(self, batch: Batch) -> torch.Tensor | None:
        """`train.band_min`: each target item's band this step, uniform in [band_min, history]
        (the torch RNG, seeded per epoch: deterministic); None: every band the full history."""
        if batch.band is None or not self.cfg.band_min:
            return None
        prefix, levels, history = batch.band
        items = (batch.input_ids.shape[1] - prefix) // levels + 1
        low = min(self.cfg.band_min, history)
        return torch.randint(low, history + 1, (items,))

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())

    def load(self, path: Path) -> None:
        self.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
