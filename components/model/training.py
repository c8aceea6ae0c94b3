"""Training: task mixing, length-bucketed batches, loss on response tokens only.

The LM head is applied only at positions that have a label, which on identifier-heavy
sequences skips most of the vocabulary projection (the most expensive matmul for a
small model with a large vocabulary).

Under torchrun (WORLD_SIZE > 1) the same `Trainer` runs data-parallel: the model is wrapped
in DDP, each rank trains on its rows of every batch and the logged loss is all-reduced (see
`components.model.distributed`). On CUDA the forward runs under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import io
import math
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
from components.model.prompts import IGNORE, Example, PromptBuilder


def seqrec_examples(
    prompts: PromptBuilder, sequences: list[np.ndarray], max_history: int
) -> list[Example]:
    """Each training target exactly once, with at most `max_history` items of context, as in
    evaluation (train as you evaluate).

    A window holds at most `max_history + 1` items, so no target sees more than `max_history`
    before it. The first window trains every item after the first; each later window trains
    its last `stride` (about half a history) items, so those targets see between
    `max_history - stride + 1` and `max_history` items, and a target costs about two items of
    forward pass, as with longer windows.
    """
    out: list[Example] = []
    stride = max(1, (max_history + 1) // 2)
    for seq in sequences:
        n = len(seq)
        if n < 2:
            continue
        done = min(n, max_history + 1)
        out.append(prompts.seqrec_window(seq[:done], min_history=1))
        while done < n:
            end = min(n, done + stride)
            start = max(0, end - max_history - 1)
            out.append(prompts.seqrec_window(seq[start:end], min_history=done - start))
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
) -> dict[str, list[Example]]:
    """One epoch's examples per task; a weight is the expected passes over that task's data."""

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
            seqrec_examples(prompts, train_sequences, max_history), weights.seqrec
        )
    if weights.item2id > 0:
        out["item2id"] = sample(
            [prompts.item2id(t, i) for i, t in enumerate(texts)], weights.item2id
        )
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


def length_bucketed_batches(
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    rng: np.random.Generator,
    bucket_factor: int = 50,
) -> Iterator[Batch]:
    """Shuffle, sort within large buckets by length, batch, shuffle batches: little padding."""
    order = rng.permutation(len(examples))
    chunks: list[np.ndarray] = []
    bucket = batch_size * bucket_factor
    for start in range(0, len(order), bucket):
        block = order[start : start + bucket]
        block = block[np.argsort([len(examples[i].input_ids) for i in block], kind="stable")]
        chunks.extend(block[i : i + batch_size] for i in range(0, len(block), batch_size))
    for b in rng.permutation(len(chunks)):
        yield collate([examples[i] for i in chunks[b]], pad_id)


def collate(examples: list[Example], pad_id: int) -> Batch:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return Batch(ids, mask, labels, int((labels[:, 1:] != IGNORE).sum()))


def response_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy on labelled positions; the head runs only there."""
    # Right padding + causal attention: real tokens never attend to the padding, so no mask is
    # needed, and without one SDPA takes its fast causal kernel (a padding mask is ~8x slower on CPU).
    hidden = model.get_decoder()(input_ids=batch.input_ids).last_hidden_state
    targets = batch.labels[:, 1:]
    selected = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][selected])
    return F.cross_entropy(logits.float(), targets[selected])


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
    local = Batch(batch.input_ids[rows, :width], mask[:, :width], labels, n_label)
    return local, n_label * distributed.world_size() / max(1, batch.n_label_tokens)


class _ResponseLossModule(torch.nn.Module):
    """`response_loss` as a forward, so that DDP sees (and synchronises) the pass it runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return response_loss(self.model, Batch(input_ids, attention_mask, labels, 0))


def _cuda_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """On CUDA: bf16 autocast, and flash/efficient attention rather than cuDNN's, which plans
    anew for every sequence length (bucketed batches have many). On the CPU: nothing."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
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
        self, model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int, total_epochs: int
    ) -> None:
        self.model = model
        self.cfg = cfg
        device = next(model.parameters()).device
        self.data_parallel = distributed.setup(device)
        self._loss: torch.nn.Module = _ResponseLossModule(model)
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
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.98),
        )
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
        for batch in batches:
            batch, share = shard(batch) if self.data_parallel else (batch, 1.0)
            batch = Batch(
                batch.input_ids.to(device),
                batch.attention_mask.to(device),
                batch.labels.to(device),
                batch.n_label_tokens,
            )
            with _cuda_precision(device):
                loss = self._loss(batch.input_ids, batch.attention_mask, batch.labels)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * share).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
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
