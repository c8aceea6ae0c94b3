"""A CPU-thread share that processes training side by side hand to each other.

The `train` stage trains the static and the SIIT model at once, each process on half the
CPU threads. The two do not finish together (SIIT refines, static does not), so the stage
writes the new share into a small file when one finishes, and the one still training
follows it (`ThreadShare.poll`, cheap enough to call every step: one `stat`). Results do not
depend on the thread count (docs/benchmarks.md: the same bytes at once and in turn), so
switching mid-run changes the wall time only.

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
        value = os.environ.get(SHARE_ENV)
        return cls(Path(value) if value else None)

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
