"""bench/residual_dropout.py: both masks take their turns, and the hooks' own mask comes back."""

from __future__ import annotations

import torch


def test_both_masks_alternate_and_the_default_is_restored(bench_script, capsys) -> None:
    torch.set_num_threads(1)
    bench = bench_script("residual_dropout")
    from components.model import regularization

    chosen = regularization.dropout
    calls = {name: 0 for name in bench.MASKS}

    def counting(name, fn):
        def mask(x, p):
            calls[name] += 1
            return fn(x, p)

        return mask

    bench.MASKS = {name: counting(name, fn) for name, fn in bench.MASKS.items()}
    bench.main(["--repeats", "2", "--steps", "1", "--warmup", "0", "--items", "50", "--users", "8"])
    assert regularization.dropout is chosen
    assert all(n > 0 for n in calls.values()), calls  # the hooks called each in its turn
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")][1:]
    assert len(rows) == 2 and rows[0].endswith("| 1.00x |")
