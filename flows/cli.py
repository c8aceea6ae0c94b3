"""`siit` console script: one sub-command per pipeline stage, `show` (the results table),
`repro` and `exp` (dvc with one local Prefect server; their arguments go to dvc untouched)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import sys
import time
import traceback
from pathlib import Path

from flows.env import configure_environment

STAGES = (
    "prepare",
    "validate",
    "tokenize",
    "train",
    "train_static",
    "train_siit",
    "report",
    "register",
)
STAGE_HELP = {
    "train": "both models (static and SIIT): the `train` stage; at once with train.concurrent",
    "train_static": "the static model only (initial map frozen)",
    "train_siit": "the SIIT model only (map refined between rounds)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siit", description=__doc__)
    parser.add_argument(
        "--params", default="params.yaml", help="parameter file (default: params.yaml)"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on failure print the traceback and Prefect's failure logs too "
        f"(they always go to {LOG_FILE} or $SIIT_LOG_FILE)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        sub.add_parser(
            stage, help=STAGE_HELP.get(stage, f"run the '{stage}' stage as a Prefect flow")
        )
    base = sub.add_parser(
        "base_model", help="fetch the pretrained backbone once (user cache) and write its manifest"
    )
    base.add_argument("--manifest", default="artifacts/base_model.json")
    sub.add_parser("show", help="print reports/metrics.json as a table")
    from flows.lifecycle import add_subcommands  # deploy, compare

    add_subcommands(sub)
    sub.add_parser("repro", help="`dvc repro ...` with one local Prefect server for all stages")
    sub.add_parser(
        "exp",
        help="`dvc exp ...` (e.g. `siit exp run -S train.lr=0.001`) with one local Prefect server",
    )
    return parser


LOG_FILE = "logs/siit.log"
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
    """Run one command; a failure is one line on stderr (`siit <command>: error: ...`) and exit 1.

    The traceback goes to the log file (`--debug` prints it on stderr as well); Prefect's own
    reports of the failure stay out of the console unless `--debug`.
    """
    own, passthrough = _split_passthrough(sys.argv[1:] if argv is None else list(argv))
    args = _parser().parse_args(own)
    configure_environment()
    from components.progress import quiet_third_party_bars

    quiet_third_party_bars()  # library progress bars only on a terminal
    try:
        return _dispatch(args, passthrough)
    except KeyboardInterrupt:
        print(f"siit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure ends here: one message, traceback in the log
        return _fail(args.command, exc, args.debug)


def _dispatch(args: argparse.Namespace, passthrough: list[str]) -> int:
    if args.command == "show":
        return _show()
    if args.command in ("deploy", "compare"):
        from flows.lifecycle import run_subcommand

        return run_subcommand(args)
    if args.command in PASSTHROUGH:
        from flows.server import run_with_server

        if args.command == "repro":  # (`exp run -S` changes the file first: its stages check)
            from components.config import load_params

            load_params(args.params)  # before the server starts and dvc runs anything

        dvc = str(Path(sys.executable).parent / "dvc")
        return run_with_server([dvc, args.command, *passthrough], Path(os.environ["PREFECT_HOME"]))
    if args.command == "base_model":
        from components.model.base_model import write_manifest

        write_manifest(args.params, args.manifest)
        return 0
    from components.config import load_params

    load_params(args.params)  # bad parameters stop here, before Prefect starts anything
    if args.command == "train" and not os.environ.get("PREFECT_API_URL"):
        # one local server for the stage and both models' processes (each would otherwise
        # start a temporary one): the stage runs again in a process of its own under it
        from flows.server import run_with_server

        own = ["--params", args.params, *(["--debug"] if args.debug else []), "train"]
        return run_with_server(
            [sys.executable, "-m", "flows.cli", *own], Path(os.environ["PREFECT_HOME"])
        )
    _log_to_file(args.debug)
    _run_stage(args.command, args.params)
    return 0


_EXPECTED = [  # errors about the user's input: the message is the whole story
    ("components.config", "ConfigError"),
    ("components.data.sources", "DataError"),
    ("components.tokenizers", "TokenMapValidationError"),
]


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The expected error classes among the modules loaded (whatever raised was loaded)."""
    found = [getattr(sys.modules.get(module), name, None) for module, name in _EXPECTED]
    return (FileNotFoundError, *(cls for cls in found if isinstance(cls, type)))


