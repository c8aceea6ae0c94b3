"""The tokenize stage's report: the initial map's text coherence where the tokenizer embedded
the items' text (rqvae, rqkmeans), none where it did not (random ids, cid)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import flows_in
from tests.flows.conftest import copy_prepared
from tests.flows.test_train_siit import HashEncoder


def test_tokenize_reports_the_initial_maps_text_coherence(
    tiny_prepared: Path,
    prefect_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from components.tokenizers import TokenMap, embed_texts, text_coherence
    from components.tokenizers import embeddings as embeddings_module
    from flows.tokenize import tokenize_flow

    # random ids (the prepared project's map): nothing embedded, nothing reported
    assert "text_coherence" not in json.loads((tiny_prepared / "reports/tokenize.json").read_text())

    monkeypatch.setattr(embeddings_module, "_load_encoder", lambda name: HashEncoder())
    root = tmp_path / "project"
    override = {"tokenize": {"method": "rqkmeans"}}
    env = copy_prepared(tiny_prepared, root, {**os.environ, **prefect_env}, override)
    with flows_in(root, env):
        tokenize_flow(root=str(root))
    report = json.loads((root / "reports/tokenize.json").read_text())
    texts = pl.read_parquet(root / "data/processed/items.parquet").get_column("text").to_list()
    vectors = embed_texts(texts, "all-MiniLM-L6-v2", root / "data/embeddings")
    codes = TokenMap.load(root / "artifacts/tokenize/token_map.parquet").codes
    expected = text_coherence(codes, vectors)
    assert report["method"] == "rqkmeans" and len(report["text_coherence"]) == 2
    assert report["text_coherence"] == pytest.approx(expected)
    # k-means on the text puts items of alike text under one level-0 code
    assert report["text_coherence"][0] > 0.05
    assert (
        text_coherence(codes[np.random.default_rng(0).permutation(len(codes))], vectors)[0]
        < (report["text_coherence"][0])
    )
