"""One model trained on one token map: epochs, validation, model selection, test.

Step-wise on purpose: an orchestrator (the Prefect flow) calls `train_epoch` and
`evaluate` as separate tasks and decides what to log; this module knows nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from components.config import EvaluateConfig, TrainConfig
from components.data import Dataset
from components.evaluation import evaluate_ranking, recommend_generative
from components.model.head import training_rows
from components.model.recommender import GenerativeRecommender
from components.model.regularization import add_residual_dropout
from components.model.training import (
    Trainer,
    collate,
    epoch_steps,
    length_bucketed_batches,
    precision_context,
    response_loss,
    seqrec_windows,
    supports_banded,
    task_examples,
)

log = logging.getLogger(__name__)


@dataclass
class TrainingSession:
    rec: GenerativeRecommender
    dataset: Dataset
    codes: np.ndarray
    train_cfg: TrainConfig
    eval_cfg: EvaluateConfig
    total_epochs: int

    residual_dropout: float = 0.0
    # called before every training and loss batch and every evaluation (the `train` stage's
    # thread hand-off, components.thread_share); must not change results
    on_step: Callable[[], object] | None = None
    # siit.text_holdout: items left out of the item2id task (bool [n_items]) until refinement
    item2id_holdout: np.ndarray | None = None
    trainer: Trainer = field(init=False)
    train_sequences: list[np.ndarray] = field(init=False)  # what the model trains on

    def __post_init__(self) -> None:
        add_residual_dropout(self.rec.model, self.residual_dropout)
        self.train_sequences = self.dataset.train_sequences(self.train_cfg.hold_out_last)
        self.set_codes(self.codes)
        # seqrec layout: banded windows where the model can take them (train.banded)
        self.banded = self.train_cfg.banded and supports_banded(self.rec.model)
        self.stride = self.train_cfg.window_stride
        if self.train_cfg.banded and not self.banded and not self.rec.is_encoder_decoder:
            if self.stride > self.dataset.max_history:
                self.stride = 0
            log.warning(
                "train.banded: %s cannot train on banded windows; plain windows instead "
                "(train.window_stride %d)",
                type(self.rec.model).__name__,
                self.stride,
            )
        batch = self.train_cfg.batch_size
        steps = sum(epoch_steps(v, batch) for v in self._examples(0).values())
        self.trainer = Trainer(
            self.rec.model, self.train_cfg, steps_per_epoch=steps, total_epochs=self.total_epochs
        )

    def set_codes(self, codes: np.ndarray) -> None:
        """Switch the token map (SIIT refinement); the model's vocabulary is unchanged."""
        self.codes = np.asarray(codes)
        self.prompts = self.rec.prompt_builder(self.codes)

    def _examples(self, epoch: int):
        rng = np.random.default_rng([self.train_cfg.seed, epoch])
        return task_examples(
            self.prompts,
            self.train_cfg.tasks,
            train_sequences=self.train_sequences,
            texts=self.dataset.item_texts(),
            titles=self.dataset.item_titles(),
            max_history=self.dataset.max_history,
            rng=rng,
            one_per_target=self.rec.is_encoder_decoder,
            stride=self.stride,
            banded=self.banded,
            item2id_items=None
            if self.item2id_holdout is None
            else np.flatnonzero(~self.item2id_holdout),
        )

    def train_epoch(self) -> dict[str, float]:
        epoch = self.trainer.epoch
        examples = [e for task in self._examples(epoch).values() for e in task]
        rng = np.random.default_rng([self.train_cfg.seed, epoch, 1])
        torch.manual_seed(self.train_cfg.seed * 1000 + epoch)
        pad = self.rec.tokenizer.pad_token_id or 0
        stats = self.trainer.train_epoch(
            self._stepped(length_bucketed_batches(examples, self.train_cfg.batch_size, pad, rng))
        )
        return {"epoch": epoch, **stats}

    def _stepped(self, batches: Iterable) -> Iterator:
        for batch in batches:
            self.step()
            yield batch

    def step(self) -> None:
        if self.on_step is not None:
            self.on_step()

    def evaluate(self, split: str) -> tuple[dict[str, float], np.ndarray]:
        self.step()
        return evaluate_model(self.rec, self.dataset, self.codes, self.eval_cfg, split)

    @torch.no_grad()
    def seqrec_loss(
        self, reuse: WindowLosses | None = None, batch_size: int = 256, sample: int = 0
    ) -> WindowLosses:
        """Next-item loss (nats per identifier token) over the training targets with the
        current map, dropout off, in the training's precision (bf16 autocast where it trains
        so): how well the map fits what the model has learned.

        sample > 0: over that many training windows only, a random sample fixed by
        `train.seed` (the same windows on every call; `siit.effect_windows`), else all.

        reuse: the same model's losses under another map (the map before a refinement), over
        the same windows. Only the windows holding an item whose identifier differs between
        the two maps are scored again; every other window reads the same tokens, so its loss
        is taken over. A second refinement moves about 1% of the identifiers, and most windows
        then hold none of them.
        """
        windows = seqrec_windows(
            self.train_sequences,
            self.dataset.max_history,
            one_per_target=self.rec.is_encoder_decoder,
            stride=self.stride,
            banded=self.banded,
        )
        index = np.arange(len(windows))
        if 0 < sample < len(windows):
            rng = np.random.default_rng(self.train_cfg.seed)
            index = np.sort(rng.choice(len(windows), sample, replace=False))
            windows = [windows[i] for i in index]
        band = self.dataset.max_history if self.banded else 0
        if reuse is not None and not np.array_equal(reuse.windows, index):
            raise ValueError(
                f"window losses to reuse cover {len(reuse.windows)} windows, not the "
                f"{len(index)} asked for here (other data, or another sample)"
            )
        sums = reuse.sums.copy() if reuse is not None else np.zeros(len(windows))
        counts = np.array([(len(w) - h) * self.codes.shape[1] for w, h in windows], dtype=np.int64)
        todo = list(range(len(windows)))
        if reuse is not None:
            moved = (reuse.codes != self.codes).any(axis=1)
            todo = [i for i in todo if moved[windows[i][0]].any()]
        todo.sort(key=lambda i: len(windows[i][0]))  # similar lengths together: little padding
        pad = self.rec.tokenizer.pad_token_id or 0
        device = self.rec.device
        was_training = self.rec.model.training
        self.rec.model.eval()
        for start in range(0, len(todo), batch_size):
            self.step()
            rows = todo[start : start + batch_size]
            batch = collate([self.prompts.seqrec_window(*windows[i], band=band) for i in rows], pad)
            batch.input_ids, batch.labels = batch.input_ids.to(device), batch.labels.to(device)
            # as training computes it: its precision, its softmax (`model.item_inputs_in_head`)
            with precision_context(device, self.trainer.precision), training_rows(self.rec.model):
                loss = response_loss(self.rec.model, batch, per_row=True)
            sums[rows] = loss.double().cpu().numpy()
        self.rec.model.train(was_training)
        return WindowLosses(self.codes.copy(), sums, counts, rescored=len(todo), windows=index)


@dataclass
class WindowLosses:
    """Summed next-item loss of the training windows scored (`seqrec_windows` order; all of
    them, or a fixed sample) under `codes`."""

    codes: np.ndarray
    sums: np.ndarray  # float64, nats per window
    counts: np.ndarray  # identifier tokens each window predicts
    rescored: int  # windows this pass computed (the rest were taken over)
    windows: np.ndarray  # which of the training windows (all, or a sample), ascending

    @property
    def mean(self) -> float:
        return float(self.sums.sum() / max(1, int(self.counts.sum())))

    @property
    def rescored_share(self) -> float:
        return self.rescored / max(1, len(self.sums))


def evaluate_model(
    rec: GenerativeRecommender,
    dataset: Dataset,
    codes: np.ndarray,
    eval_cfg: EvaluateConfig,
    split: str,
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics and ranked items of `rec` with the map `codes` on `split` (no Trainer: under
    torchrun one rank alone can run it)."""
    data = dataset.eval_split(split)
    ranked = recommend_generative(rec, codes, data, eval_cfg)
    return evaluate_ranking(ranked, data), ranked
