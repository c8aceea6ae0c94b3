"""The `train` stage (`siit train`) with stand-in models: a failing model stops the other and
fails the stage; a finished model hands its threads on; a stopped stage stops its models. The
real models (both at once give the same bytes as one after the other, a model finished before
the stage was stopped is not trained again, both are subflows in Prefect) are tested in
test_pipeline_dvc.py against the models `dvc repro` trains there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows import train_models
from flows.train_models import LAUNCHER_ENV, TrainingFailed, cpu_count, run_models
from tests.flows.test_pipeline_dvc import REPO

STAND_IN = textwrap.dedent(
    """
    import os, sys, time
    mode, folder = sys.argv[1], sys.argv[2]
    def put(name, text):  # whole or not at all: the other side polls for these files
        with open(os.path.join(folder, name + ".tmp"), "w") as fh:
            fh.write(text)
        os.replace(os.path.join(folder, name + ".tmp"), os.path.join(folder, name))
    put(mode + ".pid", str(os.getpid()))
    put(mode + ".threads", os.environ.get("OMP_NUM_THREADS", ""))
    put(mode + ".parent", os.environ.get("SIIT_PARENT_TASK_RUN", ""))
    if mode == os.environ.get("FAIL_MODE"):
        after = os.environ.get("FAIL_AFTER")  # fail once that model has started (no race)
        deadline = time.monotonic() + 60
        while after and not os.path.exists(os.path.join(folder, after + ".threads")):
            if time.monotonic() > deadline:
                sys.exit(4)
            time.sleep(0.05)
        sys.exit(3)
    if mode == os.environ.get("WAIT_SHARE"):  # until the stage hands over the other's threads
        share = os.environ.get("SIIT_THREAD_SHARE")
        deadline = time.monotonic() + float(os.environ.get("SHARE_WAIT_S", "60"))
        while not (share and os.path.exists(share)):
            if time.monotonic() > deadline:
                sys.exit(5)
            time.sleep(0.05)
        put(mode + ".share", open(share).read().strip())
        sys.exit(0)
    time.sleep(float(os.environ.get("SLEEP_S", "120")))
    """
)


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str | None) -> Path:
    """Stand-in models for the stage; `env`: the stand-ins' settings (None: unset)."""
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    script = tmp_path / "model.py"
    script.write_text(STAND_IN)
    # the stage appends `--params <file> train_<mode>`: the stand-in ignores them
    monkeypatch.setenv(LAUNCHER_ENV, f"{sys.executable} {script} {{mode}} {tmp_path}")
    return tmp_path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie has ended
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_a_failing_model_stops_the_other_and_fails_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = stand_in(
        tmp_path, monkeypatch, FAIL_MODE="static", FAIL_AFTER="siit", OMP_NUM_THREADS=None
    )
    start = time.monotonic()
    with pytest.raises(TrainingFailed, match=r"train_static failed \(exit 3\).*other model"):
        run_models(("static", "siit"), "params.yaml", folder, concurrent=True, threads=0)
    assert time.monotonic() - start < 60  # not the stand-in's 120 s
    assert not alive(int((folder / "siit.pid").read_text()))
    # two at once: each got its share of this machine's threads
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert (folder / "siit.threads").read_text() == share


def test_a_finished_model_hands_its_threads_to_the_one_still_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the static stand-in finishes at once
    folder = stand_in(tmp_path, monkeypatch, WAIT_SHARE="siit", SLEEP_S="0", OMP_NUM_THREADS=None)
    run_models(("static", "siit"), "params.yaml", folder, concurrent=True, threads=0)
    assert (folder / "siit.share").read_text() == str(cpu_count())


def test_no_hand_over_when_the_user_fixed_the_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no share file comes: the stand-in gives up after SHARE_WAIT_S
    folder = stand_in(
        tmp_path, monkeypatch, WAIT_SHARE="siit", SLEEP_S="0", OMP_NUM_THREADS="1", SHARE_WAIT_S="3"
    )
    with pytest.raises(TrainingFailed, match=r"train_siit failed \(exit 5\)"):
        run_models(("static", "siit"), "params.yaml", folder, concurrent=True, threads=0)


def test_in_turn_each_model_keeps_every_thread_and_a_failure_stops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = stand_in(tmp_path, monkeypatch, FAIL_MODE="static", OMP_NUM_THREADS=None)
    folders = []  # nothing to hand over in turn: no folder for a thread share either
    real = train_models.tempfile.TemporaryDirectory
    monkeypatch.setattr(
        train_models.tempfile,
        "TemporaryDirectory",
        lambda *a, **k: folders.append(k) or real(*a, **k),
    )
    with pytest.raises(TrainingFailed, match=r"train_static failed \(exit 3\)"):
        run_models(("static", "siit"), "params.yaml", folder, concurrent=False, threads=0)
    assert folders == []
    assert (folder / "static.threads").read_text() == ""
    assert not (folder / "siit.pid").exists()  # never started


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_stage_stops_its_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: signal.Signals
) -> None:
    folder = stand_in(tmp_path, monkeypatch)
    stage = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pathlib import Path; from flows.train_models import run_models; "
            f"run_models(('static', 'siit'), 'params.yaml', Path({str(folder)!r}), True, 0)",
        ],
        cwd=REPO,
    )
    deadline = time.monotonic() + 60
    while not all((folder / f"{m}.pid").exists() for m in ("static", "siit")):
        assert time.monotonic() < deadline and stage.poll() is None, "the models never started"
        time.sleep(0.1)
    pids = [int((folder / f"{m}.pid").read_text()) for m in ("static", "siit")]
    stage.send_signal(how)
    stage.wait(timeout=60)
    deadline = time.monotonic() + 30  # SIGKILL: the kernel's parent-death signal stops them
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids), "a model outlived its stage"
    if how == signal.SIGTERM:
        assert stage.returncode == 128 + signal.SIGTERM


def test_a_failed_model_fails_its_task_run_and_the_stopped_one_is_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_env: dict[str, str]
) -> None:
    """Inside the stage's flow run each process gets a task run of its own to nest under; a
    model that fails fails it, the one stopped for it is cancelled."""
    import httpx
    from prefect import flow
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    folder = stand_in(
        tmp_path, monkeypatch, FAIL_MODE="static", FAIL_AFTER="siit", OMP_NUM_THREADS=None
    )

    @flow(name="train-models-stand-in")
    def stage() -> None:
        run_models(("static", "siit"), "params.yaml", folder, concurrent=True, threads=0)

    api = temporary_settings({PREFECT_API_URL: prefect_env["PREFECT_API_URL"]})
    with api:
        with pytest.raises(TrainingFailed, match=r"train_static failed"):
            stage()
        APILogHandler().flush()  # the flow's logs go to this server, not to a default one
    states = {}
    for mode in ("static", "siit"):
        task_run = (folder / f"{mode}.parent").read_text()
        assert task_run, f"train_{mode} got no task run to nest under"
        response = httpx.get(f"{prefect_env['PREFECT_API_URL']}/task_runs/{task_run}", timeout=30)
        response.raise_for_status()
        assert response.json()["name"].startswith(f"train_{mode}")
        states[mode] = response.json()["state"]["type"]
    assert states == {"static": "FAILED", "siit": "CANCELLED"}
    # outside a flow run (the tests above): no task run, the stand-in sees no parent
    (tmp_path / "plain").mkdir()
    folder = stand_in(tmp_path / "plain", monkeypatch, FAIL_MODE=None, SLEEP_S="0")
    run_models(("static",), "params.yaml", folder, concurrent=False, threads=0)
    assert (folder / "static.parent").read_text() == ""
