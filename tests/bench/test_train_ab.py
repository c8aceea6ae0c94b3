"""bench/train_ab.py: each variant takes its turns, and what it patched comes back."""

from __future__ import annotations

import contextlib

import pytest
import torch


@pytest.mark.parametrize(
    ("comparison", "module", "name"),
    [
        ("dropout", "regularization", "dropout"),
        ("softmax", "training", "softmax"),
        ("head-loss", "training", "linear_cross_entropy"),
        ("rms-norm", "training", "_rms_norm"),
        ("swiglu", "training", "_swiglu"),
    ],
)
def test_variants_alternate_and_the_defaults_are_restored(
    bench_script, capsys, comparison, module, name
) -> None:
    torch.set_num_threads(1)
    bench = bench_script("train_ab")
    from components.model import regularization, training

    owner = {"regularization": regularization, "training": training}[module]
    chosen = getattr(owner, name)
    calls = {variant: 0 for variant in bench.COMPARISONS[comparison]}

    def counting(variant, enter):
        @contextlib.contextmanager
        def entered():
            with enter():
                inner = getattr(owner, name)

                def spy(*args, **kwargs):
                    calls[variant] += 1
                    return inner(*args, **kwargs)

                setattr(owner, name, spy)
                try:
                    yield
                finally:
                    setattr(owner, name, inner)

        return entered

    bench.COMPARISONS[comparison] = {
        v: counting(v, enter) for v, enter in bench.COMPARISONS[comparison].items()
    }
    bench.main(
        [
            comparison,
            "--repeats",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--items",
            "50",
            "--users",
            "8",
        ]
    )
    assert getattr(owner, name) is chosen
    assert all(n > 0 for n in calls.values()), calls  # the step called each in its turn
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")][1:]
    assert len(rows) == 2 and rows[0].endswith("| 1.00x |")


def test_t5_attention_variants_attend_each_their_way(bench_script, capsys) -> None:
    """`t5-attention`: the sdpa variant never reaches the thread-invariant softmax, today's
    attends through it, and the attention tables are restored afterwards."""
    torch.set_num_threads(1)
    bench = bench_script("train_ab")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from components.model import attention

    calls = {variant: 0 for variant in bench.COMPARISONS["t5-attention"]}
    current = []
    real = attention.softmax

    def spy(x):
        calls[current[-1]] += 1
        return real(x)

    def tracked(variant, enter):
        @contextlib.contextmanager
        def entered():
            current.append(variant)
            with enter():
                yield

        return entered

    bench.COMPARISONS["t5-attention"] = {
        v: tracked(v, enter) for v, enter in bench.COMPARISONS["t5-attention"].items()
    }
    attention.softmax = spy
    try:
        bench.main(["t5-attention", "--repeats", "2", "--steps", "1", "--warmup", "0",
                    "--items", "50", "--users", "8"])  # fmt: skip
    finally:
        attention.softmax = real
    sdpa, ours = calls.values()
    assert sdpa == 0 and ours > 0, calls
    assert AttentionInterface._global_mapping[attention.ATTENTION] is attention.attention
    assert AttentionMaskInterface._global_mapping[attention.ATTENTION].__name__ == "eager_mask"
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")][1:]
    assert len(rows) == 2 and rows[0].startswith("| sdpa |")


def test_shapes_variants_round_or_not_and_each_run_has_its_own_batches(
    bench_script, capsys
) -> None:
    """`shapes`: the exact variant runs with no rounding, today's with it; both quanta come
    back; and no two runs train on the same shuffle (each meets its own matmul shapes)."""
    torch.set_num_threads(1)
    bench = bench_script("train_ab")
    from components.model import fused_loss, training

    quanta = (training.ROW_QUANTUM, fused_loss.PAD_ROWS)
    seen, shuffles = [], []
    real_ours = bench.tt.ours

    def ours(*args):
        seen.append((training.ROW_QUANTUM, fused_loss.PAD_ROWS))
        shuffles.append(args[-1])
        return real_ours(*args)

    bench.tt.ours = ours
    try:
        bench.main(["shapes", "--repeats", "2", "--steps", "1", "--warmup", "0",
                    "--items", "50", "--users", "8"])  # fmt: skip
    finally:
        bench.tt.ours = real_ours
    assert seen == [(1, 1), quanta, quanta, (1, 1)]
    assert len(set(shuffles)) == 4
    assert quanta == (training.ROW_QUANTUM, fused_loss.PAD_ROWS)
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")][1:]
    assert len(rows) == 2 and rows[0].startswith("| exact row counts |")


def test_movielens_mode_trains_a_whole_epoch_of_the_projects_data_per_run(
    bench_script, capsys, monkeypatch, tmp_path
) -> None:
    """`--movielens`: every run is one epoch of `data/processed` under params.yaml (here a tiny
    project: 12 users, 30 items), each with its own shuffle (`train.seed`), and each variant's
    runs count every batch of that epoch."""
    import numpy as np
    import polars as pl

    from components.data import Dataset
    from components.model.session import TrainingSession

    torch.set_num_threads(1)
    bench = bench_script("train_ab")
    rng = np.random.default_rng(0)
    items = pl.DataFrame(
        {
            "item_idx": np.arange(30, dtype=np.int64),
            "item_id": [f"i{i}" for i in range(30)],
            "title": [f"t{i}" for i in range(30)],
            "text": [f"item {i} words" for i in range(30)],
        }
    )
    sequences = [rng.integers(0, 30, size=rng.integers(5, 12)) for _ in range(12)]
    users = [f"u{i}" for i in range(12)]
    Dataset(items=items, user_ids=users, sequences=sequences, max_history=5).write(
        tmp_path / "data" / "processed"
    )
    (tmp_path / "params.yaml").write_text(
        "model: {hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32}\n"
        "train: {batch_size: 8, seed: 7}\n"
    )
    monkeypatch.setattr(bench.runner, "ROOT", tmp_path)
    seeds, batches = [], []
    real_epoch = TrainingSession.train_epoch

    def train_epoch(self):
        seeds.append(self.train_cfg.seed)
        stats = real_epoch(self)
        batches.append(stats["steps"])
        return stats

    monkeypatch.setattr(TrainingSession, "train_epoch", train_epoch)
    bench.main(["shapes", "--movielens", "--repeats", "2"])
    assert seeds == [7, 8, 9, 10]
    assert batches[0] > 1 and len(set(batches)) == 1  # the whole epoch, every run
    out = capsys.readouterr().out
    assert "2 x one MovieLens epoch each" in out
    rows = [r for r in out.splitlines() if r.startswith("| ")][1:]
    assert len(rows) == 2 and rows[0].endswith("| 1.00x |")
