"""The thread hand-off between the `train` stage's two model processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.thread_share import SHARE_ENV, ThreadShare, write_share


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_a_published_share_is_followed_once(tmp_path: Path, threads: int) -> None:
    path = tmp_path / "threads"
    share = ThreadShare(path)
    assert share.poll() is None  # nothing published yet
    torch.set_num_threads(1)
    write_share(path, 2)
    assert share.poll() == 2 and torch.get_num_threads() == 2
    assert share.poll() is None  # the same publication is not applied twice
    torch.set_num_threads(1)
    write_share(path, 3)
    assert share.poll() == 3 and torch.get_num_threads() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["threads"]  # no temporary file left


def test_garbage_or_no_share_changes_nothing(
    tmp_path: Path, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "threads"
    path.write_text("many\n")
    assert ThreadShare(path).poll() is None
    assert torch.get_num_threads() == threads
    monkeypatch.delenv(SHARE_ENV, raising=False)
    assert ThreadShare.from_env().poll() is None
    monkeypatch.setenv(SHARE_ENV, str(path))
    assert ThreadShare.from_env().path == path
