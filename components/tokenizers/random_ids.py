"""Random identifiers: the no-semantics baseline every semantic tokenizer must beat."""

from __future__ import annotations

import numpy as np

# numpy's sampler without replacement needs the code space to fit an int64.
INT64_SPACE = 2**62


def random_codes(
    n_items: int, levels: int, codebook_size: int, seed: int | np.random.Generator
) -> np.ndarray:
    """Codes [n_items, levels], unique whenever the code space is large enough. `seed`: an
    int, or a generator to draw from (it advances, for a caller that draws more after).

    Sampling identifiers (not codes per level) without replacement keeps them unique and
    uniformly spread; a catalogue larger than the code space necessarily collides, which
    collision resolution then turns into an extra level.
    """
    rng = np.random.default_rng(seed)
    space = codebook_size**levels
    if space <= INT64_SPACE:
        flat = rng.choice(space, size=n_items, replace=n_items > space)
        return np.stack(np.unravel_index(flat, (codebook_size,) * levels), axis=1).astype(np.int64)
    # Huge spaces: independent codes per level, redrawing the (vanishingly rare) duplicates.
    codes = rng.integers(0, codebook_size, size=(n_items, levels), dtype=np.int64)
    while True:
        _, first = np.unique(codes, axis=0, return_index=True)
        duplicate = np.ones(n_items, dtype=bool)
        duplicate[first] = False
        if not duplicate.any():
            return codes
        codes[duplicate] = rng.integers(0, codebook_size, size=(int(duplicate.sum()), levels))
