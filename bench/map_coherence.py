"""What finished bench runs' token maps look like: text coherence and prefix sharing, per map.

    python bench/map_coherence.py rc28-static rc28-thof5 rc28-fresh-thof5 --seeds 1 2 3
    python bench/map_coherence.py rc28-static --seeds 1 --map artifacts/tokenize/token_map.parquet

A group is `<tag>-<model>` as in compare_runs.py (bench/.runs/<tag>-s<seed>-<model>/). Each run's
maps: a SIIT run's every round (artifacts/token_maps/), any other run's initial map. `--map`:
further token maps of the same catalogue (e.g. the pipeline's rqvae map), scored against the
first run's items. Per map: the text coherence of its prefixes (components.tokenizers.
text_coherence: the mean cosine similarity of two items' text embeddings under one prefix, less
that of any two items; about 0 for random ids), the distinct prefixes per depth and level 0's
entropy. The text embeddings come from each run's `tokenize.encoder` through a cache shared by
the runs (bench/.runs/.embeddings); nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import ROOT, RUNS  # noqa: E402

sys.path.insert(0, str(ROOT))


def run_maps(work: Path) -> list[Path]:
    """A SIIT run's maps round by round; any other run's initial map."""
    rounds = sorted((work / "artifacts" / "token_maps").glob("round_*.parquet"))
    initial = work / "artifacts" / "tokenize" / "token_map.parquet"
    found = rounds or ([initial] if initial.exists() else [])
    if not found:
        raise SystemExit(f"{work}: no token map (artifacts/token_maps/ or artifacts/tokenize/)")
    return found


def map_row(path: Path, item_ids: list[str], vectors: np.ndarray) -> dict:
    """One map's figures, its rows put in the items' order (by item id)."""
    from components.tokenizers import TokenMap, text_coherence, token_map_stats

    token_map = TokenMap.load(path)
    index = {item: i for i, item in enumerate(token_map.item_ids)}
    missing = [item for item in item_ids if item not in index]
    if missing or len(index) != len(item_ids):
        raise SystemExit(f"{path}: not a map of the run's {len(item_ids)} items ({missing[:3]})")
    codes = token_map.codes[[index[item] for item in item_ids]]
    stats = token_map_stats(codes, token_map.codebook_sizes)
    return {
        "coherence": text_coherence(codes, vectors),
        "prefixes": stats["distinct_prefixes"],
        "entropy_l0": stats["entropy_bits"][0],
    }


def run_items(work: Path) -> tuple[list[str], np.ndarray]:
    """A run's item ids and text embeddings, in its dataset's order."""
    from components.data import Dataset
    from components.tokenizers import embed_texts

    params = yaml.safe_load((work / "params.yaml").read_text())
    dataset = Dataset.read(work / "data" / "processed")
    vectors = embed_texts(dataset.item_texts(), params["tokenize"]["encoder"], RUNS / ".embeddings")
    return dataset.item_ids(), vectors


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", help="<tag>-<model>, e.g. rc28-thof5")
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--map", action="append", default=[], help="a further token map")
    args = parser.parse_args()
    print(
        "| run | map | text coherence, level 0 | levels 0-1 | distinct prefixes, level 0 | "
        "levels 0-1 | entropy, level 0 (bits) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    finals: dict[str, list[dict]] = {}
    first: tuple[list[str], np.ndarray] | None = None
    for group in args.groups:
        tag, sep, model = group.partition("-")
        if not sep or not tag or not model:
            raise SystemExit(f"{group!r}: a group is <tag>-<model>, e.g. rc28-thof5")
        for seed in args.seeds:
            work = RUNS / f"{tag}-s{seed}-{model}"
            if not (work / "params.yaml").exists():
                raise SystemExit(f"{work}: no bench run (params.yaml)")
            items = run_items(work)
            first = first or items
            for path in run_maps(work):
                row = map_row(path, *items)
                _print(work.name, path.name, row)
            finals.setdefault(group, []).append(row)
    for extra in args.map:
        if first is None:
            raise SystemExit("--map needs a run for its items")
        row = map_row(Path(extra), *first)
        _print("--map", extra, row)
        finals[extra] = [row]
    print()
    print("Final maps, mean over the seeds:")
    print()
    print("| group | text coherence, level 0 | levels 0-1 | distinct prefixes, levels 0-1 |")
    print("|---|---:|---:|---:|")
    for group, rows in finals.items():
        means = [_mean([r["coherence"][d] for r in rows]) for d in range(len(rows[0]["coherence"]))]
        prefixes = np.mean([r["prefixes"][1] for r in rows]) if len(rows[0]["prefixes"]) > 1 else 0
        print(f"| {group} | {' | '.join(_cell(m) for m in means[:2])} | {prefixes:.0f} |")


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _print(run: str, name: str, row: dict) -> None:
    coherence = [*row["coherence"], None, None][:2]
    prefixes = [*row["prefixes"], 0][:2]
    print(
        f"| {run} | {name} | {_cell(coherence[0])} | {_cell(coherence[1])} | "
        f"{prefixes[0]} | {prefixes[1]} | {row['entropy_l0']:.2f} |"
    )


if __name__ == "__main__":
    main()
