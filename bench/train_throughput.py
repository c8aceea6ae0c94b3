"""Training throughput: our Trainer next to a plain transformers `Trainer`, same data and model.

    python bench/train_throughput.py                              # tiny profile + SmolLM2-135M
    python bench/train_throughput.py --models tiny --steps 30
    python bench/train_throughput.py --models smollm2 --steps 3 --batch-size 8
    python bench/train_throughput.py --models tiny --repeats 3 --threads 2   # best of 3, interleaved
    python bench/train_throughput.py --models tiny --reference /tmp/ref/components/model/training.py \
        --profile 10        # + another commit's Trainer on the same data; where the time goes

Data: synthetic `seqrec` windows as the train stage builds them (PromptBuilder, 20 items of
history, 3-level identifiers of 256 codes). Both trainers start from the same freshly created
model (same seed; the tiny Llama with `model.residual_dropout`'s hooks, as the train stage
builds it) and take `--warmup` untimed steps, then `--steps` timed ones. Ours: length
bucketing and the output head only at labelled positions. Theirs: defaults (random order,
full-vocabulary logits at every position), same batch size, learning rate and clipping.

Precision: ours trains in `training_precision()` (bf16 autocast on CUDA and on CPUs that
multiply bf16 natively, else fp32). Where that is bf16 on the CPU the table also shows our
Trainer in fp32 and the transformers Trainer with `bf16=True`, so that the precision and the
rest of the engineering can be told apart; `ratio` is always against the transformers Trainer
in its default precision (fp32 on CPU, bf16 on CUDA), `same prec.` against the transformers
Trainer in the same precision as the row.

tokens/s counts real (non-padding) tokens. MFU = 6 x parameters x tokens/s divided by this
machine's matmul peak in the row's precision, measured here (best of a few large square
matmuls). With LoRA the frozen weights get no weight gradient, so 6N overstates the work
actually needed: MFU is comparable between the two trainers, not an absolute efficiency.
With `--repeats N` each trainer is measured N times, interleaved, and its best run is kept
(a shared machine's other jobs only ever slow a run down).

`--cpu-time` counts the process's CPU time (all threads) instead of wall time: with
`--threads 1` a measure of the work per token that other jobs on a shared machine barely move
(one thread, so no parallel speed-up; the matmul peak is then one thread's, in CPU time too).

`--reference FILE` adds the `Trainer` of another version of components/model/training.py (e.g.
a git worktree of an older commit), run on the same data in the same process, in our precision
if that version takes one (fp32 if it predates bf16). It imports the other modules of this
checkout (`components.model.fused_loss`, ...): the comparison is of that one file. `--profile N`
then profiles N steps of each siit Trainer row (torch.profiler, CPU time of all threads) and
prints where a step's time goes, by kind of operator.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: the project root replaces it.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import argparse  # noqa: E402
import collections  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import itertools  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import Trainer as HFTrainer  # noqa: E402
from transformers import TrainerCallback, TrainingArguments  # noqa: E402

from components.config import ModelConfig, TrainConfig  # noqa: E402
from components.model.prompts import Example  # noqa: E402
from components.model.recommender import GenerativeRecommender, pick_device  # noqa: E402
from components.model.regularization import add_residual_dropout  # noqa: E402
from components.model.training import (  # noqa: E402
    Trainer,
    collate,
    length_bucketed_batches,
    seqrec_examples,
    training_precision,
)
from components.tokenizers.random_ids import random_codes  # noqa: E402

MODELS = ("tiny", "smollm2")
REFERENCE = None  # --reference: another version's training module
CLOCK = time.perf_counter  # --cpu-time: time.process_time
CODEBOOKS = (256, 256, 256)
MAX_HISTORY = 20


@dataclass
class Row:
    model: str
    params: int
    trainer: str
    precision: str
    tokens_per_s: float


def matmul_peak(device: torch.device, dtype: torch.dtype | None = None, repeats: int = 10) -> float:
    """Best observed FLOP/s of a large square matmul (default: fp32 on CPU, bf16 on CUDA)."""
    size = 8192 if device.type == "cuda" else 2048
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = CLOCK()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, CLOCK() - start)
    return 2 * size**3 / best


def synthetic_examples(rec: GenerativeRecommender, n_items: int, n_users: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts = rec.prompt_builder(random_codes(n_items, len(CODEBOOKS), CODEBOOKS[0], rng))
    sequences = [rng.integers(0, n_items, size=rng.integers(10, 40)) for _ in range(n_users)]
    return seqrec_examples(prompts, sequences, MAX_HISTORY)


def item_texts(n_items: int) -> list[str]:
    words = ["red", "blue", "small", "large", "cotton", "steel", "classic", "new"]
    return [f"item {i} {words[i % 8]} {words[(i // 8) % 8]}" for i in range(n_items)]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied matrix once


def _batches(rec: GenerativeRecommender, examples, cfg: TrainConfig, first_epoch: int = 0):
    pad = rec.tokenizer.pad_token_id or 0
    return itertools.chain.from_iterable(  # epoch after epoch, like the transformers Trainer
        length_bucketed_batches(examples, cfg.batch_size, pad, np.random.default_rng(e))
        for e in itertools.count(first_epoch)
    )


def _reference_takes_precision() -> bool:
    """Whether the reference's Trainer takes a precision: one from before bf16 takes none and
    trains in fp32 (its label, "reference fp32", is then also that of one that takes fp32 on a
    CPU without bf16, so the label cannot tell the two apart)."""
    return "precision" in inspect.signature(REFERENCE.Trainer).parameters


def _make_trainer(rec: GenerativeRecommender, cfg: TrainConfig, steps: int, precision: str):
    if precision.startswith("reference"):  # another version's Trainer
        own = {"precision": precision.split()[1]} if _reference_takes_precision() else {}
        return REFERENCE.Trainer(rec.model, cfg, steps_per_epoch=steps, total_epochs=1, **own)
    return Trainer(rec.model, cfg, steps_per_epoch=steps, total_epochs=1, precision=precision)


def ours(
    rec: GenerativeRecommender,
    examples,
    cfg: TrainConfig,
    warmup: int,
    steps: int,
    precision: str,
    first_epoch: int = 0,
) -> float:
    """Tokens/s of our Trainer; `first_epoch`: the batches of that shuffle on (another one
    gives batches of other lengths and label counts, so matmul shapes this process has not
    seen: oneDNN's JIT work, as a real epoch's new shuffle brings it)."""
    trainer = _make_trainer(rec, cfg, warmup + steps, precision)
    batches = _batches(rec, examples, cfg, first_epoch)
    trainer.train_epoch(next(batches) for _ in range(warmup))
    start = CLOCK()
    stats = trainer.train_epoch(next(batches) for _ in range(steps))
    return stats["tokens_per_s"] * stats["seconds"] / (CLOCK() - start)


KINDS = (  # (kind, operator-name fragments), first match wins
    ("matmul", ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::linear")),
    ("attention kernel (SDPA)", ("scaled_dot_product", "flash_attention")),
    ("softmax + cross-entropy", ("softmax", "nll_loss")),
    ("dropout RNG", ("bernoulli", "random_", "aten::ge")),
    ("dtype casts, copies", ("aten::copy_", "aten::to", "aten::clone", "aten::contiguous")),
    ("optimizer + clipping", ("adam", "lerp", "addcdiv", "sqrt", "norm", "foreach")),
    ("elementwise (norms, RoPE, SiLU, residuals, masks)", ("aten::",)),
)


def profile_steps(
    rec: GenerativeRecommender, examples, cfg: TrainConfig, steps: int, precision: str
) -> dict[str, float]:
    """ms per step by kind of operator (self CPU time, all threads), and the wall ms per step."""
    from torch.profiler import ProfilerActivity, profile

    trainer = _make_trainer(rec, cfg, steps + 3, precision)
    batches = _batches(rec, examples, cfg)
    trainer.train_epoch(next(batches) for _ in range(3))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        stats = trainer.train_epoch(next(batches) for _ in range(steps))
    out: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        name = event.key.lower()
        if not name.startswith("aten::") and "adam" not in name:
            continue  # python-level ranges and autograd wrappers: their children are counted
        kind = next(
            (k for k, frags in KINDS if any(f.lower() in name for f in frags)), "elementwise"
        )
        out[kind] += event.self_cpu_time_total / 1e3 / steps
    total_self = sum(out.values())
    out["(all operators)"] = total_self
    out["(wall per step)"] = stats["seconds"] * 1e3 / steps
    return dict(out)


class _Clock(TrainerCallback):
    """Wall time and real tokens between the end of step `warmup` and the end of the last step."""

    def __init__(self, model: torch.nn.Module, warmup: int) -> None:
        self.warmup, self.tokens, self.start, self.end, self.start_tokens = warmup, 0, 0.0, 0.0, 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        if module.training:
            self.tokens += int(kwargs["attention_mask"].sum())

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step == self.warmup:
            self.start, self.start_tokens = CLOCK(), self.tokens
        self.end = CLOCK()

    @property
    def tokens_per_s(self) -> float:
        return (self.tokens - self.start_tokens) / (self.end - self.start)


def transformers_trainer(
    rec: GenerativeRecommender, examples, cfg: TrainConfig, warmup: int, steps: int, precision: str
) -> float:
    pad = rec.tokenizer.pad_token_id or 0
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]

    def collator(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate([Example(r["input_ids"], r["labels"]) for r in rows], pad)
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "labels": batch.labels,
        }

    clock = _Clock(rec.model, warmup)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=cfg.batch_size,
            max_steps=warmup + steps,
            learning_rate=cfg.lr,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.grad_clip,
            lr_scheduler_type="cosine",
            warmup_steps=cfg.warmup_ratio,
            bf16=precision == "bf16",
            use_cpu=not torch.cuda.is_available(),
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
            seed=cfg.seed,
        )
        HFTrainer(
            model=rec.model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[clock],
        ).train()
    return clock.tokens_per_s


def bench(
    name: str,
    model_cfg: ModelConfig,
    batch_size: int,
    warmup: int,
    steps: int,
    n_items: int,
    n_users: int,
    repeats: int = 1,
    profile: int = 0,
) -> list[Row]:
    cfg = TrainConfig(batch_size=batch_size, lr=3e-3 if name == "tiny" else 3e-4)
    device = pick_device()
    fresh = GenerativeRecommender.create(model_cfg, CODEBOOKS, item_texts(n_items), seed=0)
    fresh.model.to(device)
    if fresh.architecture == "llama" and fresh.profile == "tiny":  # as the train stage does
        add_residual_dropout(fresh.model, model_cfg.residual_dropout)  # both trainers
    examples = synthetic_examples(fresh, n_items, n_users)
    default = "bf16" if device.type == "cuda" else "fp32"  # the transformers Trainer's
    ours_precision = training_precision(device)
    runs = [("siit Trainer", ours, ours_precision)]
    if ours_precision != default:
        runs.append(("siit Trainer", ours, default))
    if REFERENCE is not None:
        label = ours_precision if _reference_takes_precision() else "fp32"
        runs.append(("reference Trainer", ours, f"reference {label}"))
    runs.append(("transformers Trainer", transformers_trainer, default))
    if ours_precision != default:
        runs.append(("transformers Trainer", transformers_trainer, ours_precision))
    best = [0.0] * len(runs)
    params = n_params(fresh.model)
    for r in range(repeats):
        order = range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            _, run, precision = runs[i]
            rec = copy.deepcopy(fresh)
            best[i] = max(best[i], run(rec, examples, cfg, warmup, steps, precision))
            del rec
    if profile:
        profiles = {
            f"{label} ({precision.removeprefix('reference ')})": profile_steps(
                copy.deepcopy(fresh), examples, cfg, profile, precision
            )
            for label, run, precision in runs
            if run is ours
        }
        kinds = [k for k, _ in KINDS] + ["(all operators)", "(wall per step)"]
        print(f"\n  {name}: ms per step by kind of operator ({profile} profiled steps)")
        print("| kind | " + " | ".join(profiles) + " |")
        print("|---|" + "---:|" * len(profiles))
        for kind in kinds:
            cells = " | ".join(f"{p.get(kind, 0.0):.1f}" for p in profiles.values())
            print(f"| {kind} | {cells} |")
        print()
    return [
        Row(name, params, label, precision.removeprefix("reference "), tps)
        for (label, _, precision), tps in zip(runs, best, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--smollm2",
        default="smollm2-135m",
        help="model.name_or_path for the smollm2 row (e.g. a local copy)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 tiny, 8 smollm2")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps; default: 20 tiny, 4 smollm2"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads, 0 = torch default"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure each trainer N times (interleaved), keep the best",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="components/model/training.py of another version: its Trainer as one more row",
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="profile N steps of each siit Trainer row"
    )
    parser.add_argument(
        "--cpu-time", action="store_true", help="CPU time instead of wall time (shared machines)"
    )
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=500)
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.reference:
        global REFERENCE
        spec = importlib.util.spec_from_file_location("reference_training", args.reference)
        REFERENCE = importlib.util.module_from_spec(spec)
        sys.modules["reference_training"] = REFERENCE
        spec.loader.exec_module(REFERENCE)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    if training_precision(device) == "bf16" or device.type == "cuda":
        peaks["bf16"] = matmul_peak(device, torch.bfloat16)
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    shown = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items())
    print(f"device: {name}; measured matmul peak (GFLOP/s): {shown}")
    rows = []
    for model in args.models:
        batch = args.batch_size or (64 if model == "tiny" else 8)
        steps = args.steps or (20 if model == "tiny" else 4)
        model_cfg = (
            ModelConfig()
            if model == "tiny"
            else ModelConfig(profile="pretrained", name_or_path=args.smollm2)
        )
        rows += bench(
            model,
            model_cfg,
            batch,
            args.warmup,
            steps,
            args.items,
            args.users,
            args.repeats,
            args.profile,
        )
        print(
            f"  {model}: batch {batch}, {args.warmup} warm-up + {steps} timed steps, "
            f"best of {args.repeats}",
            flush=True,
        )
    print()
    print(
        f"| {'model':<8} | {'params':>7} | {'trainer':<20} | {'precision':<9} | {'tokens/s':>9} "
        f"| {'MFU':>6} | {'ratio':>5} | {'same prec.':>10} |"
    )
    print(f"|{'-' * 10}|{'-' * 9}|{'-' * 22}|{'-' * 11}|{'-' * 11}|{'-' * 8}|{'-' * 7}|{'-' * 12}|")
    default = "bf16" if device.type == "cuda" else "fp32"
    for row in rows:
        theirs = {
            r.precision: r.tokens_per_s
            for r in rows
            if r.model == row.model and r.trainer.startswith("transformers")
        }
        mfu = 6 * row.params * row.tokens_per_s / peaks[row.precision]
        same = theirs.get(row.precision)
        same_text = f"{row.tokens_per_s / same:>9.2f}x" if same else f"{'':>10}"
        print(
            f"| {row.model:<8} | {row.params / 1e6:>6.1f}M | {row.trainer:<20} | {row.precision:<9} "
            f"| {row.tokens_per_s:>9,.0f} | {mfu:>6.1%} | {row.tokens_per_s / theirs[default]:>4.2f}x "
            f"| {same_text} |"
        )


if __name__ == "__main__":
    main()
