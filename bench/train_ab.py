"""A/B of one change to the training step, in one process, alternating runs.

    python bench/train_ab.py dropout                    # one thread, 6 runs of each
    python bench/train_ab.py dropout --threads 2 --repeats 4
    python bench/train_ab.py shapes --movielens --repeats 2   # a real epoch per run

The default tiny Llama (`ModelConfig()`: item rows, residual dropout 0.1; `TrainConfig()`'s
item loss; for `t5-attention`, the tiny T5 of the same size) trains on
`bench/train_throughput.py`'s synthetic seqrec windows with our `Trainer` in
its precision, once per variant of the comparison chosen; the first variant is the old way,
the last today's. Runs alternate (A B, B A, ...) from the same fresh model, so a drifting
machine hurts both alike; the table gives each variant's median and best tokens/s (wall
clock). Comparisons:

- `dropout`: the residual-dropout hooks' masks drawn with `F.dropout` (bernoulli_) or with
  `components.model.regularization.keep_mask` (adopted);
- `softmax`: the attention softmax as ATen's `torch.softmax` or `training.softmax`, whose
  backward gives the same bits on any number of threads (adopted: `train.concurrent` must not
  change the models);
- `t5-attention`: the tiny T5 (`model.architecture: t5`) attending with transformers' sdpa
  (its default) or `components.model.attention`'s eager attention with that softmax
  (adopted, for the same reason);
- `head-loss`: the output head's logits and their cross-entropy as `F.linear` then
  `F.cross_entropy` (whole [n, vocab] arrays), or `components.model.fused_loss`'s
  `linear_cross_entropy`, a cache-sized slice of rows at a time (adopted);
- `shapes`: the last layer and the head's last slice on exactly the labelled positions'
  count, or on that count rounded up (`training.ROW_QUANTUM`, `fused_loss.PAD_ROWS`; adopted):
  oneDNN JIT-compiles a bf16 matmul kernel for every new shape;
- `rms-norm`: the decoder's RMSNorms as one autograd expression (fp32 out, cast by the
  next matmul) or `training._RMSNorm` (fewer passes, a closed-form backward, the output in
  the matmul's dtype);
- `swiglu`: the MLP's `silu(gate) * up` as one autograd expression (its `chunk` backward
  copies the two halves' gradients into a new tensor) or `training._SwiGLU` (each half's
  gradient written into its place in one tensor; the same bits).

Each run trains on batches of its own shuffle (as each real epoch does), so that no run
replays matmul shapes an earlier run of the process has compiled.

`--movielens`: instead of the synthetic windows, each run is one whole epoch of the default
training on the project's data (`data/processed`, made by `siit prepare` and `siit
validate` if missing; params.yaml's model, tasks and batch): seqrec windows and `item2id`
prompts as the train stage mixes them, its own shuffle per run (`train.seed`). The map is a
random 3 x 256 one: which codes the items get does not change the batches' shapes or the work.

A comparison tried and not kept stays in the commit that measured it (docs/benchmarks.md):
`item-logits` at eb4e878, `train.item_loss`'s item logits as the output head's columns
instead of a second matmul (0.96-0.97x: the slices' backward writes two head-sized zero
tensors).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: the project root goes first.
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import runner  # noqa: E402  (before train_throughput, which takes bench/ off sys.path)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import train_throughput as tt  # noqa: E402

from components.config import ModelConfig, TrainConfig  # noqa: E402
from components.model import attention, fused_loss, regularization, training  # noqa: E402
from components.model.recommender import GenerativeRecommender  # noqa: E402


@contextlib.contextmanager
def patched(module, name: str, value) -> Iterator[None]:
    """`module.name` is `value` inside (what the training step looks up at call time)."""
    before = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, before)


@contextlib.contextmanager
def patched_all(*patches: tuple) -> Iterator[None]:
    """Several `patched` at once: (module, name, value) each."""
    with contextlib.ExitStack() as stack:
        for module, name, value in patches:
            stack.enter_context(patched(module, name, value))
        yield


def bernoulli_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return F.dropout(x, p, training=True)


def aten_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, -1)


def unfused_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    return F.cross_entropy(F.linear(x, weight).float(), targets, reduction=reduction)


def autograd_rms_norm(
    x: torch.Tensor, norm: torch.nn.Module, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The RMSNorm as one autograd expression, as before `training._RMSNorm` (x's dtype out)."""
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def autograd_swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """The MLP's activation as one autograd expression, as before `training._SwiGLU`."""
    gate, up = gate_up.chunk(2, -1)
    return F.silu(gate) * up


