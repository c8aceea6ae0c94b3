"""Refinement speed: items/s of `propose_identifiers` (the text and context signals).

    python bench/refine.py                                   # 1,682 items, text and context
    python bench/refine.py --reference /tmp/ref              # also a checkout of another commit
    python bench/refine.py --items 500 --repeats 1           # a quicker run

The pipeline's tiny model (the `model` and `siit` sections of params.yaml, random init, 3 x 256
codebooks) proposes identifiers for every item of a synthetic catalogue (titles of 4-8 words,
random unique identifiers; for the context signal `siit.contexts_per_item` random 20-item
histories per item). Rows:

- `ours`: this checkout as the pipeline runs it;
- `transformers cache`: this checkout with the search on transformers' KV cache copied per
  beam (`shared_prompt=False`), the path the search used before; same candidates expected;
- `reference`: with --reference DIR, the same measurement importing the project from DIR (a
  git worktree of another commit, e.g. the issue's reference c9d3462), in its own process.
  Signals that DIR's `propose_identifiers` does not have are skipped.

Items/s is the best of --repeats timed passes after one warm-up pass, each in the same process;
the runs take turns signal by signal. "same candidates" compares codes and scores with `ours`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: its scripts' names must not shadow packages


def build(root: Path, n_items: int, seed: int):
    """The model, texts, current map, contexts and siit config of one run (imports from root)."""
    import numpy as np

    from components.config import load_params
    from components.model.recommender import GenerativeRecommender

    params = load_params(root / "params.yaml")
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(words, rng.integers(4, 9))) for _ in range(n_items)]
    sizes = (256, 256, 256)
    rec = GenerativeRecommender.create(params.model, sizes, texts, seed=seed, n_items=n_items)
    flat = rng.choice(256**3, n_items, replace=False)
    codes = np.stack([flat // 65536, flat // 256 % 256, flat % 256], axis=1).astype(np.int64)
    per_item = getattr(params.siit, "contexts_per_item", 4)
    contexts = [
        [rng.choice(n_items, 20, replace=False).astype(np.int64) for _ in range(per_item)]
        for _ in range(n_items)
    ]
    return rec, texts, codes, contexts, params.siit


def measure(root: Path, args: argparse.Namespace, signals: list[str], paths: list[str]) -> dict:
    """{signal: {path: {"items_s", "digest"}}} for this process (imports from root)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(root))
    if args.threads:
        torch.set_num_threads(args.threads)
    import components.siit.refine as refine

    rec, texts, codes, contexts, siit = build(root, args.items, args.seed)
    has_signal = "contexts" in inspect.signature(refine.propose_identifiers).parameters
    search = refine.constrained_beam_search
    out: dict = {}
    for signal in signals:
        if signal != "text" and not has_signal:
            continue
        cfg = siit.model_copy(update={"signal": signal}) if has_signal else siit
        kwargs = {"contexts": contexts} if has_signal else {}
        out[signal] = {}
        for path in paths:
            refine.constrained_beam_search = (
                functools.partial(search, shared_prompt=False) if path == "cache" else search
            )
            refine.propose_identifiers(rec, texts, codes, cfg, args.seed, **kwargs)  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                cand = refine.propose_identifiers(rec, texts, codes, cfg, args.seed, **kwargs)
                best = min(best, time.perf_counter() - start)
            digest = hashlib.sha256(cand.codes.astype(np.int64).tobytes()).hexdigest()[:12]
            out[signal][path] = {
                "items_s": args.items / best,
                "digest": digest,
                "scores": np.where(np.isfinite(cand.scores), cand.scores, -1e9).tolist(),
            }
        refine.constrained_beam_search = search
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--signals", nargs="+", default=["text", "context"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", help="a checkout of another commit to measure too")
    parser.add_argument("--root", help=argparse.SUPPRESS)  # worker: import from this checkout
    parser.add_argument("--paths", nargs="+", default=["ours", "cache"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.root:  # a worker process: print the measurement as JSON
        print(json.dumps(measure(Path(args.root), args, args.signals, args.paths)))
        return 0

    def worker(root: Path, signal: str, paths: list[str]) -> dict:
        cmd = [sys.executable, __file__, "--root", str(root), "--items", str(args.items)]
        cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        cmd += ["--seed", str(args.seed), "--signals", signal, "--paths", *paths]
        env = {**os.environ, "PYTHONPATH": str(root)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
        if done.returncode:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"refine bench worker failed in {root}")
        return json.loads(done.stdout.strip().splitlines()[-1]).get(signal, {})

    import numpy as np
    import torch

    rows = []
    for signal in args.signals:
        got = worker(ROOT, signal, ["ours", "cache"])
        if args.reference:
            ref = worker(Path(args.reference).resolve(), signal, ["ours"])
            if ref:
                got["reference"] = ref["ours"]
        rows.append((signal, got))
    threads = args.threads or torch.get_num_threads()
    print(
        f"\nCPU, {os.cpu_count()} CPU cores, torch {torch.__version__} ({threads} threads), "
        f"{platform.machine()}; {args.items:,} items, 3 x 256 codebooks, best of {args.repeats}\n"
    )
    print("| signal | run | items/s | ours' speed-up | same codes as ours | max score gap |")
    print("|---|---|---|---|---|---|")
    names = {"ours": "ours", "cache": "transformers cache", "reference": "reference"}
    mismatch = False
    for signal, got in rows:
        ours = got["ours"]
        for path, res in got.items():
            same = res["digest"] == ours["digest"]
            gap = float(np.abs(np.array(res["scores"]) - np.array(ours["scores"])).max())
            mismatch |= path == "cache" and not same
            other = path != "ours"
            speedup = f"{ours['items_s'] / res['items_s']:.2f}x" if other else ""
            print(
                f"| {signal} | {names[path]} | {res['items_s']:.1f} | "
                f"{speedup} | "
                f"{('yes' if same else 'NO') if other else ''} | {f'{gap:.1e}' if other else ''} |"
            )
    return 1 if mismatch else 0


if __name__ == "__main__":
    raise SystemExit(main())
