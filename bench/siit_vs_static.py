"""SIIT against the static initial tokenization: paired seeds, a verdict with its uncertainty.

    python bench/siit_vs_static.py                                  # 5 paired seeds, params.yaml
    python bench/siit_vs_static.py --seeds 1 2 -S train.epochs=9 -S siit.rounds=2
    python bench/siit_vs_static.py --seeds 1 2 --variant text:siit.signal=text \\
        --variant context:siit.signal=context --jobs 2               # compare SIIT settings
    python bench/siit_vs_static.py --seeds 1 2 --static-only --jobs 2 \\
        --static-variant e12:train.epochs=12                          # a static model screen

MovieLens-100k, tiny profile, params.yaml (overridable with -S key=value, for every model).
For every seed the initial map is made once (`tokenize.seed` = `train.seed` = the seed), and
static and each SIIT variant train the same epoch budget from that same map and seed: the
comparison is paired. Each variant is a name and its own -S-style overrides
(`name:key=value,key=value`); without --variant there is one, `siit`, with params.yaml as is.
A --static-variant is a static model with its own overrides (model, training or evaluation
settings), paired with the plain static model the same way.

Printed (markdown):
1. per seed: valid and test Recall/NDCG@5/10 of static and every variant;
2. per variant: mean relative improvement over static per test metric and on their average,
   and the 95% confidence interval (Student t over seeds) of the paired differences of that
   average; the same on validation, which is what settings are chosen on (the best epoch's,
   as the protocol selects), and on the validation of the last epoch, which no selection
   inflates (a diagnostic: a model past its peak gains more from picking its best of several
   noisy epochs than one still rising);
   with every run's per-user test results at hand, the test difference's interval again with
   the users resampled too (a pigeonhole bootstrap over seeds and users: the seeds' interval
   leaves out the sampling noise of the 943 users, who are the same in every seed);
3. the immediate effect of every refinement (the model just before refinement, with the old
   and the refined map: validation NDCG@10 and training seqrec loss);
4. with --fresh: a static model trained from scratch on each variant's final map (same seed
   and budget): are the refined identifiers better identifiers, or is any gain co-training?

Every run is the real pipeline (`siit tokenize`, `siit train_static`, `siit train_siit`) in its
own folder under bench/.runs/ with its own MLflow store, so every setting tried is logged.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import ROOT, RUNS, ensure_dataset, merge, prefect_server, run_config  # noqa: E402

METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10")
# The paired table's validation of each model's last epoch, beside that of its best epoch (the
# protocol's choice, an upward-biased maximum over noisy epochs: more so for a model that
# peaks early and then plateaus than for one still rising at its budget's end).
LAST = "valid, last epoch"
CROSS = "valid, cross-fitted"  # the best epoch chosen on other users than it is scored on


def parse_set(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: `a=1,b=[2,4]` -> ['a=1', 'b=[2,4]']."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p for p in [*parts, current] if p]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, sets = text.partition(":")
    return name, parse_set(split_top_level(sets))


def average(split: dict[str, float]) -> float:
    return statistics.mean(split[m] for m in METRICS)


def user_test_gains(work: str | Path, model_file: str) -> dict[str, float]:
    """Each test user's four-metric average (Recall/NDCG@5/10 of its one target) from a run's
    `reports/models/<model_file>_recommendations_test.parquet`; {} when the file is absent."""
    import polars as pl

    from components.metrics import user_gains

    path = Path(work) / "reports" / "models" / f"{model_file}_recommendations_test.parquet"
    if not path.exists():
        return {}
    frame = pl.read_parquet(path)
    hits = frame.filter(pl.col("item_id") == pl.col("target_item_id"))
    rank = dict(
        zip(hits.get_column("user_id").to_list(), hits.get_column("rank").to_list(), strict=True)
    )
    users = sorted(frame.get_column("user_id").unique().to_list())
    gains = user_gains([rank.get(u, 0) for u in users])
    return {u: float(sum(gains[m][i] for m in METRICS) / len(METRICS)) for i, u in enumerate(users)}


def pigeonhole_interval(
    diffs: np.ndarray, draws: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and 95% percentile interval of a [seeds, users] table of paired differences, seeds
    and users resampled independently in every draw (Owen's pigeonhole bootstrap): both the
    training noise (seeds) and the test users' sampling noise are in the interval."""
    diffs = np.asarray(diffs, dtype=np.float64)
    n_seeds, n_users = diffs.shape
    rng = np.random.default_rng(seed)
    means = np.empty(draws)
    for b in range(draws):
        rows = rng.integers(n_seeds, size=n_seeds)
        cols = rng.integers(n_users, size=n_users)
        means[b] = diffs[rows][:, cols].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(diffs.mean()), float(lo), float(hi)


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t confidence interval of paired differences."""
    from scipy import stats

    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def run_all(
    seeds: list[int],
    extra: dict,
    variants: dict[str, dict],
    tag: str,
    env,
    jobs: int,
    fresh: bool,
    static_variants: dict[str, dict] | None = None,
) -> dict[int, dict]:
    """Every seed's initial map once, then static, every SIIT variant and every static variant
    of every seed from that map, then (with `fresh`) a static model on each SIIT variant's
    final map. The trainings of all seeds share one queue of `jobs` workers, model by model
    (static of every seed, then the first variant of every seed, ...): no core waits for the
    slowest model of a seed before the next seed starts."""
    bases = {s: merge(extra, {"tokenize": {"seed": s}, "train": {"seed": s}}) for s in seeds}

    def static_name(seed: int) -> str:
        return f"{tag}-s{seed}-static"

    def initial_map(seed: int) -> Path:
        return RUNS / static_name(seed) / "artifacts" / "tokenize" / "token_map.parquet"

    def train(seed: int, name: str, overrides: dict, stage: str, token_map: Path) -> dict:
        work = RUNS / name
        if name != static_name(seed):
            target = work / "artifacts" / "tokenize"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            shutil.copy(token_map, target / "token_map.parquet")
        out = run_config(name, overrides, [stage], env, reuse=True)
        print(f"done: {name}", file=sys.stderr, flush=True)
        return out

    def run_queue(tasks: dict[tuple[int, str], tuple]) -> dict[tuple[int, str], dict]:
        with ThreadPoolExecutor(max_workers=jobs) as pool:  # FIFO: runs in the order given
            futures = {key: pool.submit(train, key[0], *task) for key, task in tasks.items()}
            return {key: f.result() for key, f in futures.items()}

    results: dict[int, dict] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        maps = {
            s: pool.submit(run_config, static_name(s), bases[s], ["tokenize"], env, True)
            for s in seeds
        }
        for s in seeds:
            results[s] = {"static": maps[s].result()}

    models = [("static", {}, "train_static")]
    models += [(name, o, "train_siit") for name, o in variants.items()]
    models += [(name, o, "train_static") for name, o in (static_variants or {}).items()]
    tasks = {
        (s, name): (
            static_name(s) if name == "static" else f"{tag}-s{s}-{name}",
            merge(bases[s], overrides),
            stage,
            initial_map(s),
        )
        for name, overrides, stage in models
        for s in seeds
    }
    for (s, name), out in run_queue(tasks).items():
        results[s].setdefault(name, {}).update(out)
    if fresh:
        tasks = {}
        for name in variants:
            for s in seeds:
                refined = RUNS / f"{tag}-s{s}-{name}" / "artifacts" / "token_maps"
                tasks[(s, f"fresh-{name}")] = (
                    f"{tag}-s{s}-fresh-{name}",
                    bases[s],
                    "train_static",
                    sorted(refined.glob("*"))[-1],
                )
        for (s, name), out in run_queue(tasks).items():
            results[s][name] = out
    return results


def check_configs(extra: dict, variants: dict[str, dict], static_variants: dict[str, dict]):
    """Every configuration the bench will train, checked before any training starts: a bad
    variant should stop the bench at once, not an hour in."""
    from pydantic import ValidationError

    from components.config import ConfigError, Params, describe_error

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    configs = {"static": extra, **variants, **static_variants}
    errors = []
    for name, overrides in configs.items():
        merged = merge(base, merge(extra, overrides))
        try:
            Params.model_validate(merged)
        except ValidationError as exc:
            errors += [f"  {name}: {describe_error(err)}" for err in exc.errors()]
    if errors:
        raise ConfigError("invalid bench configuration(s):\n" + "\n".join(errors))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument(
        "-S", dest="sets", action="append", default=[], help="key=value, all models"
    )
    parser.add_argument(
        "--variant", action="append", default=[], help="name:key=value,... (a SIIT setting)"
    )
    parser.add_argument("--fresh", action="store_true", help="static on each variant's final map")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at once (threads split)")
    parser.add_argument("--tag", default="", help="run-folder prefix (default: from -S)")
    parser.add_argument(
        "--static-variant",
        action="append",
        default=[],
        help="name:key=value,... (a static model with its own settings, e.g. a model screen)",
    )
    parser.add_argument(
        "--static-only",
        action="store_true",
        help="no SIIT model: the static one (for later reuse) and any --static-variant",
    )
    args = parser.parse_args()
    extra = parse_set(args.sets)
    variants = dict(parse_variant(v) for v in args.variant) or {"siit": {}}
    static_variants = dict(parse_variant(v) for v in args.static_variant)
    if clash := {"static", *variants} & set(static_variants):
        parser.error(f"--static-variant names must differ from the others: {sorted(clash)}")
    if args.static_only:
        variants = {}
    tag = args.tag or "-".join(a.replace("=", "").replace(".", "") for a in args.sets) or "default"
    if args.jobs > 1:  # split the cores between the trainings that run at once
        extra = merge({"train": {"threads": 1}}, extra)
    check_configs(extra, variants, static_variants)
    ensure_dataset()
    with prefect_server() as env:
        results = run_all(
            args.seeds, extra, variants, tag, env, args.jobs, args.fresh, static_variants
        )
    if variants or static_variants:
        print_tables(results, variants, args.fresh, static_variants)


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def print_tables(
    results: dict[int, dict],
    variants: dict[str, dict],
    fresh: bool,
    static_variants: dict[str, dict] | None = None,
    kinds: dict[str, str] | None = None,
) -> None:
    """kinds: which report ("siit" or "static") each model's runs hold, where it is not what
    its place says (a SIIT variant's "siit", every other model's "static"); the first model
    (named "static") is what the others are compared with."""
    models = (
        ["static", *variants]
        + ([f"fresh-{v}" for v in variants] if fresh else [])
        + list(static_variants or {})
    )

    def kind(model: str) -> str:
        return (kinds or {}).get(model) or ("siit" if model in variants else "static")

    def split_of(seed: int, model: str, split: str) -> dict[str, float]:
        report = results[seed][model][kind(model)]
        if split == LAST:  # the validation of the budget's last epoch: no epoch chosen
            last = [r for r in report["rounds"] if "valid_ndcg@10" in r][-1]
            return {m: last[f"valid_{m}"] for m in METRICS}
        if split == CROSS:
            return report["valid_cross_fitted"]
        return report[split]

    # runs made before the pipeline kept per-user validation ranks have no cross-fitted row
    cross = all(
        results[seed][m][kind(m)].get("valid_cross_fitted") for seed in results for m in models
    )
    seed_splits = ("valid", *((CROSS,) if cross else ()), "test")
    summary_splits = (*seed_splits[:-1], LAST, "test")

    print("| seed | model | split | " + " | ".join(METRICS) + " | average | best (round, epoch) |")
    print("|" + "---|" * (len(METRICS) + 5))
    for seed in results:
        for model in models:
            rep = results[seed][model][kind(model)]
            for split in seed_splits:
                vals = split_of(seed, model, split)
                cells = " | ".join(f"{vals[m]:.4f}" for m in METRICS)
                where = (
                    f"{rep['best_round']}, {rep.get('best_epoch', '-')}" if split == "valid" else ""
                )
                print(f"| {seed} | {model} | {split} | {cells} | {average(vals):.4f} | {where} |")
    seeds = list(results)
    print()
    print(f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}:")
    print()
    print("| model | split | " + " | ".join(METRICS) + " | average |")
    print("|" + "---|" * (len(METRICS) + 3))
    for model in models:
        for split in seed_splits:
            per_seed = [split_of(seed, model, split) for seed in seeds]
            columns = [[v[m] for v in per_seed] for m in METRICS]
            columns.append([average(v) for v in per_seed])
            cells = " | ".join(_mean_sd(c) for c in columns)
            print(f"| {model} | {split} | {cells} |")
    print()
    print(
        f"Paired over seeds {', '.join(map(str, seeds))}: mean relative change vs static, and "
        "the 95% t-interval of the paired difference of the four-metric average."
    )
    print()
    print(
        "| model | split | "
        + " | ".join(METRICS)
        + " | average | paired diff of average [95% CI] |"
    )
    print("|" + "---|" * (len(METRICS) + 4))
    for model in models[1:]:
        for split in summary_splits:
            cells = []
            for m in METRICS:
                s = statistics.mean(split_of(seed, "static", split)[m] for seed in seeds)
                v = statistics.mean(split_of(seed, model, split)[m] for seed in seeds)
                cells.append(f"{100 * (v - s) / s:+.1f}%" if s else "-")
            s_avg = statistics.mean(average(split_of(seed, "static", split)) for seed in seeds)
            v_avg = statistics.mean(average(split_of(seed, model, split)) for seed in seeds)
            diffs = [
                average(split_of(seed, model, split)) - average(split_of(seed, "static", split))
                for seed in seeds
            ]
            mean, lo, hi = t_interval(diffs)
            rel = f"{100 * (v_avg - s_avg) / s_avg:+.1f}%"
            print(
                f"| {model} | {split} | {' | '.join(cells)} | {rel} | "
                f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}] |"
            )
    print_user_intervals(results, models, kind)
    if not variants:
        return
    print()
    print("Immediate effect of each refinement (same model, old map -> refined map):")
    print()
    print(
        "| model | seed | round | churn | collisions before | valid ndcg@10 old -> new | "
        "seqrec loss old -> new | text coherence, levels 0 / 0-1, old -> new |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model in variants:
        for seed in seeds:
            for row in results[seed][model]["siit"]["rounds"]:
                if "churn" not in row:
                    continue
                print(
                    f"| {model} | {seed} | {row['round']} | {row['churn']:.3f} | "
                    f"{row['collision_rate_before']:.3f} | "
                    f"{row['effect_valid_ndcg@10_old']:.4f} -> {row['effect_valid_ndcg@10_new']:.4f} | "
                    f"{row['effect_seqrec_loss_old']:.3f} -> {row['effect_seqrec_loss_new']:.3f} | "
                    f"{_coherence(row)} |"
                )


def _coherence(row: dict) -> str:
    """A refinement's text coherence (siit.text_coherence), old -> new map, by prefix depth."""

    def depths(when: str) -> str:
        values = [row.get(f"text_coherence{when}_l{i}") for i in (0, 1)]
        return " / ".join("–" if v is None else f"{v:.3f}" for v in values)

    if "text_coherence_l0" not in row:
        return "–"
    return f"{depths('_before')} -> {depths('')}"


def print_user_intervals(results: dict[int, dict], models: list[str], kind) -> None:
    """The test difference's interval with the users resampled too, when every run left its
    per-user test results (runs of the pipeline; not the tests' synthetic reports)."""
    if not all("work" in results[s][m] for s in results for m in models):
        return
    gains = {
        (s, m): user_test_gains(results[s][m]["work"], kind(m)) for s in results for m in models
    }
    if not all(gains.values()):
        return
    users = sorted(gains[next(iter(results)), "static"])
    print()
    print(
        "Test, seeds and users resampled (pigeonhole bootstrap, 2,000 draws, "
        f"{len(results)} seeds x {len(users)} users): paired difference of the four-metric "
        "average [95% interval]"
    )
    print()
    for model in models[1:]:
        diffs = np.array(
            [[gains[s, model][u] - gains[s, "static"][u] for u in users] for s in results]
        )
        mean, lo, hi = pigeonhole_interval(diffs)
        print(f"- {model}: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()
