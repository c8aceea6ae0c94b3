"""SASRec (Kang & McAuley, 2018): a causal self-attention next-item model, the usual peer.

Standard architecture (learned positional embeddings, pre-LN self-attention blocks with a
point-wise feed-forward, item embeddings shared with the output layer) trained with
cross-entropy over ALL items (full softmax, as RecBole's `loss_type: CE`) on the training
sequences only. Early stopping on validation NDCG@10; the evaluation setting is the one of
`components.evaluation`: full ranking, items seen before the target excluded.

Item index i is token i + 1; token 0 is padding (left padding, so the last position always
holds the most recent item).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.data import Dataset, EvalSplit
from components.evaluation import evaluate_ranking

SELECTION_METRIC = "ndcg@10"


@dataclass(frozen=True)
class SASRecConfig:
    hidden_size: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    max_len: int = 0  # input length; 0 = the dataset's max_history
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10  # validations without a better NDCG@10 before stopping
    eval_every: int = 1
    eval_batch_size: int = 512
    top_k: int = 10
    exclude_seen: bool = True
    # each user's last training item neither target nor context (the pipeline's
    # train.hold_out_last): validation's newest history item is then new, as test's is
    hold_out_last: int = 0  # True/1: the last training item; n: the last n
    seed: int = 42


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig, max_len: int) -> None:
        super().__init__()
        self.n_items, self.max_len, self.num_heads = n_items, max_len, cfg.num_heads
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, cfg.hidden_size)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                cfg.hidden_size,
                cfg.num_heads,
                dim_feedforward=cfg.hidden_size,  # SASRec's point-wise FFN keeps the width
                dropout=cfg.dropout,
                activation="relu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(cfg.num_blocks)
        )
        self.final_norm = nn.LayerNorm(cfg.hidden_size)
        future = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("future", future, persistent=False)
        nn.init.normal_(self.item_emb.weight, std=cfg.hidden_size**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states [batch, max_len, hidden] of left-padded item tokens [batch, max_len]."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.item_emb(tokens) * self.item_emb.embedding_dim**0.5 + self.pos_emb(positions)
        padding = tokens == 0
        keep = ~padding.unsqueeze(-1)
        x = self.emb_dropout(x) * keep
        # Causal, and padding is never a key (as the original's key mask); a padded position
        # still sees itself so that its softmax stays finite (it is zeroed after every block).
        diagonal = torch.eye(tokens.shape[1], dtype=torch.bool, device=tokens.device)
        blocked = (self.future | padding[:, None, :]) & ~diagonal
        mask = blocked.repeat_interleave(self.num_heads, dim=0)
        for block in self.blocks:
            x = block(x, src_mask=mask) * keep
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over every item (token 0, padding, dropped)."""
        return hidden @ self.item_emb.weight[1:].T


