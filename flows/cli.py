"""`siit` console script: one sub-command per pipeline stage, `show` (the results table),
`repro` and `exp` (dvc with one local Prefect server; their arguments go to dvc untouched)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from flows.env import configure_environment

STAGES = ("prepare", "validate", "tokenize", "train_static", "train_siit", "report")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siit", description=__doc__)
    parser.add_argument(
        "--params", default="params.yaml", help="parameter file (default: params.yaml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        sub.add_parser(stage, help=f"run the '{stage}' stage as a Prefect flow")
    base = sub.add_parser(
        "base_model", help="fetch the pretrained backbone once (user cache) and write its manifest"
    )
    base.add_argument("--manifest", default="artifacts/base_model.json")
    sub.add_parser("show", help="print reports/metrics.json as a table")
    sub.add_parser("repro", help="`dvc repro ...` with one local Prefect server for all stages")
    sub.add_parser(
        "exp",
        help="`dvc exp ...` (e.g. `siit exp run -S train.lr=0.001`) with one local Prefect server",
    )
    return parser


PASSTHROUGH = ("repro", "exp")  # everything after these goes to dvc untouched


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """(siit's own arguments, dvc's) so that `siit repro --force x` keeps dvc's options intact."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--params":
            i += 2
            continue
        if not token.startswith("-"):
            return (argv[: i + 1], argv[i + 1 :]) if token in PASSTHROUGH else (argv, [])
        i += 1
    return argv, []


def main(argv: list[str] | None = None) -> int:
    own, passthrough = _split_passthrough(sys.argv[1:] if argv is None else list(argv))
    args = _parser().parse_args(own)
    configure_environment()
    if args.command == "show":
        return _show()
    if args.command in PASSTHROUGH:
        from flows.server import run_with_server

        dvc = str(Path(sys.executable).parent / "dvc")
        return run_with_server([dvc, args.command, *passthrough], Path(os.environ["PREFECT_HOME"]))
    if args.command == "base_model":
        from components.config import ConfigError
        from components.model.base_model import write_manifest

        try:
            write_manifest(args.params, args.manifest)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"siit base_model: error: {exc}", file=sys.stderr)
            return 1
        return 0
    from components.config import ConfigError
    from components.data import DataError
    from components.tokenizers import TokenMapValidationError

    try:
        _run_stage(args.command, args.params)
    except (ConfigError, DataError, TokenMapValidationError, FileNotFoundError) as exc:
        print(f"siit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_stage(stage: str, params_file: str) -> None:
    if stage in ("prepare", "validate"):
        from flows.data import prepare_flow, validate_flow

        (prepare_flow if stage == "prepare" else validate_flow)(params_file=params_file)
    elif stage == "tokenize":
        from flows.tokenize import tokenize_flow

        tokenize_flow(params_file=params_file)
    elif stage.startswith("train_"):
        from flows.train import train_flow

        train_flow(mode=stage.removeprefix("train_"), params_file=params_file)
    else:
        from flows.report import report_flow

        report_flow(params_file=params_file)


def _show() -> int:
    from components.reporting import format_metrics_table

    path = Path("reports/metrics.json")
    if not path.exists():
        print(f"{path} not found: run `dvc repro` first", file=sys.stderr)
        return 1
    print(format_metrics_table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
