"""Issue 13, point 4: the same seed and data give byte-identical token maps for every
tokenizer (rqvae, rqkmeans, cid, random), from two separate processes whose Python hash
seeds differ (set and dict order must not leak into the maps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from components.tokenizers import METHODS, TokenMap

REPO = Path(__file__).parents[2]


def test_token_maps_are_byte_identical_across_processes(tmp_path: Path) -> None:
    runs = []
    for i, hash_seed in enumerate(["1", "2"]):
        out = tmp_path / f"run{i}"
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        command = [sys.executable, "-m", "tests.reliability.determinism_worker", str(out)]
        proc = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE)
        runs.append((proc, out))
    for proc, _ in runs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr.decode(errors="replace")[-3000:]
    (_, first), (_, second) = runs
    assert (first / "embeddings.npy").read_bytes() == (second / "embeddings.npy").read_bytes()
    for method in METHODS:
        a, b = first / f"{method}.parquet", second / f"{method}.parquet"
        assert a.read_bytes() == b.read_bytes(), method
        token_map = TokenMap.load(a)
        assert token_map.metadata["method"] == method
        assert len({tuple(c) for c in token_map.codes}) == token_map.n_items  # a bijection
