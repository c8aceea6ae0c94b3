"""Would identifiers built from what the model learned about each item be better identifiers?

    python bench/collab_map.py --seeds 1 2 3 4 5 --jobs 2 --alpha 1     # ~1 h on 2 cores (fp32)
    python bench/collab_map.py --seeds 1 2 --jobs 2 --alpha 0.5 --alpha 2

A diagnostic for SIIT (issue 10), not a pipeline setting. For every seed, the static model of
`bench/siit_vs_static.py` (same runs, same tag: reused when they exist) trains on its rqvae map
of the item texts. Its item rows (`model.item_inputs`: each item's own input token, tied to the
training softmax and trained by SASRec's next-item loss, `train.item_loss`) are what the network
learned about the items from the histories. A new map is fitted by the same tokenizer (rqvae,
the seed's `tokenize` settings) on each item's text embedding joined with `alpha` times its
item row (both L2-normalised first), and a fresh static model trains from scratch on it with
the same seed and budget. The tables are `bench/siit_vs_static.py`'s, each map's model
(`rows<alpha>`) paired with the plain static model by seed.

If such maps win on validation, identifiers that moved towards the model's collaborative
view could pay, and a refinement that builds them is worth making; if they do not, the
text map is not what holds the model back. Every run is the real pipeline in its own folder
under bench/.runs/ with its MLflow store.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import RUNS, ensure_dataset, merge, prefect_server, run_config  # noqa: E402
from siit_vs_static import check_configs, parse_set, print_tables, run_all  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def item_row_features(model_dir: Path) -> np.ndarray:
    """float32 [items, hidden]: a trained model's item rows, item i's at row i."""
    from components.model.head import item_rows
    from components.model.recommender import GenerativeRecommender

    rec = GenerativeRecommender.load(model_dir)
    rows = item_rows(rec.model)
    if rows is None:
        raise SystemExit(f"{model_dir}: the model has no item rows (model.item_inputs: false)")
    weight = rec.model.get_input_embeddings().weight[rows.base : rows.base + rows.count]
    return weight.detach().float().numpy()


def collaborative_map(work: Path, alpha: float, out: Path) -> dict:
    """Fit the run's tokenizer on [text embedding, alpha x item row] of every item and save
    the validated map to `out`; returns its statistics."""
    from components.config import load_params
    from components.data import Dataset
    from components.paths import Paths
    from components.tokenizers import (
        EMBEDDING_METHODS,
        embed_texts,
        fit_token_map,
        validate_token_map,
    )

    params, paths = load_params(work / "params.yaml"), Paths(work)
    if params.tokenize.method not in EMBEDDING_METHODS:
        raise SystemExit(f"tokenize.method {params.tokenize.method} fits no embeddings")
    dataset = Dataset.read(paths.processed)
    text = embed_texts(dataset.item_texts(), params.tokenize.encoder, paths.embeddings_cache)
    rows = item_row_features(paths.model_dir("static") / "model")
    if len(rows) != len(text):
        raise SystemExit(f"{work}: {len(rows)} item rows for {len(text)} items")
    features = np.concatenate([_unit(text), alpha * _unit(rows)], axis=1).astype(np.float32)
    token_map, _ = fit_token_map(
        params.tokenize.method,
        params.tokenize,
        item_ids=dataset.item_ids(),
        texts=dataset.item_texts(),
        train_sequences=dataset.train_sequences(),
        embeddings=features,
    )
    validate_token_map(token_map, dataset.item_ids(), str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    token_map.save(out)
    return token_map.metadata.get("stats", {})


def code_agreement(a: Path, b: Path) -> tuple[float, float]:
    """How much two maps group the items alike, whatever the codes are called: the
    mutual information of their first codes, and of their two-code prefixes, adjusted for
    chance (0: no more alike than random groupings of the same sizes; 1: the same groups)."""
    from sklearn.metrics import adjusted_mutual_info_score

    from components.tokenizers import TokenMap

    ca, cb = TokenMap.load(a).codes, TokenMap.load(b).codes

    def prefix(codes: np.ndarray) -> np.ndarray:
        return codes[:, 0] * (int(codes[:, 1].max()) + 1) + codes[:, 1]

    return (
        adjusted_mutual_info_score(ca[:, 0], cb[:, 0]),
        adjusted_mutual_info_score(prefix(ca), prefix(cb)),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("-S", dest="sets", action="append", default=[], help="key=value")
    parser.add_argument("--alpha", type=float, action="append", help="item rows' weight")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--tag", default="cm", help="run-folder prefix")
    args = parser.parse_args(argv)
    alphas = args.alpha or [1.0]
    extra = parse_set(args.sets)
    if args.jobs > 1:
        extra = merge({"train": {"threads": 1}}, extra)
    check_configs(extra, {}, {})
    ensure_dataset()
    names = {alpha: f"rows{alpha:g}" for alpha in alphas}
    with prefect_server() as env:
        results = run_all(args.seeds, extra, {}, args.tag, env, args.jobs, False, {})
        tasks = []
        for seed in args.seeds:
            static = RUNS / f"{args.tag}-s{seed}-static"
            base = merge(extra, {"tokenize": {"seed": seed}, "train": {"seed": seed}})
            for alpha, name in names.items():
                work = RUNS / f"{args.tag}-s{seed}-{name}"
                target = work / "artifacts" / "tokenize" / "token_map.parquet"
                if target.parent.exists():
                    shutil.rmtree(target.parent)
                stats = collaborative_map(static, alpha, target)
                first, pairs = code_agreement(
                    static / "artifacts" / "tokenize" / "token_map.parquet", target
                )
                print(
                    f"seed {seed} {name}: AMI with the text map, first codes {first:.3f}, two-code "
                    f"prefixes {pairs:.3f}; collisions before {stats.get('collision_rate_before', float('nan')):.3f}",
                    file=sys.stderr,
                    flush=True,
                )
                tasks.append((seed, name, f"{args.tag}-s{seed}-{name}", base))

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {
                (seed, name): pool.submit(run_config, folder, b, ["train_static"], env, True)
                for seed, name, folder, b in tasks
            }
            for (seed, name), future in futures.items():
                results[seed][name] = future.result()
    print_tables(results, {}, False, {name: {} for name in names.values()})


if __name__ == "__main__":
    main()
