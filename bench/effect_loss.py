"""The immediate effect's seqrec-loss passes: a full pass against one that reuses old windows.

    python bench/effect_loss.py                         # this project's `make run` outputs
    python bench/effect_loss.py --run bench/.runs/lr1-s1-siit --threads 1

After every refinement the `train` stage scores the training windows' next-item loss under the
old map and again under the refined one (MLflow `effect/seqrec_loss_*`). The second pass
scores only the windows that hold an item whose identifier moved and takes over the others'
losses from the first (`TrainingSession.seqrec_loss(reuse=...)`). This bench loads a trained
SIIT model (`<run>/artifacts/models/siit`), the project's `data/processed` and the run's
token maps by round (`<run>/artifacts/token_maps/round_*.parquet`), and for each refinement
(round r -> r + 1) times the old map's full pass, the new map's full pass and the new map's
pass reusing the old one, and prints how far the two new-map losses are apart. The model is
the run's final one, not the one that refined (that one is not kept), so the losses are not
the logged ones; the windows each map change touches, and so the work saved, are the run's.

A second table puts the full passes next to what the stage computes by default: both passes
over a fixed sample of `--sample` windows (default: the run's `siit.effect_windows`), the
second reusing the first, with the sampled loss change next to the full one.
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

from components.config import load_params  # noqa: E402
from components.data import Dataset  # noqa: E402
from components.model.recommender import GenerativeRecommender  # noqa: E402
from components.model.session import TrainingSession  # noqa: E402
from components.tokenizers.token_map import TokenMap  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=ROOT, help="project or bench run folder")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "processed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads, 0 = default")
    parser.add_argument(
        "--sample", type=int, default=None, help="windows sampled; default siit.effect_windows"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    params = load_params(str(args.run / "params.yaml"))
    dataset = Dataset.read(args.data)
    maps = sorted((args.run / "artifacts" / "token_maps").glob("round_*.parquet"))
    if len(maps) < 2:
        sys.exit(f"{args.run / 'artifacts' / 'token_maps'}: fewer than two rounds' maps")
    codes = [np.asarray(TokenMap.load(m).codes) for m in maps]
    rec = GenerativeRecommender.load(args.run / "artifacts" / "models" / "siit" / "model")
    session = TrainingSession(rec, dataset, codes[0], params.train, params.evaluate, 1)

    print(
        f"{args.run}: {len(dataset.item_ids())} items, {torch.get_num_threads()} threads, "
        f"precision {session.trainer.precision}\n"
    )
    print(
        "| refinement | churn | windows with a moved item | old map, full (s) | new map, full (s) "
        "| new map, reusing (s) | saved | loss full / reusing |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    total_full = total_reuse = 0.0
    fulls = []  # (old, reusing new, seconds of both) per refinement
    for r in range(len(codes) - 1):
        session.set_codes(codes[r])
        old, t_old = timed(session.seqrec_loss)
        session.set_codes(codes[r + 1])
        full, t_full = timed(session.seqrec_loss)
        reused, t_reuse = timed(lambda old=old: session.seqrec_loss(old))
        churn = float((codes[r] != codes[r + 1]).any(axis=1).mean())
        total_full += t_old + t_full
        total_reuse += t_old + t_reuse
        fulls.append((old, reused, t_old + t_reuse))
        print(
            f"| {r} -> {r + 1} | {churn:.3f} | {reused.rescored_share:.1%} | {t_old:.1f} | "
            f"{t_full:.1f} | {t_reuse:.1f} | {1 - t_reuse / t_full:.0%} | "
            f"{full.mean:.6f} / {reused.mean:.6f} |"
        )
    print(
        f"\nboth passes of every refinement: {total_full:.1f} s with a full second pass, "
        f"{total_reuse:.1f} s reusing ({1 - total_reuse / total_full:.0%} less)"
    )
    sample = params.siit.effect_windows if args.sample is None else args.sample
    print(
        f"\n| refinement | windows | loss old -> new, every window | both passes (s) | "
        f"loss old -> new, {sample} sampled | both passes (s) |"
    )
    print("|---|---:|---|---:|---|---:|")
    for r, (full_old, full_new, t_full) in enumerate(fulls):
        session.set_codes(codes[r])
        old, t_old = timed(lambda: session.seqrec_loss(sample=sample))
        session.set_codes(codes[r + 1])
        new, t_new = timed(lambda old=old: session.seqrec_loss(old, sample=sample))
        print(
            f"| {r} -> {r + 1} | {len(full_old.sums)} | {full_old.mean:.4f} -> "
            f"{full_new.mean:.4f} ({full_new.mean - full_old.mean:+.4f}) | {t_full:.1f} | "
            f"{old.mean:.4f} -> {new.mean:.4f} ({new.mean - old.mean:+.4f}) | "
            f"{t_old + t_new:.1f} |"
        )


if __name__ == "__main__":
    main()
