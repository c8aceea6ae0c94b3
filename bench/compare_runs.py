"""Two finished groups of bench runs, paired per seed: the same tables as siit_vs_static.py.

    python bench/compare_runs.py hoii-siit rdr-siit --seeds 1 2 3 4 5     # B against A
    python bench/compare_runs.py ho-static hoii-static hoii-siit --seeds 1 2

Each group is `<tag>-<model>`: the run folders bench/.runs/<tag>-s<seed>-<model>/ that
siit_vs_static.py left (a SIIT run's report is siit.json, any other's static.json). The first
group is the baseline every other is compared with; nothing is trained. For comparisons across
tags, e.g. a setting changed for static and SIIT together: the runs must share the seeds and
the initial maps (runs of one machine type with the same `tokenize` settings do).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import RUNS, made_on  # noqa: E402
from siit_vs_static import print_tables  # noqa: E402


def load_group(
    group: str, seeds: list[int], runs_dir: Path | None = None
) -> tuple[str, dict[int, dict]]:
    """(report kind, {seed: {kind: report, "work": folder}}) of one group's runs, found in
    `runs_dir` (default bench/.runs)."""
    tag, sep, model = group.partition("-")
    if not sep or not tag or not model:
        raise SystemExit(f"{group!r}: a group is <tag>-<model>, e.g. hoii-siit")
    runs, kinds = {}, set()
    for seed in seeds:
        work = (runs_dir or RUNS) / f"{tag}-s{seed}-{model}"
        found = [k for k in ("siit", "static") if (work / "reports/models" / f"{k}.json").exists()]
        if not found:
            raise SystemExit(f"{work}: no finished run (reports/models/siit.json or static.json)")
        kind = found[0]
        kinds.add(kind)
        report = json.loads((work / "reports/models" / f"{kind}.json").read_text())
        runs[seed] = {kind: report, "work": str(work)}
    if len(kinds) > 1:
        raise SystemExit(f"{group}: its runs hold different models ({sorted(kinds)})")
    return kinds.pop(), runs


def same_machine(groups: list[dict[int, dict]], seeds: list[int]) -> None:
    """Refuse to pair runs of one seed made on different CPUs (the `.machine` that
    runner.run_config leaves in each run folder): one seed is exact run to run on one machine,
    but NDCG@10 moves by several percent across machines, so such a pairing measures the
    machines. Folders from before `.machine` existed are not checked."""
    for seed in seeds:
        made: dict[str, list[str]] = {}
        for runs in groups:
            cpu = made_on(runs[seed]["work"])
            if cpu is not None:
                made.setdefault(cpu, []).append(Path(runs[seed]["work"]).name)
        if len(made) > 1:
            detail = "; ".join(f"{', '.join(f)} on {cpu}" for cpu, f in made.items())
            raise SystemExit(f"seed {seed}: runs made on different CPUs cannot be paired: {detail}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("groups", nargs="+", help="<tag>-<model>: the baseline first")
    args = parser.parse_args()
    if len(args.groups) < 2:
        parser.error("two groups at least: the baseline and one to compare with it")
    if len(set(args.groups)) != len(args.groups):
        parser.error("a group is named twice")
    loaded = [load_group(g, args.seeds) for g in args.groups]
    same_machine([runs for _, runs in loaded], args.seeds)
    names = ["static", *args.groups[1:]]  # print_tables calls its baseline "static"
    kinds = {name: kind for name, (kind, _) in zip(names, loaded, strict=True)}
    results = {
        seed: {name: runs[seed] for name, (_, runs) in zip(names, loaded, strict=True)}
        for seed in args.seeds
    }
    print(f"Baseline (`static` below): {args.groups[0]}.")
    print()
    print_tables(results, {}, False, {name: {} for name in names[1:]}, kinds=kinds)


if __name__ == "__main__":
    main()
