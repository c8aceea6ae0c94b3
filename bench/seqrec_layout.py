"""What a seqrec epoch costs in each window layout and head: plain windows against banded
ones, the whole-vocabulary softmax against a per-level one.

    python bench/seqrec_layout.py                    # this project's `make run` outputs
    python bench/seqrec_layout.py --repeats 2 --threads 1

A causal LM trains several next-item targets per window. Plain windows (`train.window_stride`)
hold at most `data.max_history + 1` items, so at the default stride a target costs about two
items of forward pass and sees 11-20 items before it. Banded windows (`train.banded`) are
longer and their attention is banded, so every target sees exactly its last 20 items and
costs (20 + stride) / stride items. This bench trains one seqrec-only epoch (no item2id) of a
freshly created tiny model on the project's `data/processed` and initial map
(`artifacts/token_maps/round_000.parquet`) for each layout, in one process, interleaved, and
keeps each layout's best of `--repeats`. The batches hold the same targets in every layout
(`batch_units`), so an epoch has about the same optimizer steps and targets/s is the
figure of merit; tokens/s alone would flatter the plain layout, which spends twice the
tokens on the same targets. `per-level softmax` rows train with `model.code_softmax` (the
output head and cross-entropy over the target's level's 256 codes instead of the 1,768-token
vocabulary).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project root instead of bench/ (bench/ scripts import the project from its root).
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.config import TaskWeights, load_params  # noqa: E402
from components.data import Dataset  # noqa: E402
from components.model.recommender import GenerativeRecommender  # noqa: E402
from components.model.session import TrainingSession  # noqa: E402
from components.model.training import seqrec_windows  # noqa: E402
from components.tokenizers.token_map import TokenMap  # noqa: E402

LAYOUTS = {  # name: (banded, window_stride, band_min, code_softmax)
    "plain (default)": (False, 0, 0, False),
    "plain, stride 20": (False, 20, 0, False),
    "banded, stride 20": (True, 20, 0, False),
    "banded, stride 40": (True, 40, 0, False),
    "banded, stride 40, band 11-20": (True, 40, 11, False),
    "plain, per-level softmax": (False, 0, 0, True),
    "banded, stride 40, band 11-20, per-level softmax": (True, 40, 11, True),
}


def epoch(params, dataset, codes, sizes, layout) -> tuple[float, dict]:
    banded, stride, band_min, code_softmax = layout
    train = params.train.model_copy(
        update={
            "tasks": TaskWeights(seqrec=1.0, item2id=0.0, id2item=0.0),
            "banded": banded,
            "window_stride": stride,
            "band_min": band_min,
        }
    )
    model = params.model.model_copy(update={"code_softmax": code_softmax})
    rec = GenerativeRecommender.create(
        model, sizes, dataset.item_texts(), seed=0, n_items=dataset.n_items
    )
    session = TrainingSession(rec, dataset, codes, train, params.evaluate, 1)
    start = time.perf_counter()
    stats = session.train_epoch()
    return time.perf_counter() - start, stats


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=ROOT, help="project or bench run folder")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "processed")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads, 0 = default")
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    params = load_params(str(args.run / "params.yaml"))
    dataset = Dataset.read(args.data)
    token_map = TokenMap.load(args.run / "artifacts" / "token_maps" / "round_000.parquet")
    codes = np.asarray(token_map.codes)
    sizes = tuple(int(s) for s in token_map.codebook_sizes)
    sequences = dataset.train_sequences()
    targets = sum(len(s) - 1 for s in sequences if len(s) > 1)
    print(
        f"{len(sequences)} users, {targets:,} training targets, history {dataset.max_history}, "
        f"{torch.get_num_threads()} threads; seqrec-only epoch, best of {args.repeats}\n"
    )
    best: dict[str, tuple[float, dict]] = {}
    for _ in range(args.repeats):
        for name in args.layouts:
            seconds, stats = epoch(params, dataset, codes, sizes, LAYOUTS[name])
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, stats)
    base = best[args.layouts[0]][0]
    print(
        "| layout | items per target | steps | tokens/s | epoch (s) | targets/s | "
        f"vs {args.layouts[0]} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.layouts:
        seconds, stats = best[name]
        banded, stride, _, _ = LAYOUTS[name]
        windows = seqrec_windows(sequences, dataset.max_history, stride=stride, banded=banded)
        items = sum(len(w) for w, _ in windows)
        print(
            f"| {name} | {items / targets:.2f} | {stats['steps']} | "
            f"{stats['tokens_per_s']:,.0f} | {seconds:.1f} | {targets / seconds:,.0f} | "
            f"{base / seconds:.2f}x |"
        )


if __name__ == "__main__":
    main()
