import numpy as np
import polars as pl

from components.config import DataConfig, SyntheticSource
from components.data import RawData, build_dataset, generate_synthetic
from components.data.synthetic import CLUSTER_WORDS, SHARED_WORDS


def _tags(text: str) -> set[str]:
    """The cluster words of an item's text (shared words removed)."""
    return set(text.split("| tags: ")[1].split(", ")) - set(SHARED_WORDS)


def test_deterministic_under_seed() -> None:
    cfg = SyntheticSource(n_users=40, n_items=30, seed=7)
    items_a, inter_a = generate_synthetic(cfg)
    items_b, inter_b = generate_synthetic(cfg)
    assert items_a.equals(items_b) and inter_a.equals(inter_b)
    _, inter_c = generate_synthetic(cfg.model_copy(update={"seed": 8}))
    assert not inter_a.equals(inter_c)


def test_shape_lengths_and_unique_titles() -> None:
    cfg = SyntheticSource(n_users=200, n_items=60, n_clusters=4, mean_length=12, seed=1)
    items, inter = generate_synthetic(cfg)
    assert items.columns == ["item_id", "title", "text"] and items.height == 60
    assert items.get_column("title").n_unique() == 60
    lengths = inter.group_by("user_id").len().get_column("len")
    assert lengths.len() == 200 and lengths.min() >= 5
    assert abs(lengths.mean() - 12) < 1.0
    assert inter.get_column("timestamp").is_sorted()
    assert (
        inter.group_by("user_id")
        .agg(pl.col("item_id").n_unique() == pl.len())
        .get_column("item_id")
        .all()
    )


def test_text_reflects_clusters_and_drift_moves_users() -> None:
    def max_words_per_user(drift: float) -> list[int]:
        cfg = SyntheticSource(
            n_users=60, n_items=120, n_clusters=6, mean_length=8, drift=drift, seed=2
        )
        items, inter = generate_synthetic(cfg)
        tags = dict(
            zip(items.get_column("item_id"), map(_tags, items.get_column("text")), strict=True)
        )
        per_user = inter.group_by("user_id", maintain_order=True).agg("item_id")
        return [len(set().union(*(tags[i] for i in seq))) for seq in per_user.get_column("item_id")]

    # Without drift a user stays inside one cluster, whose vocabulary has CLUSTER_WORDS words.
    assert max(max_words_per_user(0.0)) <= CLUSTER_WORDS
    assert np.mean([n > CLUSTER_WORDS for n in max_words_per_user(0.5)]) > 0.8


def test_a_sequence_model_beats_popularity() -> None:
    """First-order transitions learned on the training part beat popularity on the test targets."""
    items, inter = generate_synthetic(SyntheticSource(seed=0))
    raw = RawData(
        items,
        inter.with_columns(rating=pl.lit(None, dtype=pl.Float64)),
        "items.csv",
        "interactions.csv",
    )
    ds = build_dataset(raw, DataConfig(source="synthetic"))
    transitions = np.zeros((ds.n_items, ds.n_items))
    for seq in ds.train_sequences():
        np.add.at(transitions, (seq[:-1], seq[1:]), 1.0)
    test = ds.eval_split("test")

    def hit_rate(scores: np.ndarray) -> float:
        hits = 0
        for row, seen in enumerate(test.seen):
            s = scores[row].copy()
            s[seen] = -np.inf
            hits += test.targets[row] in np.argsort(-s, kind="stable")[:10]
        return hits / len(test.targets)

    last = np.array([h[-1] for h in test.histories])
    popular = hit_rate(np.tile(ds.popularity(), (len(last), 1)))
    sequential = hit_rate(transitions[last] + 1e-3 * ds.popularity())
    assert sequential > popular + 0.1, (sequential, popular)
