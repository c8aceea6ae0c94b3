"""Residual dropout's masks: `F.dropout` (bernoulli_) against `keep_mask`, in one process.

    python bench/residual_dropout.py                    # one thread, 6 alternating runs each
    python bench/residual_dropout.py --threads 2 --repeats 4

The default tiny Llama (`ModelConfig()`: item rows, residual dropout 0.1) trains on
`bench/train_throughput.py`'s synthetic seqrec windows with our `Trainer` in its precision;
the residual-dropout hooks draw their masks either with `F.dropout` (before 2026-12-01) or
with `components.model.regularization.keep_mask` (now). Runs alternate (A B, B A, ...) from
the same fresh model, so a drifting machine hurts both alike; the table gives each one's
median and best tokens/s (wall clock).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: the project root goes first.
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import train_throughput as tt  # noqa: E402

from components.config import ModelConfig, TrainConfig  # noqa: E402
from components.model import regularization  # noqa: E402
from components.model.recommender import GenerativeRecommender  # noqa: E402
from components.model.training import training_precision  # noqa: E402


def bernoulli_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return F.dropout(x, p, training=True)


MASKS = {"F.dropout (bernoulli_)": bernoulli_dropout, "keep_mask": regularization.dropout}


def measure(repeats: int, steps: int, warmup: int, n_items: int, n_users: int) -> dict:
    model_cfg = ModelConfig()
    fresh = GenerativeRecommender.create(model_cfg, tt.CODEBOOKS, tt.item_texts(n_items), seed=0)
    regularization.add_residual_dropout(fresh.model, model_cfg.residual_dropout)
    examples = tt.synthetic_examples(fresh, n_items, n_users)
    cfg = TrainConfig(batch_size=64, lr=3e-3)
    precision = training_precision(torch.device("cpu"))
    runs: dict[str, list[float]] = {name: [] for name in MASKS}
    chosen = regularization.dropout
    try:
        for r in range(repeats):
            names = list(MASKS) if r % 2 == 0 else list(reversed(MASKS))
            for name in names:
                regularization.dropout = MASKS[name]  # what the hooks call
                runs[name].append(
                    tt.ours(copy.deepcopy(fresh), examples, cfg, warmup, steps, precision)
                )
    finally:
        regularization.dropout = chosen
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6, help="runs of each mask, alternating")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=500)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = measure(args.repeats, args.steps, args.warmup, args.items, args.users)
    base = statistics.median(runs["F.dropout (bernoulli_)"])
    print(f"{args.threads} thread(s), {args.repeats} x {args.steps} steps each, batch 64\n")
    print("| residual dropout masks | median tokens/s | best tokens/s | median vs F.dropout |")
    print("|---|---:|---:|---:|")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {max(values):,.0f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
