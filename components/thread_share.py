"""A CPU-thread share that processes training side by side hand to each other.

The `train` stage trains the static and the SIIT model at once, each process on half the
CPU threads. The two do not finish together (SIIT refines, static does not), so the stage
writes the new share into a small file when one finishes, and the one still training
follows it (`ThreadShare.poll`, cheap enough to call every step: one `stat`). Where results
do not depend on the thread count (docs/benchmarks.md: the same bytes at once and in turn),
switching mid-run changes the wall time only. Where they do (`thread_count_changes_results`:
on a 2-core AVX2 machine some small fp32 matrix products of the BLAS round differently on 1
and 2 threads), a model that followed would depend on when the other one finished, so
`ThreadShare.from_env` does not follow there: each model keeps its share, and runs stay the
same run to run.

The writer side imports nothing heavy (the stage process imports no torch).
"""

from __future__ import annotations

import os
from pathlib import Path

SHARE_ENV = "SIIT_THREAD_SHARE"


def write_share(path: Path, threads: int) -> None:
    """Atomically publish `threads` as every follower's new thread count."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{int(threads)}\n")
    os.replace(tmp, path)


class ThreadShare:
    """Follows the share file named by SIIT_THREAD_SHARE (nothing to do without it)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None

    @classmethod
    def from_env(cls) -> ThreadShare:
        """The share named by SIIT_THREAD_SHARE; none to follow where the thread count would
        change the results (`thread_count_changes_results`)."""
        value = os.environ.get(SHARE_ENV)
        if not value or thread_count_changes_results():
            return cls(None)
        return cls(Path(value))

    def poll(self) -> int | None:
        """Apply a newly published share; the new thread count, or None when unchanged."""
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_ino)  # os.replace gives a new inode
        if stamp == self._seen:
            return None
        self._seen = stamp
        try:
            threads = int(self.path.read_text().strip())
        except (OSError, ValueError):  # unreadable: keep the current share
            return None
        import torch

        if threads < 1 or threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads


_PROBE: bool | None = None


def thread_count_changes_results(threads: int | None = None) -> bool:
    """Whether this machine's matrix products give other bits on one thread than on `threads`
    (default: every CPU): a fixed set of small fp32 products (the sizes where a BLAS picks
    its kernels by thread count) computed both ways. Some milliseconds, once per process."""
    global _PROBE
    if _PROBE is not None and threads is None:
        return _PROBE
    import torch
    import torch.nn.functional as F

    many = threads or os.cpu_count() or 1
    if many < 2:
        return False
    before = torch.get_num_threads()
    gen = torch.Generator().manual_seed(0)
    pairs = [
        (torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen))
        for m in (1, 3, 9, 17, 33)
        for n in (8, 40, 130)
        for k in (32, 128)
    ]
    try:
        results = []
        for count in (1, many):
            torch.set_num_threads(count)
            results.append([F.linear(x, w) for x, w in pairs])
    finally:
        torch.set_num_threads(before)
    changes = any(not torch.equal(a, b) for a, b in zip(*results, strict=True))
    if threads is None:
        _PROBE = changes
    return changes
