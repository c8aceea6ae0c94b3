from __future__ import annotations

import numpy as np

from components.tokenizers import TokenMap, plot_code_usage


def test_code_usage_plot_is_a_png(tmp_path) -> None:
    token_map = TokenMap(
        item_ids=("a", "b", "c"),
        codes=np.array([[0, 1], [0, 2], [1, 0]]),
        codebook_sizes=(2, 4),
        metadata={"method": "random"},
    )
    path = tmp_path / "plots" / "code_usage.png"
    plot_code_usage(token_map, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
