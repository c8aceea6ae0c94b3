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
