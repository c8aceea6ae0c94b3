"""DVC stage `base_model` (`siit base_model`): materialise the configured backbone, write a manifest.

- `pretrained` profile: fetch and dequantise the backbone once (user cache, see
  `components.model.pretrained`) and record the sha256 of its weight files, so the training
  stages rerun when the base model changes and the download happens before training.
- `tiny` profile: nothing to fetch; the manifest only names the profile.

Kept light on purpose: torch, transformers and peft are imported only for the pretrained
profile, so the tiny profile's stage takes well under a second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from components.config import load_params
from components.io import atomic_write_json


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(params_file: str | Path, manifest: str | Path) -> dict[str, object]:
    """Materialise the base model of `params_file` and write its manifest (atomically)."""
    cfg = load_params(params_file).model
    out: dict[str, object] = {"profile": cfg.profile}
    if cfg.profile == "pretrained":
        from components.model.pretrained import ensure_base_model

        path = ensure_base_model(cfg.name_or_path)
        # content hashes, no machine-specific path: the same model gives the same manifest anywhere
        weights = sorted(path.glob("*.safetensors"))
        out.update(name_or_path=cfg.name_or_path, weights={p.name: sha256_file(p) for p in weights})
    atomic_write_json(manifest, out)
    return out
