"""The registered champion served by `mlflow models serve` (real server, real HTTP requests).

Every edge case gets its documented answer (components/serving.py): never a 500, never a
traceback in the body. A load check prints p50/p99 latency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from components import tracking
from components.config import TrackingConfig
from flows.server import free_port, stop_processes, wait_healthy
from tests.serving.conftest import N_ITEMS

BIN = Path(sys.executable).parent


def post(url: str, body: bytes | str | dict, timeout: float = 60) -> tuple[int, dict | str]:
    data = (
        body
        if isinstance(body, bytes)
        else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    )
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """The bundle logged, registered, made champion, and served from `models:/name@champion`."""
    root = tmp_path_factory.mktemp("serve")
    cfg = TrackingConfig(uri=f"sqlite:///{root / 'mlflow.db'}", experiment="t-serve")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = cfg.uri
    cwd = os.getcwd()
    os.chdir(root)
    try:
        _, _, version = tracking.log_recommender(
            cfg, bundle, run_id=None, registered_model=cfg.registered_model
        )
        assert tracking.gate_champion(cfg, version, score=0.1, fingerprint="x").promoted
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # uvicorn from this environment
        "MLFLOW_TRACKING_URI": cfg.uri,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "OMP_NUM_THREADS": "1",
    }
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{cfg.registered_model}@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/ping", proc, root / "serve.log", 180, "model server")
        yield url
    finally:
        stop_processes([proc], 20)
        log.close()


def _one(body: dict | list) -> dict:
    assert isinstance(body, dict) and len(body["predictions"]) >= 1, body
    return body["predictions"][0]


def test_a_normal_history(server: str) -> None:
    status, body = post(server, {"dataframe_records": [{"history": ["1", "2", "3"]}]})
    assert status == 200, body
    answer = _one(body)
    assert answer["k"] == 5 and len(answer["item_ids"]) == 5  # serving.json: default_k
    assert not {"1", "2", "3"} & set(answer["item_ids"])  # seen items are not recommended
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    assert answer["unknown_item_ids"] == []
    # several users, k per row, integer ids, a user_id echoed back
    status, body = post(
        server,
        {
            "dataframe_split": {
                "columns": ["user_id", "history", "k"],
                "data": [["u1", [4, 5], 3], ["u2", ["6"], 1]],
            }
        },
    )
    assert status == 200, body
    first, second = body["predictions"]
    assert first["user_id"] == "u1" and len(first["item_ids"]) == 3
    assert not {"4", "5"} & set(first["item_ids"])
    assert second["user_id"] == "u2" and len(second["item_ids"]) == 1
    # k for every row as a param
    status, body = post(
        server, {"dataframe_records": [{"history": ["7"]}, {"history": []}], "params": {"k": 2}}
    )
    assert status == 200, body
    assert [len(a["item_ids"]) for a in body["predictions"]] == [2, 2]


def test_an_empty_history_gets_new_user_recommendations(server: str) -> None:
    status, body = post(server, {"dataframe_records": [{"history": []}]})
    assert status == 200, body
    assert len(_one(body)["item_ids"]) == 5


def test_unknown_item_ids_are_ignored_and_reported(server: str) -> None:
    status, body = post(server, {"dataframe_records": [{"history": ["999", "1", "nope"]}]})
    assert status == 200, body
    answer = _one(body)
    assert answer["unknown_item_ids"] == ["999", "nope"]
    assert len(answer["item_ids"]) == 5 and "1" not in answer["item_ids"]
    status, body = post(server, {"dataframe_records": [{"history": ["999"]}]})
    assert status == 200 and len(_one(body)["item_ids"]) == 5  # as an empty history


def test_k_larger_than_the_catalogue_is_capped(server: str) -> None:
    status, body = post(server, {"dataframe_records": [{"history": ["1", "2"], "k": 1000}]})
    assert status == 200, body
    answer = _one(body)
    assert answer["k"] == N_ITEMS
    assert sorted(answer["item_ids"], key=int) == [str(i) for i in range(3, N_ITEMS + 1)]


@pytest.mark.parametrize(
    "body",
    [
        "this is not json",
        '{"dataframe_records": [',
        b"\xff\xfe",
        {"something": "else"},
        {"dataframe_records": [{"items": ["1"]}]},
        {"dataframe_records": [{"history": "1, 2"}]},
        {"dataframe_records": [{"history": [{"id": 1}]}]},
        {"dataframe_records": [{"history": ["1"], "k": -2}]},
        {"dataframe_records": [{"history": ["1"], "k": 0}]},
        {"dataframe_records": [{"history": ["1"]}], "params": {"k": "many"}},
        [["1", "2"]],
    ],
)
def test_a_malformed_body_is_a_clear_400(server: str, body) -> None:
    status, answer = post(server, body)
    assert status == 400, answer
    text = json.dumps(answer) if not isinstance(answer, str) else answer
    assert "Traceback" not in text and "stack_trace" not in text
    assert isinstance(answer, dict) and answer.get("message"), answer


def test_load_check(server: str) -> None:
    """300 requests from 4 concurrent clients: no errors; p50/p99 latency printed."""
    bodies = [
        {"dataframe_records": [{"history": [str(1 + (i + j) % N_ITEMS) for j in range(i % 7)]}]}
        for i in range(300)
    ]

    def timed(body: dict) -> tuple[int, float]:
        start = time.perf_counter()
        status, _ = post(server, body)
        return status, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(timed, bodies))
    wall = time.perf_counter() - start
    statuses = [s for s, _ in results]
    latencies = sorted(t for _, t in results)
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"\nload check: {len(results)} requests, 4 clients, {len(results) / wall:.1f} req/s, "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )
    assert statuses == [200] * len(bodies)
