"""Shared fixtures: one real Prefect server per test session for flow runs in subprocesses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.server import local_prefect_server

# The modules that take half a minute or more (whole pipelines in subprocesses, a browser),
# longest first, as measured by `--durations` on the 2-core development machine. `make test`
# hands whole modules to its xdist workers in collection order (`--dist loadscope
# --no-loadscope-reorder`; xdist's default re-sorts them by number of tests, which put these
# one-test modules last). Collected in path order, the MLflow UI test (about two minutes) came
# last and kept one worker busy while the other sat idle. Longest first, every worker finishes
# at about the same time.
LONG_MODULES = (
    "tests/flows/test_pipeline_dvc.py",
    "tests/ui/test_mlflow_ui.py",
    "tests/reliability/test_bad_inputs.py",
    "tests/flows/test_resume.py",
    "tests/serving/test_served_model.py",
    "tests/flows/test_register.py",
    "tests/model/test_training.py",
    "tests/flows/test_warm_start_flow.py",
    "tests/flows/test_train_siit.py",
    "tests/reliability/test_interruption.py",
    "tests/test_tracking.py",
    "tests/reliability/test_determinism.py",
    "tests/reliability/test_properties.py",
    "tests/model/test_t5.py",
    "tests/flows/test_train_models.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long modules first (longest first), then every other test in path order; a
    module's tests stay together and in their order."""
    rank = {module: i for i, module in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-home")
    with local_prefect_server(home) as url:
        yield {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }


@contextmanager
def flows_in(root: Path, prefect_env: dict[str, str]) -> Iterator[None]:
    """Run flows in this process as a `siit <stage>` process in `root` would: `root` as the
    working folder, its own MLflow store, the session's Prefect server; all restored after."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.chdir(root)
        with temporary_settings({PREFECT_API_URL: prefect_env["PREFECT_API_URL"]}):
            yield
