"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny matmuls: one thread is faster than several fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def matmul_rows():
    """Records the row count (the first operand's leading size) of every 2-d matmul run inside
    `with matmul_rows() as rows:` (aten mm, addmm; forward and backward)."""
    import contextlib

    from torch.utils._python_dispatch import TorchDispatchMode

    mms = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}

    class Recorder(TorchDispatchMode):
        def __init__(self, rows: list[int]) -> None:
            super().__init__()
            self.rows = rows

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in mms:
                first = args[1] if func is torch.ops.aten.addmm.default else args[0]
                self.rows.append(first.shape[0])
            return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def recording():
        rows: list[int] = []
        with Recorder(rows):
            yield rows

    return recording
