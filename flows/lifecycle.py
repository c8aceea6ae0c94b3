"""`siit deploy` (scheduled retraining) and `siit compare` (two MLflow runs side by side).

Kept apart from flows/cli.py so that the parser stays light: nothing heavy is imported until
a command runs.
"""

from __future__ import annotations

import argparse
import sys


def add_subcommands(sub) -> None:
    deploy = sub.add_parser(
        "deploy",
        help="serve a Prefect deployment that runs `dvc repro` on a cron schedule",
        description="Serve the `retrain` flow as a Prefect deployment (runs until interrupted). "
        "Each run takes the pipeline lock, applies the -S overrides to params.yaml and runs "
        "`dvc repro`; trigger one now with `prefect deployment run retrain/<name>`.",
    )
    deploy.add_argument("--cron", required=True, help='cron schedule, e.g. "0 3 * * 1"')
    deploy.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter override applied before each run (as `dvc exp run -S`), repeatable",
    )
    deploy.add_argument("--name", default="siit-retrain", help="deployment name")
    deploy.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="how long a run waits for another pipeline run to finish before it gives up (0)",
    )
    deploy.add_argument(
        "--start",
        choices=("auto", "champion", "scratch"),
        default="auto",
        help="how each run trains: auto (default) = from the registered champion once there is "
        "one (scratch when it is incompatible), else from scratch",
    )
    compare = sub.add_parser(
        "compare", help="two MLflow runs' params and metrics side by side (ids or run names)"
    )
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.add_argument(
        "--all", action="store_true", help="show equal params too (default: only differences)"
    )


def run_subcommand(args: argparse.Namespace) -> int:
    if args.command == "deploy":
        from flows.deploy import serve

        serve(args.cron, list(args.overrides), name=args.name, wait_s=args.wait, start=args.start)
        return 0
    return compare(args.params, args.run_a, args.run_b, show_all=args.all)


def compare(params_file: str, run_a: str, run_b: str, show_all: bool = False) -> int:
    from components import tracking
    from components.config import load_params

    cfg = load_params(params_file).tracking
    try:
        a, b = tracking.run_summary(cfg, run_a), tracking.run_summary(cfg, run_b)
    except LookupError as exc:
        print(f"siit compare: error: {exc}", file=sys.stderr)
        return 1
    print(format_comparison(a, b, show_all))
    return 0


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_comparison(a: dict, b: dict, show_all: bool = False) -> str:
    """Sections: runs (name, id, commit, pipeline run), params, metrics (with b - a)."""
    head_a = f"{a['run_name']} ({a['run_id'][:8]})"
    head_b = f"{b['run_name']} ({b['run_id'][:8]})"
    rows: list[tuple[str, str, str, str]] = [("", head_a, head_b, "")]
    for tag in ("stage", "git.commit", "git.dirty", "siit.pipeline_run"):
        rows.append((tag, _fmt(a["tags"].get(tag)), _fmt(b["tags"].get(tag)), ""))
    rows.append(("[params]", "", "", ""))
    for key in sorted(set(a["params"]) | set(b["params"])):
        va, vb = a["params"].get(key), b["params"].get(key)
        if show_all or va != vb:
            rows.append((key, _fmt(va), _fmt(vb), "differs" if va != vb else ""))
    rows.append(("[metrics]", "", "", "b - a"))
    for key in sorted(set(a["metrics"]) | set(b["metrics"])):
        va, vb = a["metrics"].get(key), b["metrics"].get(key)
        delta = f"{vb - va:+.6g}" if va is not None and vb is not None else ""
        rows.append((key, _fmt(va), _fmt(vb), delta))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
