"""Shared fixtures: one real Prefect server per test session for flow runs in subprocesses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flows.server import local_prefect_server


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-home")
    with local_prefect_server(home) as url:
        yield {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
