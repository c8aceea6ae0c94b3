"""Code-usage plot: one panel per level, items per code, sorted, so collapse is visible at a glance."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from components.io import atomic_write_bytes
from components.tokenizers.stats import token_map_stats
from components.tokenizers.token_map import LEVEL_LETTERS, TokenMap


def plot_code_usage(token_map: TokenMap, path: Path) -> None:
    """PNG with items per code (descending) for each level, titled with entropy and usage."""
    stats = token_map_stats(token_map.codes, token_map.codebook_sizes)
    levels = token_map.levels
    # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller.
    figure = Figure(figsize=(4.0 * levels, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, levels, squeeze=False)[0]
    for level, (ax, size) in enumerate(zip(axes, token_map.codebook_sizes, strict=True)):
        counts = np.sort(np.bincount(token_map.codes[:, level], minlength=size))[::-1]
        ax.bar(np.arange(size), counts, width=1.0, color="tab:blue")
        ax.axhline(token_map.n_items / size, color="tab:red", lw=1, ls="--", label="uniform")
        ax.set_title(
            f"level {LEVEL_LETTERS[level]}: H={stats['entropy_bits'][level]:.2f} bits, "
            f"PPL={stats['perplexity'][level]:.0f}, used {stats['used_codes'][level]}/{size}",
            fontsize=9,
        )
        ax.set_xlabel("code (sorted by usage)")
        ax.set_ylabel("items")
    axes[0].legend(fontsize=8)
    method = token_map.metadata.get("method", "?")
    figure.suptitle(f"code usage: {method}, {token_map.n_items} items", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(Path(path), buffer.getvalue())