@contextlib.contextmanager
def attention_as(name: str) -> Iterator[None]:
    """Models switched to `attention.ATTENTION` attend with transformers' `name` attention
    (and its mask) inside."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    tables = (AttentionInterface._global_mapping, AttentionMaskInterface._global_mapping)
    before = [table[attention.ATTENTION] for table in tables]
    for table in tables:
        table[attention.ATTENTION] = table[name]
    try:
        yield
    finally:
        for table, value in zip(tables, before, strict=True):
            table[attention.ATTENTION] = value


Variant = Callable[[], contextlib.AbstractContextManager]
COMPARISONS: dict[str, dict[str, Variant]] = {
    "dropout": {
        "F.dropout (bernoulli_)": lambda: patched(regularization, "dropout", bernoulli_dropout),
        "keep_mask": lambda: patched(regularization, "dropout", regularization.dropout),
    },
    "softmax": {
        "torch.softmax": lambda: patched(training, "softmax", aten_softmax),
        "training.softmax (thread-invariant backward)": lambda: patched(
            training, "softmax", training.softmax
        ),
    },
    "head-loss": {
        "F.linear + F.cross_entropy": lambda: patched(
            training, "linear_cross_entropy", unfused_cross_entropy
        ),
        "fused_loss.linear_cross_entropy": lambda: patched(
            training, "linear_cross_entropy", training.linear_cross_entropy
        ),
    },
    "shapes": {
        "exact row counts": lambda: patched_all(
            (training, "ROW_QUANTUM", 1), (fused_loss, "PAD_ROWS", 1)
        ),
        "row counts rounded up": contextlib.nullcontext,
    },
    "rms-norm": {
        "autograd expression": lambda: patched(training, "_rms_norm", autograd_rms_norm),
        "training._RMSNorm": contextlib.nullcontext,
    },
    "swiglu": {
        "autograd expression": lambda: patched(training, "_swiglu", autograd_swiglu),
        "training._SwiGLU": contextlib.nullcontext,
    },
    "t5-attention": {
        "sdpa": lambda: attention_as("sdpa"),
        "attention.attention (thread-invariant backward)": contextlib.nullcontext,
    },
}
MODELS = {"t5-attention": ModelConfig(architecture="t5")}  # the rest: ModelConfig()


def measure(
    variants: dict[str, Variant],
    repeats: int,
    steps: int,
    warmup: int,
    n_items: int,
    n_users: int,
    model_cfg: ModelConfig | None = None,
) -> dict[str, list[float]]:
    model_cfg = model_cfg or ModelConfig()
    fresh = GenerativeRecommender.create(model_cfg, tt.CODEBOOKS, tt.item_texts(n_items), seed=0)
    if model_cfg.architecture == "llama":  # t5: its own dropout covers the residuals
        regularization.add_residual_dropout(fresh.model, model_cfg.residual_dropout)
    examples = tt.synthetic_examples(fresh, n_items, n_users)
    cfg = TrainConfig(batch_size=64, lr=3e-3)
    precision = training.training_precision(torch.device("cpu"))
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for run, name in alternating(variants, repeats):
        with variants[name]():  # each run its own shuffle: no reuse of shapes another compiled
            runs[name].append(
                tt.ours(copy.deepcopy(fresh), examples, cfg, warmup, steps, precision, 1000 * run)
            )
    return runs


def alternating(variants: dict[str, Variant], repeats: int) -> Iterator[tuple[int, str]]:
    """(run index, variant) in the order A B, B A, A B, ..."""
    run = 0
    for r in range(repeats):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            yield run, name
            run += 1


def measure_movielens(variants: dict[str, Variant], repeats: int) -> dict[str, list[float]]:
    """Tokens/s of one epoch of the default training on the project's MovieLens data per run."""
    from components.config import load_params
    from components.data import Dataset
    from components.model.session import TrainingSession
    from components.tokenizers.random_ids import random_codes

    runner.ensure_dataset()
    params = load_params(str(runner.ROOT / "params.yaml"))
    dataset = Dataset.read(runner.ROOT / "data" / "processed")
    levels, size = params.tokenize.levels, params.tokenize.codebook_size
    codebooks = (size,) * levels
    codes = random_codes(len(dataset.item_ids()), levels, size, 0)
    fresh = GenerativeRecommender.create(params.model, codebooks, dataset.item_texts(), seed=0)
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for run, name in alternating(variants, repeats):
        train = params.train.model_copy(update={"seed": params.train.seed + run})
        session = TrainingSession(
            copy.deepcopy(fresh),
            dataset,
            codes,
            train,
            params.evaluate,
            total_epochs=1,
            residual_dropout=params.model.residual_dropout,
        )
        with variants[name]():
            runs[name].append(session.train_epoch()["tokens_per_s"])
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("comparison", choices=sorted(COMPARISONS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=6, help="runs of each variant, alternating")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument(
        "--movielens", action="store_true", help="a whole epoch of the project's data per run"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = COMPARISONS[args.comparison]
    if args.movielens and args.comparison in MODELS:
        parser.error(f"--movielens trains params.yaml's model, not {args.comparison}'s")
    if args.movielens:
        runs = measure_movielens(variants, args.repeats)
    else:
        runs = measure(
            variants,
            args.repeats,
            args.steps,
            args.warmup,
            args.items,
            args.users,
            MODELS.get(args.comparison),
        )
    first = next(iter(variants))
    base = statistics.median(runs[first])
    precision = training.training_precision(torch.device("cpu"))
    what = "one MovieLens epoch each" if args.movielens else f"{args.steps} steps each, batch 64"
    print(f"{args.comparison}: {args.threads} thread(s), {args.repeats} x {what}, {precision}\n")
    print(f"| variant | median tokens/s | best tokens/s | median vs {first} |")
    print("|---|---:|---:|---:|")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {max(values):,.0f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
