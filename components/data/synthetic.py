"""A synthetic catalogue with known structure, for tests and quick experiments.

Items belong to latent clusters and their text uses cluster-specific words (plus a few
shared ones), so a text-based tokenizer can recover the clusters. Users stay in a cluster
and occasionally drift to another (probability `drift` per step). Within a cluster the
next item is usually the successor of the previous one on a fixed ring (a sequential
pattern a sequence model can learn), otherwise a popularity-skewed draw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from components.config import ColumnNames, FilesSource, SyntheticSource
from components.data.sources import RawData, load_files

ITEMS_FILE = "items.csv"
INTERACTIONS_FILE = "interactions.csv"
MIN_LENGTH = 5
FOLLOW_RING = 0.7  # probability that the next item is the ring successor of the previous one
CLUSTER_WORDS = 6  # vocabulary size per cluster
WORDS_PER_ITEM = 3  # cluster words in an item's text (plus one shared word)
SHARED_WORDS = ["classic", "new", "deluxe", "essential", "limited", "original"]
_SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "vo", "sel", "dra", "qui", "no", "fa", "zen"]


def _word(i: int) -> str:
    """The i-th pseudo-word: three syllables (more once those run out), scrambled for variety.

    No syllable is a prefix of another, so distinct numbers give distinct words.
    """
    n, width = len(_SYLLABLES), 3
    while i >= n**width:
        i -= n**width
        width += 1
    code = (i * 1033 + 577) % n**width  # a bijection: 1033 is coprime with 12
    return "".join(_SYLLABLES[code // n**k % n] for k in range(width))


def _cluster_vocabulary(n_clusters: int) -> list[list[str]]:
    """CLUSTER_WORDS distinct words per cluster."""
    return [[_word(c * CLUSTER_WORDS + k) for k in range(CLUSTER_WORDS)] for c in range(n_clusters)]


def generate_synthetic(cfg: SyntheticSource) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(items[item_id, title, text], interactions[user_id, item_id, timestamp]), deterministic in cfg.seed.

    Interactions are in global time order; every user has at least MIN_LENGTH distinct items
    (all of them when the catalogue is smaller).
    """
    rng = np.random.default_rng(cfg.seed)
    n_clusters = min(cfg.n_clusters, cfg.n_items)
    cluster_of = rng.permutation(np.arange(cfg.n_items) % n_clusters)
    members = [np.flatnonzero(cluster_of == c) for c in range(n_clusters)]  # also the ring order
    ring_pos = np.empty(cfg.n_items, dtype=np.int64)
    for ring in members:
        ring_pos[ring] = np.arange(len(ring))
    popularity = [rng.permutation(1.0 / np.arange(1, len(ring) + 1)) for ring in members]
    popularity = [p / p.sum() for p in popularity]

    vocab = _cluster_vocabulary(n_clusters)
    item_ids = [f"i{j:05d}" for j in range(cfg.n_items)]
    titles, texts = [], []
    for j in range(cfg.n_items):
        words = [
            str(w) for w in rng.choice(vocab[cluster_of[j]], size=WORDS_PER_ITEM, replace=False)
        ]
        title = f"{words[0].capitalize()} {words[1].capitalize()} {j}"
        titles.append(title)
        texts.append(f"{title} | tags: {', '.join([*words, str(rng.choice(SHARED_WORDS))])}")
    items = pl.DataFrame({"item_id": item_ids, "title": titles, "text": texts})

    users, seq_items, stamps = [], [], []
    max_length = cfg.n_items  # distinct items only
    for u in range(cfg.n_users):
        length = min(
            MIN_LENGTH + int(rng.poisson(max(cfg.mean_length - MIN_LENGTH, 0))), max_length
        )
        cluster = int(rng.integers(n_clusters))
        seen: set[int] = set()
        prev = -1
        t = 1_600_000_000 + int(rng.integers(0, 365 * 86400))
        for _ in range(length):
            if rng.random() < cfg.drift or all(int(j) in seen for j in members[cluster]):
                others = [c for c in range(n_clusters) if c != cluster] or [cluster]
                cluster = int(rng.choice(others))
            ring = members[cluster]
            if prev >= 0 and cluster_of[prev] == cluster and rng.random() < FOLLOW_RING:
                pos = (ring_pos[prev] + 1) % len(ring)
            else:
                pos = int(rng.choice(len(ring), p=popularity[cluster]))
            # Walk the ring to the first unseen item (sequences have no repeats).
            for step in range(len(ring)):
                candidate = int(ring[(pos + step) % len(ring)])
                if candidate not in seen:
                    break
            else:
                candidate = next(j for j in range(cfg.n_items) if j not in seen)
            seen.add(candidate)
            prev = candidate
            t += int(rng.integers(60, 3 * 86400))
            users.append(f"u{u:05d}")
            seq_items.append(item_ids[candidate])
            stamps.append(t)
    interactions = pl.DataFrame(
        {"user_id": users, "item_id": seq_items, "timestamp": stamps},
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64},
    ).sort("timestamp", maintain_order=True)
    return items, interactions


def write_synthetic(cfg: SyntheticSource, dest: Path) -> list[str]:
    """Generate the data and write items.csv and interactions.csv into `dest`."""
    items, interactions = generate_synthetic(cfg)
    items.write_csv(dest / ITEMS_FILE)
    interactions.write_csv(dest / INTERACTIONS_FILE)
    return [ITEMS_FILE, INTERACTIONS_FILE]


def load_synthetic(raw_dir: Path) -> RawData:
    """Read back what `write_synthetic` wrote."""
    src = FilesSource(
        interactions=str(raw_dir / INTERACTIONS_FILE),
        items=str(raw_dir / ITEMS_FILE),
        format="csv",
        columns=ColumnNames(rating=None),
        text_columns=["text"],
    )
    return load_files(src, raw_dir)
