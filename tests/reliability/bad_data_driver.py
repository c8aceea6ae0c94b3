"""Runs `siit prepare` / `siit validate` (flows.cli.main, the console script's entry point) on
many small projects in ONE process, so that the bad-data corpus costs one interpreter start.

    python -m tests.reliability.bad_data_driver SPEC.json OUT.json

SPEC: {"root": dir, "good": <data params>, "cases": {name: {"data": <data params>,
"argv": [extra siit options], "data_is_a_file": bool}}}. Every case starts from a copy of a project where the good
data went through prepare and validate; OUT records per case the exit codes, what each
command wrote to stderr (file descriptor 2, so Prefect's console too) and the sha256 of
every file under data/ and reports/ before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from flows.cli import main


def _run(argv: list[str]) -> tuple[int, str]:
    """main(argv) with file descriptor 2 captured."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            code = main(argv)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return code, capture.read().decode("utf-8", errors="replace")


def _hashes(project: Path) -> dict[str, str]:
    out = {}
    for top in ("data", "reports"):
        for path in sorted((project / top).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(project))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _project(path: Path, data: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.yaml").write_text(yaml.safe_dump({"data": data}))


def drive(spec: dict) -> dict:
    root = Path(spec["root"])
    base = root / "_base"
    _project(base, spec["good"])
    os.chdir(base)
    for stage in ("prepare", "validate"):
        code, err = _run([stage])
        if code:
            raise SystemExit(f"the good data failed at {stage}:\n{err}")
    results = {}
    for name, case in spec["cases"].items():
        project = root / name
        shutil.copytree(base, project)
        _project(project, case["data"])
        if case.get("data_is_a_file"):  # provokes an error that is not about the input
            shutil.rmtree(project / "data")
            (project / "data").write_text("a file where the data folder should be\n")
        os.chdir(project)
        before = _hashes(project)
        result: dict = {"before": before, "commands": []}
        for stage in ("prepare", "validate"):
            code, err = _run([*case.get("argv", []), stage])
            result["commands"].append({"stage": stage, "code": code, "stderr": err})
            if code:
                break
        result["after"] = _hashes(project)
        log = project / "logs" / "siit.log"
        result["log"] = log.read_text(errors="replace") if log.exists() else ""
        results[name] = result
    return results


if __name__ == "__main__":
    spec_file, out_file = sys.argv[1:3]
    Path(out_file).write_text(json.dumps(drive(json.loads(Path(spec_file).read_text()))))
