"""A content fingerprint of what a training run depends on (for safe resume)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def run_fingerprint(mode: str, params: dict, files: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(mode.encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for path in files:
        for file in sorted(
            p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()
        ):
            h.update(str(file.relative_to(path.parent)).encode())
            h.update(hashlib.sha256(file.read_bytes()).digest())
    return h.hexdigest()
