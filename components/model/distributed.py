"""Data-parallel training: the process group torchrun describes, batch sharding, reductions.

`torchrun --nproc_per_node N` (or `accelerate launch`) sets WORLD_SIZE, RANK and LOCAL_RANK.
Every rank builds the same batches from the same seed and keeps its own rows of each one,
so the global batch, the number of steps and the learning-rate schedule are those of one
process, and DDP's gradient all-reduce makes every rank take the same optimizer step.
Without those variables (or with WORLD_SIZE=1) everything here is a no-op.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def setup(device: torch.device) -> bool:
    """Join the process group torchrun describes; True when there is more than one process.

    The backend follows where the model lives: nccl for CUDA, gloo for the CPU.
    """
    if not dist.is_available():
        return False
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return False
        if device.type == "cuda":  # one GPU per rank, also for collectives before the model's
            torch.cuda.set_device(local_device())
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """The rank that writes files and logs (rank 0; the only one without torchrun)."""
    return rank() == 0


def local_device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard_rows(n_rows: int) -> tuple[list[int], bool]:
    """This rank's rows of an `n_rows` batch (every world_size-th row from its rank).

    A rank left without rows (a last batch smaller than the world) gets row 0 and False: it
    must still run forward and backward, since DDP all-reduces every step, but with weight 0.
    """
    rows = list(range(rank(), n_rows, world_size()))
    return (rows, True) if rows else ([0], False)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over the ranks (identity in a single process)."""
    if world_size() == 1:
        return values
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    return buf.tolist()


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (what rank 0 alone decided, e.g. a refined map)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
