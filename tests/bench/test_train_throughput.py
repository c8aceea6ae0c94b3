"""bench/train_throughput.py: the reference row runs, and is labelled, in the precision it had."""

from __future__ import annotations

import types

import torch

from components.config import ModelConfig
from components.model import training


def _rows(bench, reference) -> dict[str, str]:
    torch.set_num_threads(1)
    bench.REFERENCE = reference
    rows = bench.bench("tiny", ModelConfig(), 8, warmup=0, steps=1, n_items=30, n_users=12)
    return {row.trainer: row.precision for row in rows if row.tokens_per_s > 0}


def test_a_reference_that_takes_a_precision_runs_in_ours(bench_script) -> None:
    bench = bench_script("train_throughput")
    seen = []

    class Spy(training.Trainer):
        def __init__(self, *args, precision=None, **kwargs):
            seen.append(precision)
            super().__init__(*args, precision=precision, **kwargs)

    rows = _rows(bench, types.SimpleNamespace(Trainer=Spy))
    ours = training.training_precision(torch.device("cpu"))
    assert rows["reference Trainer"] == ours and seen and set(seen) == {ours}


def test_a_reference_from_before_precisions_is_labelled_fp32(bench_script) -> None:
    bench = bench_script("train_throughput")
    seen = []

    class Old(training.Trainer):  # the signature of a Trainer from before bf16
        def __init__(self, model, cfg, steps_per_epoch, total_epochs):
            seen.append(True)
            super().__init__(model, cfg, steps_per_epoch, total_epochs, precision="fp32")

    rows = _rows(bench, types.SimpleNamespace(Trainer=Old))
    assert rows["reference Trainer"] == "fp32" and seen
