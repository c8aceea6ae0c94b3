"""The thread hand-off between the `train` stage's two model processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components import thread_share
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
    monkeypatch.setattr(thread_share, "thread_count_changes_results", lambda: False)
    assert ThreadShare.from_env().path == path


def test_no_share_is_followed_where_the_thread_count_changes_results(
    tmp_path: Path, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """There a model that followed would depend on when the other finished."""
    monkeypatch.setenv(SHARE_ENV, str(tmp_path / "threads"))
    monkeypatch.setattr(thread_share, "thread_count_changes_results", lambda: True)
    share = ThreadShare.from_env()
    write_share(tmp_path / "threads", threads + 1)
    assert share.path is None and share.poll() is None
    assert torch.get_num_threads() == threads


def test_the_probe_compares_one_thread_with_many_and_restores_the_count(threads: int) -> None:
    assert thread_share.thread_count_changes_results(threads=1) is False  # 1 against 1
    torch.set_num_threads(1)
    answer = thread_share.thread_count_changes_results(threads=2)
    assert isinstance(answer, bool) and torch.get_num_threads() == 1
