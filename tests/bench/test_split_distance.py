"""bench/split_distance.py: the four targets per user and their scores."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.test_evaluation import _dataset

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("split_distance", BENCH / "split_distance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_step_away_from_training(bench) -> None:
    # u0: training 0 1 2 3 4, validation 5, test 6; u1 too short for a train-last target
    # with a history (training 7 alone); u2 repeats its train-last item 8 later
    dataset = _dataset([[0, 1, 2, 3, 4, 5, 6], [7, 8, 9], [8, 1, 8, 2, 3]], n_items=10)
    splits = bench.distance_splits(dataset)
    assert all(s.user_ids == ["u0", "u2"] for s in splits.values())
    expected = {  # (u0 history, target, seen), (u2 ...)
        "train-last": ([1, 2, 3], 4, [0, 1, 2, 3]),
        "valid": ([2, 3, 4], 5, [0, 1, 2, 3, 4]),
        "test": ([3, 4, 5], 6, [0, 1, 2, 3, 4, 5]),
        "test-gap": ([2, 3, 4], 6, [0, 1, 2, 3, 4, 5]),
    }
    for name, (history, target, seen) in expected.items():
        split = splits[name]
        assert split.histories[0].tolist() == history, name
        assert split.targets[0] == target, name
        assert split.seen[0].tolist() == seen, name
    # u2 (8 1 8 | 2 | 3): its train-last target 8 was consumed before and stays rankable
    assert splits["train-last"].histories[1].tolist() == [8, 1]
    assert splits["train-last"].targets[1] == 8 and splits["train-last"].seen[1].tolist() == [1]
    assert splits["test-gap"].seen[1].tolist() == [1, 2, 8]  # the left-out item stays excluded


def test_valid_and_test_are_the_pipelines_splits(bench) -> None:
    rng = np.random.default_rng(0)
    dataset = _dataset(
        [rng.permutation(10)[: rng.integers(4, 10)].tolist() for _ in range(20)], n_items=10
    )
    splits = bench.distance_splits(dataset)
    for name in ("valid", "test"):
        ours, theirs = splits[name], dataset.eval_split(name)
        assert ours.user_ids == theirs.user_ids
        assert np.array_equal(ours.targets, theirs.targets)
        for a, b in zip(ours.histories + ours.seen, theirs.histories + theirs.seen, strict=True):
            assert np.array_equal(a, b)


def test_user_averages_are_the_four_metrics_mean(bench) -> None:
    ranked = np.array([[3, 1, 2], [0, 5, 6], [7, 8, 9]])
    targets = np.array([3, 6, 4])  # rank 1, rank 3, a miss
    averages = bench.user_averages(np.pad(ranked, ((0, 0), (0, 7)), constant_values=-1), targets)
    third = 1 / np.log2(4)
    assert averages == pytest.approx([1.0, (1 + 1 + third + third) / 4, 0.0])


def test_a_kept_model_is_scored_as_the_pipeline_scores_it(bench, tmp_path) -> None:
    """A run folder as bench/siit_vs_static.py leaves it: the real load and decoding path, with
    valid and test equal to `evaluate_model`'s per-user metrics."""
    import shutil

    from components.config import ModelConfig, load_params
    from components.metrics import METRIC_NAMES
    from components.model.recommender import GenerativeRecommender
    from components.model.session import evaluate_model
    from components.tokenizers.token_map import TokenMap

    root = Path(__file__).resolve().parents[2]
    rng = np.random.default_rng(3)
    n_items = 16
    dataset = _dataset(
        [rng.choice(n_items, rng.integers(5, 12), replace=False).tolist() for _ in range(12)],
        n_items=n_items,
        max_history=4,
    )
    work = tmp_path / "cf-s1-static"
    work.mkdir()
    shutil.copy(root / "params.yaml", work / "params.yaml")
    dataset.write(work / "data" / "processed")
    flat = rng.choice(64, n_items, replace=False)
    codes = np.stack([flat // 16, (flat // 4) % 4, flat % 4], axis=1)
    cfg = ModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, text_vocab_size=200
    )
    rec = GenerativeRecommender.create(cfg, (4, 4, 4), dataset.item_texts(), seed=0)
    kept = work / "artifacts" / "models" / "static"
    rec.save(kept / "model")
    TokenMap(tuple(dataset.item_ids()), codes, (4, 4, 4)).save(kept / "token_map.parquet")

    scores = bench.score_run(work)
    assert set(scores) == set(bench.TARGETS)
    assert all(s.shape == (12,) for s in scores.values())
    assert 0 < scores["test"].mean() < 1  # some hits, some misses: not a vacuous comparison
    params = load_params(work / "params.yaml")
    loaded = GenerativeRecommender.load(kept / "model")
    for split in ("valid", "test"):
        metrics, _ = evaluate_model(loaded, dataset, codes, params.evaluate, split)
        assert scores[split].mean() == pytest.approx(np.mean([metrics[m] for m in METRIC_NAMES]))


def test_the_tables_pair_each_model_with_the_reference(bench, capsys) -> None:
    static = {t: np.array([0.4, 0.2]) for t in bench.TARGETS}  # 0.3 on every target
    siit = {t: np.array([0.6, 0.3]) for t in bench.TARGETS}  # 0.45, valid 0.3
    siit["valid"] = np.array([0.3, 0.3])
    bench.print_tables({(1, "static"): static, (1, "siit"): siit}, [1], ["static", "siit"])
    out = capsys.readouterr().out
    assert "| static | 0.3000 [0.3000] | 0.3000 [0.3000] | 0.3000 [0.3000]" in out
    assert "| siit | 0.4500 [0.4500] | 0.3000 [0.3000] | 0.4500 [0.4500]" in out
    assert "| siit | 1.500 | 1.000 | 1.500 | 1.500 |" in out  # against its own validation
    paired = out.split("against static, paired per seed")[1]
    assert paired.count("+50.0% [+50.0%]") == 3 and "0.0% [" in paired  # valid level
