"""How a model's lead changes with the target's distance from its training (a diagnostic).

Validation and test disagree on which setting is better (docs/experiments.md, "Validation favours the
default; test favours whatever challenges it"). Leave-one-out puts each user's validation
target one step after the last item the models trained on, and the test target two steps
after. If a setting's lead comes from fitting each user's most recent training items closely,
it should be largest on the training targets themselves and shrink with the distance. This
bench scores the model every bench run kept (its best epoch and map, as the pipeline chose
them on validation) on four targets per user, with the evaluation's own decoding:

  train-last  the last training item, from the 20 items before it (a target it trained on)
  valid       the validation target (one step after the training targets)
  test        the test target (two steps after), as the pipeline reports it
  test-gap    the test target from validation's history (the validation item left out of
              the history but still excluded from the ranking): test's distance, validation's
              context

and prints, for each run, the four-metric average (Recall/NDCG@5/10) per target, then the
paired difference of each model against the reference run of the same seed.

    python bench/split_distance.py --tag cf --seeds 1 2 3 4 5 --models static siit
    python bench/split_distance.py --tag cf --seeds 1 2 --models static l4
    python bench/split_distance.py --tag cf --seeds 1 2 3 4 5 --models static --peers

With --peers, most-popular and SASRec (bench/peers.py's settings, seeded with each seed,
early-stopped on validation as there) are trained on the same data and scored on the same
four targets: the reference for how much a full-ranking model loses with the distance.

Run folders are `bench/.runs/<tag>-s<seed>-<model>/` as `bench/siit_vs_static.py` leaves them
(the first model named is the reference). Reads the runs and trains nothing of theirs
(`--peers` trains its own SASRec).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data.dataset import Dataset, EvalSplit  # noqa: E402
from components.metrics import METRIC_NAMES, target_ranks, user_gains  # noqa: E402

RUNS = Path(__file__).resolve().parent / ".runs"
TARGETS = ("train-last", "valid", "test", "test-gap")


def distance_splits(dataset: Dataset) -> dict[str, EvalSplit]:
    """The four targets per user (users with a single training item have no train-last target
    that has a history, and are left out of every split, so that all four score the same users)."""
    keep = [i for i, seq in enumerate(dataset.sequences) if len(seq) >= 4]
    users = Dataset(
        dataset.items,
        [dataset.user_ids[i] for i in keep],
        [dataset.sequences[i] for i in keep],
        dataset.max_history,
    )
    return {
        "train-last": users.target_split(3),
        "valid": users.target_split(2),
        "test": users.target_split(1),
        "test-gap": users.target_split(1, history_end=2),
    }


def user_averages(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each user's four-metric average (Recall/NDCG@5/10 of its one target)."""
    gains = user_gains(target_ranks(ranked, targets))
    return np.mean([gains[name] for name in METRIC_NAMES], axis=0)


def model_dir(work: Path) -> Path:
    found = [d for d in (work / "artifacts" / "models").glob("*") if (d / "model").is_dir()]
    if len(found) != 1:
        raise SystemExit(f"{work}: expected one kept model under artifacts/models, found {found}")
    return found[0]


def score_run(work: Path) -> dict[str, np.ndarray]:
    """Per-user four-metric averages of the run's kept model on each target."""
    from components.config import load_params
    from components.evaluation import recommend_generative
    from components.model.recommender import GenerativeRecommender
    from components.tokenizers.token_map import TokenMap

    params = load_params(work / "params.yaml")
    dataset = Dataset.read(work / "data" / "processed")
    kept = model_dir(work)
    rec = GenerativeRecommender.load(kept / "model")
    codes = TokenMap.load(kept / "token_map.parquet").codes
    out = {}
    for name, split in distance_splits(dataset).items():
        ranked = recommend_generative(rec, codes, split, params.evaluate)
        out[name] = user_averages(ranked, split.targets)
    return out


def score_peers(work: Path, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Most-popular and SASRec (trained here, bench/peers.py's settings) on the four targets."""
    from components.baselines.sasrec import SASRecConfig, recommend_sasrec, train_sasrec
    from components.config import load_params
    from components.evaluation import recommend_popular

    params = load_params(work / "params.yaml")
    dataset = Dataset.read(work / "data" / "processed")
    top_k, exclude = params.evaluate.top_k, params.evaluate.exclude_seen
    cfg = SASRecConfig(
        seed=seed, top_k=top_k, exclude_seen=exclude, hold_out_last=params.train.hold_out_last
    )
    sasrec = train_sasrec(dataset, cfg).model
    popularity = dataset.popularity()
    out: dict[str, dict[str, np.ndarray]] = {"popularity": {}, "sasrec": {}}
    for name, split in distance_splits(dataset).items():
        ranked = recommend_popular(popularity, split, top_k, exclude)
        out["popularity"][name] = user_averages(ranked, split.targets)
        ranked = recommend_sasrec(sasrec, split, top_k, exclude)
        out["sasrec"][name] = user_averages(ranked, split.targets)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument(
        "--models", nargs="+", required=True, help="run names; the first is the reference"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--peers", action="store_true", help="also most-popular and SASRec")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    scores: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for seed in args.seeds:
        for name in args.models:
            work = RUNS / f"{args.tag}-s{seed}-{name}"
            if not work.is_dir():
                raise SystemExit(f"no run folder {work}: run bench/siit_vs_static.py first")
            scores[(seed, name)] = score_run(work)
            row = " ".join(f"{t} {scores[(seed, name)][t].mean():.4f}" for t in TARGETS)
            print(f"seed {seed} {name}: {row}", flush=True)
        if args.peers:
            peers = score_peers(RUNS / f"{args.tag}-s{seed}-{args.models[0]}", seed)
            for name, by_target in peers.items():
                scores[(seed, name)] = by_target
                row = " ".join(f"{t} {by_target[t].mean():.4f}" for t in TARGETS)
                print(f"seed {seed} {name}: {row}", flush=True)
    models = args.models + (["popularity", "sasrec"] if args.peers else [])
    print_tables(scores, args.seeds, models)


def print_tables(scores: dict, seeds: list[int], models: list[str]) -> None:
    print("\nfour-metric average, mean over seeds (per-seed values in brackets):\n")
    print("| model | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    for name in models:
        cells = []
        for t in TARGETS:
            values = [float(scores[(s, name)][t].mean()) for s in seeds]
            cells.append(f"{statistics.mean(values):.4f} [{', '.join(f'{v:.4f}' for v in values)}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        "\neach model against its own validation score (mean over seeds of the per-seed ratio):\n"
    )
    print("| model | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    for name in models:
        cells = []
        for t in TARGETS:
            ratios = [
                scores[(s, name)][t].mean() / scores[(s, name)]["valid"].mean() for s in seeds
            ]
            cells.append(f"{statistics.mean(ratios):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    ref = models[0]
    if len(models) < 2:
        return
    print(f"\nagainst {ref}, paired per seed: mean relative change (per-seed changes):\n")
    print("| model | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    for name in models[1:]:
        cells = []
        for t in TARGETS:
            changes = [
                scores[(s, name)][t].mean() / scores[(s, ref)][t].mean() - 1.0 for s in seeds
            ]
            per_seed = ", ".join(f"{c:+.1%}" for c in changes)
            cells.append(f"{statistics.mean(changes):+.1%} [{per_seed}]")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
