"""Data-parallel training: the same Trainer under torchrun, checked against one process.

Run as a script by `torchrun`, this file is the worker: it trains a tiny random Llama and
writes its final weights and epoch losses for the test to compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from components.config import TrainConfig
from components.model import distributed
from components.model.prompts import IGNORE, Example
from components.model.training import Trainer, collate, length_bucketed_batches, shard
from tests.model.test_training import tiny_llama

ROOT = Path(__file__).resolve().parents[2]
VOCAB, EPOCHS, BATCH = 40, 6, 4


def examples() -> list[Example]:
    """13 counting sequences (next = previous + 1) of varied length: batches of 4, 4, 4 and 1,
    so one rank gets an empty shard."""
    rng = np.random.default_rng(0)
    out = []
    for start, n in zip(rng.integers(0, VOCAB, size=13), rng.integers(5, 12, size=13), strict=True):
        ids = ((start + np.arange(n)) % VOCAB).tolist()
        out.append(Example(ids, [IGNORE] * 2 + ids[2:]))
    return out


def train() -> tuple[dict[str, torch.Tensor], list[float]]:
    """The same code path with or without torchrun."""
    torch.set_num_threads(1)
    model = tiny_llama(dropout=0.0, vocab=VOCAB)
    data = examples()
    # fp32: DDP and one process agree up to fp32 rounding (bf16 rounds the half batches apart)
    trainer = Trainer(
        model,
        TrainConfig(lr=1e-2, warmup_ratio=0.0),
        -(-len(data) // BATCH),
        EPOCHS,
        precision="fp32",
    )
    losses = [
        trainer.train_epoch(length_bucketed_batches(data, BATCH, 0, np.random.default_rng(e)))[
            "loss"
        ]
        for e in range(EPOCHS)
    ]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def test_shards_weight_the_global_mean_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Averaging (rank mean loss x share) over ranks, as DDP does with gradients, is the global mean."""
    batch = collate(examples()[:5], pad_id=0)
    logits = torch.randn(*batch.input_ids.shape, VOCAB)

    world = 3
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    total, rows_seen = 0.0, []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        local, share = shard(batch)
        rows, _ = distributed.shard_rows(len(batch.input_ids))
        rows_seen += rows
        target = local.labels[:, 1:]
        row_logits = logits[rows, : local.input_ids.shape[1] - 1]
        loss = F.cross_entropy(row_logits[target != IGNORE], target[target != IGNORE])
        total += float(loss) * share / world
        assert local.input_ids.shape[1] == int(
            local.attention_mask.sum(1).max()
        )  # no padding columns
    assert sorted(rows_seen) == list(range(5))
    target = batch.labels[:, 1:]
    expected = F.cross_entropy(logits[:, :-1][target != IGNORE], target[target != IGNORE])
    assert total == pytest.approx(float(expected), rel=1e-5)


def test_a_rank_without_rows_gets_weight_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    local, share = shard(collate(examples()[:1], pad_id=0))
    assert len(local.input_ids) == 1 and share == 0.0 and local.n_label_tokens == 0


@pytest.mark.slow
def test_two_cpu_processes_train_like_one(tmp_path: Path) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(tmp_path),
    ]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=300)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    losses = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # identical weights
    assert losses[0] == losses[1]  # the logged loss is all-reduced
    assert losses[0][-1] < 0.8 * losses[0][0]  # and it falls

    single, single_losses = train()  # one process, same batches: the same run up to rounding
    for key, value in single.items():
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=5e-5)
    np.testing.assert_allclose(losses[0], single_losses, rtol=1e-5)


if __name__ == "__main__":
    state, epoch_losses = train()
    out, rank = Path(sys.argv[1]), distributed.rank()
    save_file({k: v.contiguous() for k, v in state.items()}, out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps(epoch_losses))
    torch.distributed.destroy_process_group()
