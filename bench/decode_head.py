"""Finished bench runs' selected models decoded with and without the item rows in the softmax.

    python bench/decode_head.py rdr-static rdr-mg05 --seeds 1 2 3 4 5

`model.item_inputs_in_head` says which softmax covers the item input rows: `true` training's
and decoding's, `training` training's only. A model trained with either has the same weights
for the same seed, so this takes each run's selected model (bench/.runs/<tag>-s<seed>-<model>/
artifacts/models/<kind>/, left by siit_vs_static.py) and its token map, and ranks the
validation and test users twice, decoding over the item rows (`true`) and without them
(`training`), with the run's own evaluate settings. Nothing is trained. It prints a row per
run and the mean difference; the item rows never hold an identifier token, so they change the
scores only through each step's normaliser.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The project root instead of bench/ (bench/ scripts import the project from its root).
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)
sys.path.insert(1, str(ROOT / "bench"))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from compare_runs import load_group  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data.dataset import Dataset  # noqa: E402
from components.model.recommender import GenerativeRecommender  # noqa: E402
from components.model.session import evaluate_model  # noqa: E402
from components.tokenizers.token_map import TokenMap  # noqa: E402

SETTINGS = (True, "training")  # decoding over the item rows, and without them
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")


def load_run_model(work: Path, kind: str):
    """(params, dataset, model, codes) of one finished run's selected model, on the CPU; a
    model without item rows is refused (every bench that reads them needs them)."""
    params = load_params(work / "params.yaml")
    dataset = Dataset.read(work / "data" / "processed")
    folder = work / "artifacts" / "models" / kind
    rec = GenerativeRecommender.load(folder / "model", device=torch.device("cpu"))
    if not rec.item_inputs:
        raise SystemExit(f"{work}: the model has no item rows (model.item_inputs false)")
    return params, dataset, rec, TokenMap.load(folder / "token_map.parquet").codes


def redecode(work: Path, kind: str) -> dict:
    """{setting: {split: metrics, "seconds": decoding time}} for one finished run's model."""
    params, dataset, rec, codes = load_run_model(work, kind)
    out = {}
    for setting in SETTINGS:
        # the same weights; __post_init__ installs the head the setting asks for
        model = dataclasses.replace(rec, item_inputs_in_head=setting)
        start, row = time.perf_counter(), {}
        for split in ("valid", "test"):
            row[split], _ = evaluate_model(model, dataset, codes, params.evaluate, split)
        row["seconds"] = time.perf_counter() - start
        out[setting] = row
    return out


def average(metrics: dict[str, float]) -> float:
    return float(np.mean([metrics[m] for m in METRICS]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("groups", nargs="+", help="<tag>-<model>, e.g. rdr-static rdr-mg05")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        "| run | valid ndcg@10 rows in -> out | test ndcg@10 rows in -> out "
        "| valid average diff | test average diff | decoding s in / out |"
    )
    print("|---|---|---|---|---|---|")
    diffs: dict[str, list[float]] = {"valid": [], "test": []}
    for group in args.groups:
        kind, runs = load_group(group, args.seeds)
        for seed in args.seeds:
            work = Path(runs[seed]["work"])
            res = redecode(work, kind)
            rows_in, rows_out = res[True], res["training"]
            cells = []
            for split in ("valid", "test"):
                diff = average(rows_out[split]) - average(rows_in[split])
                diffs[split].append(diff)
                cells.append(f"{diff:+.5f}")
            print(
                f"| {work.name} | {rows_in['valid']['ndcg@10']:.5f} -> "
                f"{rows_out['valid']['ndcg@10']:.5f} | {rows_in['test']['ndcg@10']:.5f} -> "
                f"{rows_out['test']['ndcg@10']:.5f} | {cells[0]} | {cells[1]} "
                f"| {rows_in['seconds']:.1f} / {rows_out['seconds']:.1f} |",
                flush=True,
            )
    n = len(diffs["valid"])
    print(
        f"\n{n} runs; four-metric average, rows out minus rows in: valid mean "
        f"{np.mean(diffs['valid']):+.5f} (min {min(diffs['valid']):+.5f}), test mean "
        f"{np.mean(diffs['test']):+.5f} (min {min(diffs['test']):+.5f}); "
        f"identical valid on {sum(d == 0 for d in diffs['valid'])} of {n}"
    )


if __name__ == "__main__":
    main()
