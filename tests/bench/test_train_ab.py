"""bench/train_ab.py: each variant takes its turns, and what it patched comes back."""

from __future__ import annotations

import contextlib

import pytest
import torch


@pytest.mark.parametrize(
    ("comparison", "module", "name"),
    [("dropout", "regularization", "dropout"), ("softmax", "training", "softmax")],
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
