"""bench/collab_map.py: the map fitted to text and item rows follows the item rows as their
weight grows, and stays a valid map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import normalized_mutual_info_score

from components.config import DataConfig, ModelConfig, Params, SyntheticSource
from components.data import build_dataset
from components.data.sources import fetch_raw, load_raw
from components.model.head import item_rows
from components.model.recommender import GenerativeRecommender
from components.paths import Paths
from components.tokenizers import TokenMap

CLUSTERS = 4


@pytest.fixture
def static_run(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A bench run folder as `bench/siit_vs_static.py` leaves it (params.yaml, the dataset, the
    static model), whose item rows fall into 4 tight clusters that the item texts do not
    follow; returns it and each item's row cluster."""
    torch.set_num_threads(1)
    params = Params.model_validate(
        {
            "data": {"source": "synthetic", "synthetic": {"n_users": 40, "n_items": 32}},
            "tokenize": {"method": "rqkmeans", "codebook_size": CLUSTERS, "levels": 3},
        }
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    paths = Paths(tmp_path)
    data = DataConfig(source="synthetic", synthetic=SyntheticSource(n_users=40, n_items=32))
    fetch_raw(data, tmp_path / "raw")
    dataset = build_dataset(load_raw(data, tmp_path / "raw"), data)
    dataset.write(paths.processed)
    n = len(dataset.item_ids())
    rec = GenerativeRecommender.create(
        ModelConfig(
            hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, text_vocab_size=200
        ),
        (CLUSTERS,) * 3,
        dataset.item_texts(),
        seed=0,
        n_items=n,
    )
    rows = item_rows(rec.model)
    # the row clusters: every 4th item, i.e. across the synthetic texts' own clusters
    cluster = np.arange(n) % CLUSTERS
    centres = torch.randn(CLUSTERS, 32, generator=torch.Generator().manual_seed(1)) * 5
    with torch.no_grad():
        weight = rec.model.get_input_embeddings().weight
        weight[rows.base : rows.base + rows.count] = centres[cluster] + 0.01 * torch.randn(n, 32)
    rec.save(paths.model_dir("static") / "model")
    return tmp_path, cluster


def test_the_map_follows_the_item_rows_as_their_weight_grows(bench_script, static_run) -> None:
    bench = bench_script("collab_map")
    work, cluster = static_run
    n = len(cluster)
    agreement = {}
    for alpha in (0.0, 10.0):
        out = work / f"map{alpha:g}.parquet"
        stats = bench.collaborative_map(work, alpha, out)
        codes = TokenMap.load(out).codes
        assert len({tuple(c) for c in codes.tolist()}) == n  # collision-free
        assert "collision_rate_before" in stats
        agreement[alpha] = normalized_mutual_info_score(cluster, codes[:, 0])
    assert agreement[10.0] > 0.95 > agreement[0.0]  # the rows decide the first code
    # the features really reach the tokenizer: the item rows read back are the ones saved
    rows = bench.item_row_features(Paths(work).model_dir("static") / "model")
    assert rows.shape == (n, 32)
    first, pairs = bench.code_agreement(work / "map10.parquet", work / "map10.parquet")
    assert first == pytest.approx(1.0) and pairs == pytest.approx(1.0)
    first, _ = bench.code_agreement(work / "map0.parquet", work / "map10.parquet")
    assert first < 0.9
