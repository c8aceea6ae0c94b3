"""bench/map_coherence.py: the text coherence and prefix sharing of finished runs' maps."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml


class WordsEncoder:
    """A fake sentence encoder: hashed bags of words, so texts sharing words are alike."""

    def encode(self, sentences: list[str], **kwargs: object) -> np.ndarray:
        out = np.zeros((len(sentences), 64), dtype=np.float32)
        for row, text in enumerate(sentences):
            for word in text.lower().replace(",", " ").split():
                out[row, zlib.crc32(word.encode()) % 64] += 1.0
        return out


@pytest.fixture
def runs(tmp_path: Path, monkeypatch, bench_script):
    from components.config import DataConfig
    from components.data.dataset import build_dataset
    from components.data.synthetic import _cluster_vocabulary, load_synthetic, write_synthetic
    from components.tokenizers import TokenMap
    from components.tokenizers import embeddings as embeddings_module

    monkeypatch.setattr(embeddings_module, "_load_encoder", lambda name: WordsEncoder())
    module = bench_script("map_coherence")
    monkeypatch.setattr(module, "RUNS", tmp_path)
    cfg = DataConfig(
        source="synthetic",
        synthetic={"n_users": 40, "n_items": 30, "n_clusters": 3, "mean_length": 6},
    )
    (tmp_path / "raw").mkdir()
    write_synthetic(cfg.synthetic, tmp_path / "raw")
    dataset = build_dataset(load_synthetic(tmp_path / "raw"), cfg)
    vocab = _cluster_vocabulary(3)
    cluster = [
        next(c for c, words in enumerate(vocab) if title.split()[0].lower() in words)
        for title in dataset.item_titles()
    ]
    n = dataset.n_items
    by_text = np.stack([cluster, np.arange(n), np.zeros(n, dtype=int)], axis=1)
    by_chance = by_text[np.random.default_rng(0).permutation(n)]
    for seed in (1, 2):
        for model, maps in (("static", [by_chance]), ("siit", [by_chance, by_text])):
            work = tmp_path / f"t-s{seed}-{model}"
            dataset.write(work / "data" / "processed")
            params = {"tokenize": {"encoder": "fake-words"}}
            (work / "params.yaml").write_text(yaml.safe_dump(params))
            ids = dataset.item_ids()
            if model == "static":
                folder = work / "artifacts" / "tokenize"
                names = ["token_map.parquet"]
            else:
                folder = work / "artifacts" / "token_maps"
                names = [f"round_{r:03d}.parquet" for r in range(len(maps))]
            folder.mkdir(parents=True)
            for name, codes in zip(names, maps, strict=True):
                TokenMap(item_ids=tuple(ids), codes=codes, codebook_sizes=(n, n, n)).save(
                    folder / name
                )
    return module


def test_each_runs_maps_and_the_final_maps_means(runs, monkeypatch, capsys) -> None:
    argv = ["map_coherence.py", "t-static", "t-siit", "--seeds", "1", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    runs.main()
    lines = capsys.readouterr().out.splitlines()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines}
    random_map = rows[("t-s1-static", "token_map.parquet")].split("|")
    text_map = rows[("t-s1-siit", "round_001.parquet")].split("|")
    assert abs(float(random_map[3])) < 0.1 < float(text_map[3])  # level 0: the text's cluster
    assert text_map[5].strip() == "3"  # three level-0 prefixes
    assert text_map[6].strip() == "30"  # levels 0-1 unique: no pair, no figure
    assert text_map[4].strip() == "–"
    finals = {line.split("|")[1].strip(): line for line in lines if line.startswith("| t-")}
    assert float(finals["t-siit"].split("|")[2]) == pytest.approx(float(text_map[3]), abs=1e-3)


def test_a_missing_run_or_map_says_which(runs, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sys, "argv", ["map_coherence.py", "t-siit", "--seeds", "3"])
    with pytest.raises(SystemExit, match="t-s3-siit: no bench run"):
        runs.main()
    with pytest.raises(SystemExit, match="no token map"):
        runs.run_maps(tmp_path / "t-s1-nothing")
