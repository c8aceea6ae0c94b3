"""components/tracking.py against a sqlite store in tmp_path: runs of killed processes end
KILLED, a new store appears only once its schema is complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components import tracking
from components.config import TrackingConfig


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrackingConfig:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # runs' artifacts stay in tmp_path
    return TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _running_run(cfg: TrackingConfig, **tags: str) -> str:
    """A RUNNING run with these tags, as a stage leaves it when it is killed."""
    client = tracking._mlflow(cfg).MlflowClient()
    experiment = tracking.set_experiment(cfg)
    return client.create_run(experiment.experiment_id, tags=tags).info.run_id


def test_a_new_stage_run_ends_the_runs_of_killed_processes(cfg: TrackingConfig) -> None:
    here, me = os.uname().nodename, tracking.process_tags()
    killed = _running_run(cfg, **{tracking.PID_TAG: str(_dead_pid()), tracking.HOST_TAG: here})
    alive = _running_run(cfg, **me)
    reused = _running_run(cfg, **{**me, tracking.STARTED_TAG: "1"})  # pid since reused
    elsewhere = _running_run(cfg, **{tracking.PID_TAG: "1", tracking.HOST_TAG: here + "-other"})
    untagged = _running_run(cfg)

    with tracking.start_run(cfg, "next-stage") as run:
        current = run.info.run_id
        client = tracking._mlflow(cfg).MlflowClient()
        assert client.get_run(current).data.tags[tracking.PID_TAG] == str(os.getpid())
        assert client.get_run(current).data.tags[tracking.HOST_TAG] == here

    status = {rid: client.get_run(rid).info.status for rid in (killed, alive, reused, elsewhere)}
    assert status == {
        killed: "KILLED",
        alive: "RUNNING",
        reused: "KILLED",
        elsewhere: "RUNNING",
    }
    assert client.get_run(untagged).info.status == "RUNNING"  # no owner known: left alone
    assert "ended without ending this run" in client.get_run(killed).data.tags[tracking.KILLED_TAG]
    assert client.get_run(killed).info.end_time is not None
    assert client.get_run(current).info.status == "FINISHED"


def test_a_resumed_run_is_not_ended_and_belongs_to_its_new_process(cfg: TrackingConfig) -> None:
    here = os.uname().nodename
    killed = _running_run(cfg, **{tracking.PID_TAG: str(_dead_pid()), tracking.HOST_TAG: here})
    with tracking.start_run(cfg, "resumed", run_id=killed):
        client = tracking._mlflow(cfg).MlflowClient()
        assert client.get_run(killed).info.status == "RUNNING"
        assert client.get_run(killed).data.tags[tracking.PID_TAG] == str(os.getpid())
    assert client.get_run(killed).info.status == "FINISHED"


def test_a_new_sqlite_store_appears_only_with_its_whole_schema(
    cfg: TrackingConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.store.db import utils

    db = tmp_path / "mlflow.db"
    stale = tmp_path / f".mlflow.db.{_dead_pid()}.k1ll3d.tmp"  # a creation killed earlier
    stale.write_bytes(b"half a schema")
    original = utils._initialize_tables
    seen = []

    def initialize_tables(engine) -> None:  # where a kill would land
        seen.append(db.exists())
        original(engine)

    monkeypatch.setattr(utils, "_initialize_tables", initialize_tables)
    tracking.set_experiment(cfg)
    assert seen == [False]  # the schema was created elsewhere, then the store took its name
    assert db.exists() and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mlflow")) == []
    with tracking.start_run(cfg, "works"):
        tracking.log_metrics({"x": 1.0})


def test_each_config_reaches_its_own_store_in_one_process(
    tmp_path: Path, cfg: TrackingConfig
) -> None:
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into the environment; the first
    store used must not capture the later configs of the same process (a served deployment
    runs many pipelines), while a store the user set in the environment still wins."""
    other = TrackingConfig(uri=f"sqlite:///{tmp_path / 'other.db'}", experiment="t2")
    tracking.set_experiment(cfg)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    tracking.set_experiment(other)
    assert f"/{tracking.set_experiment(other).experiment_id}?" in tracking.ui_link(other)
    names = {
        uri: {e.name for e in tracking._mlflow(TrackingConfig(uri=uri)).search_experiments()}
        for uri in (cfg.uri, other.uri)
    }
    assert "t" in names[cfg.uri] and "t2" not in names[cfg.uri]
    assert "t2" in names[other.uri] and "t" not in names[other.uri]
    os.environ["MLFLOW_TRACKING_URI"] = cfg.uri  # the user's choice (monkeypatch restores it)
    try:
        assert tracking.tracking_uri(other) == cfg.uri
        assert os.environ["MLFLOW_TRACKING_URI"] == cfg.uri
        tracking._mlflow(other)
        assert os.environ["MLFLOW_TRACKING_URI"] == cfg.uri
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_a_process_losing_the_race_to_create_the_experiment_finds_the_winners(
    cfg: TrackingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stages starting together on a new store: the other process tags the experiment
    between this one's check and its own insert (seen as a unique-constraint error)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    real = MlflowClient.set_experiment_tag
    calls = []

    def other_process_first(self, experiment_id, key, value):
        calls.append(key)
        if len(calls) == 1:
            real(self, experiment_id, key, value)  # the winner's insert ...
            raise MlflowException(  # ... makes this one's fail
                "(sqlite3.IntegrityError) UNIQUE constraint failed: experiment_tags.key, "
                "experiment_tags.experiment_id"
            )
        return real(self, experiment_id, key, value)

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", other_process_first)
    experiment = tracking.set_experiment(cfg)
    assert calls == [tracking.EXPERIMENT_KIND_TAG]  # the retry found the tag set
    stored = MlflowClient().get_experiment(experiment.experiment_id)
    assert stored.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND


def test_other_tracking_errors_are_not_retried(
    cfg: TrackingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    calls = []

    def broken(self, *args):
        calls.append(args)
        raise MlflowException("the store is read-only")

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", broken)
    with pytest.raises(MlflowException, match="read-only"):
        tracking.set_experiment(cfg)
    assert len(calls) == 1