def training_windows(
    sequences: list[np.ndarray], max_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int64 [n, max_len] left-padded tokens: every training target once.

    Targets are grouped from the end of the sequence, max_len per group except the most
    recent one, whose random size makes the windows differ between epochs. Each group's
    window has the longest context that fits; targets outside the group are 0 (no loss).
    """
    inputs, targets = [], []
    for seq in sequences:
        tokens = np.asarray(seq, dtype=np.int64) + 1
        stop, group = len(tokens), int(rng.integers(1, max_len + 1))
        while stop > 1:
            first_target = max(1, stop - group)
            start = max(0, stop - max_len - 1)
            window = tokens[start:stop]
            labels = window[1:].copy()
            labels[: first_target - start - 1] = 0
            row_in = np.zeros(max_len, dtype=np.int64)
            row_out = np.zeros(max_len, dtype=np.int64)
            row_in[max_len - len(labels) :] = window[:-1]
            row_out[max_len - len(labels) :] = labels
            inputs.append(row_in)
            targets.append(row_out)
            stop, group = first_target, max_len
    return np.stack(inputs), np.stack(targets)


def history_tokens(histories: list[np.ndarray], max_len: int) -> torch.Tensor:
    """Left-padded tokens [n, max_len] of the most recent max_len items of each history."""
    out = torch.zeros((len(histories), max_len), dtype=torch.long)
    for row, history in enumerate(histories):
        recent = np.asarray(history, dtype=np.int64)[-max_len:]
        if len(recent):
            out[row, max_len - len(recent) :] = torch.from_numpy(recent + 1)
    return out


@torch.no_grad()
def recommend_sasrec(
    model: SASRec, split: EvalSplit, top_k: int, exclude_seen: bool, batch_size: int = 512
) -> np.ndarray:
    """Top-k item indices per user by full ranking: int [n_users, k], -1 pads."""
    model.eval()
    device = next(model.parameters()).device
    ranked = np.full((len(split.targets), top_k), -1, dtype=np.int64)
    for start in range(0, len(split.targets), batch_size):
        rows = range(start, min(start + batch_size, len(split.targets)))
        tokens = history_tokens([split.histories[r] for r in rows], model.max_len).to(device)
        scores = model.logits(model(tokens)[:, -1])
        if exclude_seen:
            for i, r in enumerate(rows):
                scores[i, torch.as_tensor(split.seen[r], device=device)] = float("-inf")
        best, idx = scores.topk(min(top_k, scores.shape[1]), dim=-1)
        idx = idx.masked_fill(~torch.isfinite(best), -1)
        ranked[start : start + len(rows), : idx.shape[1]] = idx.cpu().numpy()
    return ranked


@dataclass
class SASRecRun:
    model: SASRec
    best_epoch: int
    valid: dict[str, float]
    # per epoch: epoch, loss, seconds (training); eval_seconds and valid_* when evaluated
    epochs: list[dict[str, float]]

    @property
    def train_seconds(self) -> float:
        return float(sum(e["seconds"] for e in self.epochs))


def train_sasrec(
    dataset: Dataset,
    cfg: SASRecConfig = SASRecConfig(),
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> SASRecRun:
    """Train on the training sequences, early-stop on validation NDCG@10, keep the best weights.

    Deterministic under cfg.seed (for a fixed number of torch threads). `on_epoch` receives
    each epoch's record (e.g. to print progress).
    """
    max_len = cfg.max_len or dataset.max_history
    torch.manual_seed(cfg.seed)
    model = SASRec(dataset.n_items, cfg, max_len)
    device = next(model.parameters()).device
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    train = dataset.train_sequences(cfg.hold_out_last)
    valid_split = dataset.eval_split("valid")
    rng = np.random.default_rng(cfg.seed)
    best_score, best_epoch, best_state, stale = -1.0, -1, None, 0
    history: list[dict[str, float]] = []
    for epoch in range(cfg.max_epochs):
        start = time.perf_counter()
        model.train()
        inputs, targets = training_windows(train, max_len, rng)
        order = rng.permutation(len(inputs))
        loss_sum, n_targets = 0.0, 0
        for first in range(0, len(order), cfg.batch_size):
            rows = order[first : first + cfg.batch_size]
            x = torch.from_numpy(inputs[rows]).to(device)
            y = torch.from_numpy(targets[rows]).to(device)
            labelled = y > 0
            logits = model.logits(model(x)[labelled])
            loss = F.cross_entropy(logits, y[labelled] - 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * int(labelled.sum())
            n_targets += int(labelled.sum())
        record: dict[str, float] = {
            "epoch": epoch,
            "loss": loss_sum / max(1, n_targets),
            "seconds": time.perf_counter() - start,  # training only, like the generative reports
        }
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.max_epochs:
            start = time.perf_counter()
            ranked = recommend_sasrec(
                model, valid_split, cfg.top_k, cfg.exclude_seen, cfg.eval_batch_size
            )
            valid = evaluate_ranking(ranked, valid_split)
            record.update({f"valid_{k}": v for k, v in valid.items()})
            if valid[SELECTION_METRIC] > best_score:
                best_score, best_epoch, stale = valid[SELECTION_METRIC], epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            record["eval_seconds"] = time.perf_counter() - start
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if stale >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    best = history[best_epoch] if best_epoch >= 0 else {}
    valid = {k.removeprefix("valid_"): v for k, v in best.items() if k.startswith("valid_")}
    return SASRecRun(model=model, best_epoch=best_epoch, valid=valid, epochs=history)