def _log_path() -> Path:
    return Path(os.environ.get("SIIT_LOG_FILE") or LOG_FILE).absolute()


def _fail(command: str, exc: BaseException, debug: bool) -> int:
    """Write the traceback to the log file, print one line on stderr, return the exit code."""
    log = _log_path()
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} siit {command} failed\n{details}\n")
        where = f"traceback in {log}"
    except OSError:
        where = "no log file could be written"
    if debug:
        print(details, file=sys.stderr, end="")
    if isinstance(exc, _expected_errors()):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc} ({where}; --debug prints it here)"
    print(f"siit {command}: error: {message}", file=sys.stderr)
    return 1


class _QuietFailures(logging.Filter):
    """Keeps Prefect's failure reports (tracebacks, 'Finished in state Failed') off the console:
    `main` prints the cause once, and the log file has everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.levelno >= logging.ERROR:
            return False
        message = record.getMessage()
        return not (
            message.startswith(("Finished in state Failed", "Finished in state Crashed"))
            or message.startswith("Task run failed with exception")
        )


def _log_to_file(debug: bool) -> None:
    """Every log record (with tracebacks) to the log file; the console filter unless `debug`."""
    from prefect.logging import configuration

    if not configuration.PROCESS_LOGGING_CONFIG:  # Prefect's setup first: it would drop ours
        configuration.setup_logging()
    root = logging.getLogger()
    path = _log_path()
    if not any(getattr(h, "_siit", None) == str(path) for h in root.handlers):
        for handler in [h for h in root.handlers if getattr(h, "_siit", None)]:
            root.removeHandler(handler)
            handler.close()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=5_000_000, backupCount=2, encoding="utf-8", delay=True
            )
        except OSError:
            handler = None
        if handler is not None:
            handler._siit = str(path)  # type: ignore[attr-defined]
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s")
            )
            root.addHandler(handler)
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [root, *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                for old in [f for f in handler.filters if isinstance(f, _QuietFailures)]:
                    handler.removeFilter(old)
                if not debug:
                    handler.addFilter(_QuietFailures())


def _run_stage(stage: str, params_file: str) -> None:
    if stage in ("prepare", "validate"):
        from flows.data import prepare_flow, validate_flow

        (prepare_flow if stage == "prepare" else validate_flow)(params_file=params_file)
    elif stage == "tokenize":
        from flows.tokenize import tokenize_flow

        tokenize_flow(params_file=params_file)
    elif stage == "train":
        from flows.train_models import train_models_flow

        train_models_flow(params_file=params_file)
    elif stage.startswith("train_"):
        from flows.subflows import run_as_subflow
        from flows.train import train_flow

        # a subflow of the `train` stage's flow run when that stage started this process
        run_as_subflow(train_flow, mode=stage.removeprefix("train_"), params_file=params_file)
    elif stage == "register":
        from flows.register import register_flow

        register_flow(params_file=params_file)
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


EXIT_GRACE_S = 30.0


def entry() -> None:
    """The `siit` console script: `main`, then an exit that cannot hang on Prefect."""
    code = main()
    exit_within(code, EXIT_GRACE_S)


def exit_within(code: int, grace_s: float) -> None:
    """Exit with `code`, at the latest `grace_s` seconds from now.

    At interpreter exit Prefect delivers the logs and events it still holds to its API, each
    with retries; when the server is gone (stopped before this process, crashed) that takes
    minutes and the process looks hung. The results are on disk and the logs in the log
    file by then, so after the grace period the process leaves without them.
    """
    import threading

    def leave() -> None:  # no locks taken: the waiting threads may hold logging's
        message = (
            f"siit: exit delayed over {grace_s:.0f} s delivering logs to the Prefect API "
            f"({os.environ.get('PREFECT_API_URL') or 'temporary server'}); leaving without "
            "them (the log file has them)\n"
        )
        with contextlib.suppress(OSError):
            os.write(2, message.encode())
        os._exit(code)

    timer = threading.Timer(grace_s, leave)
    timer.daemon = True  # runs on while the interpreter waits for Prefect's threads
    timer.start()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    sys.exit(code)


if __name__ == "__main__":
    entry()
