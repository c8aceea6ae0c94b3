"""Content fingerprints of what a training run depends on (for safe resume).

A run's checkpoint is resumed only when its data, parameters and code are the ones it was
written with. The three parts are kept apart so that a refused checkpoint says which of them
changed: a resumed run must give what an uninterrupted run of the current code would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("components", "flows")


def _hash_files(h, paths: Iterable[Path]) -> None:
    for path in paths:
        for file in sorted(
            p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()
        ):
            h.update(str(file.relative_to(path.parent)).encode())
            h.update(hashlib.sha256(file.read_bytes()).digest())


def code_fingerprint(root: Path = PACKAGE_ROOT) -> str:
    """sha256 of the project's Python code (every .py under components/ and flows/)."""
    h = hashlib.sha256()
    for name in CODE_DIRS:
        for file in sorted((root / name).rglob("*.py")):
            h.update(file.relative_to(root).as_posix().encode())
            h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()


def run_fingerprints(mode: str, params: dict, files: list[Path]) -> dict[str, str]:
    """{"data": ..., "params": ..., "code": ...} of a run of `mode`."""
    data = hashlib.sha256()
    _hash_files(data, files)
    settings = hashlib.sha256()
    settings.update(mode.encode())
    settings.update(json.dumps(params, sort_keys=True, default=str).encode())
    return {"data": data.hexdigest(), "params": settings.hexdigest(), "code": code_fingerprint()}


def combine(parts: dict[str, str]) -> str:
    """One fingerprint of the parts (order-independent in the parts' names)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
