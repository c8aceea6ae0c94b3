"""Tokenizer scaling benchmark: wall time and peak memory, method x catalogue size.

    python bench/tokenize_scale.py                         # 1k, 10k, 100k items, every method
    python bench/tokenize_scale.py --sizes 1000 10000 --methods rqvae cid --threads 2

Synthetic catalogue: random unit 384-d embeddings (the all-MiniLM-L6-v2 width) and user
sequences that stay mostly inside latent item communities (so `cid` has a graph with
structure). Each cell runs in a fresh subprocess, so its peak RSS (ru_maxrss, which includes
the ~0.4 GiB of imported libraries) is its own. Tokenizer settings are the params.yaml
defaults (3 levels x 256 codes, 200 RQ-VAE epochs capped by its sample budget).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file shares its name with the stdlib `tokenize` module (imported by linecache, inspect,
# torch ...): run as a script, its own directory must not shadow the stdlib one.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

METHODS = ("rqvae", "rqkmeans", "cid", "random")
SIZES = (1_000, 10_000, 100_000)
EMBEDDING_DIM = 384
SEQUENCE_LENGTH = 20


def synthetic_embeddings(n_items: int, seed: int) -> np.ndarray:
    """Random unit vectors [n, 384]."""
    embeddings = np.random.default_rng(seed).normal(size=(n_items, EMBEDDING_DIM))
    embeddings = embeddings.astype(np.float32)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def synthetic_sequences(n_items: int, seed: int) -> list[np.ndarray]:
    """n/2 user sequences of 20 items, 80% of each inside the user's item community."""
    rng = np.random.default_rng(seed + 1)
    n_communities = max(10, n_items // 100)
    n_users = max(100, n_items // 2)
    community = rng.integers(n_communities, size=(n_users, 1))
    within = community + n_communities * rng.integers(
        n_items // n_communities, size=(n_users, SEQUENCE_LENGTH)
    )
    anywhere = rng.integers(n_items, size=(n_users, SEQUENCE_LENGTH))
    return list(np.where(rng.random((n_users, SEQUENCE_LENGTH)) < 0.8, within, anywhere))


def run_cell(method: str, n_items: int, seed: int) -> dict:
    """Build one token map in this process; report time, memory and the map's collisions."""
    import torch

    from components.config import TokenizeConfig
    from components.tokenizers import build_token_map

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    needs_embeddings = method in ("rqvae", "rqkmeans")
    embeddings = synthetic_embeddings(n_items, seed) if needs_embeddings else None
    sequences = synthetic_sequences(n_items, seed)
    ids = [str(i) for i in range(n_items)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    token_map = build_token_map(
        method,
        TokenizeConfig(method=method, seed=seed),
        item_ids=ids,
        texts=ids,
        train_sequences=sequences,
        embeddings=embeddings,
    )
    stats = token_map.metadata["stats"]
    return {
        "method": method,
        "n_items": n_items,
        "wall_s": time.perf_counter() - start,
        "rss_before_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "collision_rate_before": stats["collision_rate_before"],
        "levels": token_map.levels,
        "entropy_bits": stats["entropy_bits"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--cell", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(args.cell[0], int(args.cell[1]), args.seed)))
        return

    env = {
        **os.environ,
        **{
            v: str(args.threads)
            for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        },
    }
    header = f"{'method':<9} {'items':>7} {'wall s':>8} {'peak MiB':>9} {'(+ MiB)':>8} {'coll. before':>12} {'levels':>6}  entropy bits/level"
    print(f"# {args.threads} thread(s) per cell, seed {args.seed}")
    print(header)
    print("-" * len(header))
    for n_items in args.sizes:
        for method in args.methods:
            command = [
                sys.executable,
                __file__,
                "--cell",
                method,
                str(n_items),
                "--seed",
                str(args.seed),
            ]
            try:
                done = subprocess.run(
                    command,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                    check=True,
                )
            except subprocess.TimeoutExpired:
                print(f"{method:<9} {n_items:>7} {'> ' + str(args.timeout):>8}  (timed out)")
                continue
            except subprocess.CalledProcessError as err:
                print(f"{method:<9} {n_items:>7}  failed: {err.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            entropy = " ".join(f"{h:.2f}" for h in r["entropy_bits"])
            print(
                f"{method:<9} {n_items:>7} {r['wall_s']:>8.1f} {r['peak_rss_mib']:>9.0f} "
                f"{r['peak_rss_mib'] - r['rss_before_mib']:>8.0f} {r['collision_rate_before']:>12.4f} "
                f"{r['levels']:>6}  {entropy}",
                flush=True,
            )


if __name__ == "__main__":
    main()
