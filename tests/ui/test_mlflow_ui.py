"""The MLflow UI as a person uses it: `mlflow ui` over a finished synthetic pipeline, opened in
headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium).

It lands on the runs table (the experiment is marked as model training), finds the static
and SIIT runs with their Dataset and Model columns filled, a nested round of the SIIT run,
and a metric chart; screenshots go to reports/ui/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components import tracking
from components.config import TrackingConfig
from flows.server import free_port, stop_processes, wait_healthy
from tests.conftest import flows_in
from tests.flows.test_pipeline_dvc import REPO, TINY_PARAMS, _merge

pytestmark = pytest.mark.ui

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
)
SHOTS = REPO / "reports" / "ui"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if not CHROMIUM or not DRIVER:
        return (
            "Chromium and its driver are not installed (apt-get install chromium chromium-driver)"
        )
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]):
    """Every stage of a tiny synthetic pipeline, in this process, against a real Prefect server."""
    from components.config import load_params
    from components.model.base_model import write_manifest
    from flows.data import prepare_flow, validate_flow
    from flows.register import register_flow
    from flows.report import report_flow
    from flows.tokenize import tokenize_flow
    from flows.train import train_flow

    root = tmp_path_factory.mktemp("ui")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")  # the stages' inputs, for lineage
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with flows_in(root, prefect_env):
        prepare_flow(root=str(root))
        validate_flow(root=str(root))
        tokenize_flow(root=str(root))
        write_manifest(root / "params.yaml", root / "artifacts/base_model.json")
        train_flow(mode="static", root=str(root))
        train_flow(mode="siit", root=str(root))
        report_flow(root=str(root))
        register_flow(root=str(root))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return root, uri, load_params(root / "params.yaml").tracking.experiment


@pytest.fixture(scope="module")
def ui(finished_run):
    root, uri, _ = finished_run
    port = free_port()
    log = (root / "ui.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"]
        + ["--port", str(port)],
        cwd=root,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", proc, root / "ui.log", 120, "mlflow ui")
        yield url
    finally:
        stop_processes([proc], 20)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_text(driver, texts: list[str], timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            body = driver.find_element(By.TAG_NAME, "body").text
        except Exception:  # noqa: BLE001 - the page is still being rendered
            body = ""
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / "failure.png"))
    raise AssertionError(
        f"not found on the page: {[t for t in texts if t not in body]}\n{body[:3000]}"
    )


def _wait_regex(driver, pattern: str, timeout: float = 60) -> str:
    import re

    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            body = driver.find_element(By.TAG_NAME, "body").text
        except Exception:  # noqa: BLE001 - the page is still being rendered
            body = ""
        if re.search(pattern, body):
            return body
        time.sleep(0.5)
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / "failure.png"))
    raise AssertionError(f"{pattern!r} not found on the page:\n{body[:3000]}")


def test_mlflow_ui_shows_comparable_runs(ui: str, finished_run, browser) -> None:
    import mlflow

    root, uri, experiment_name = finished_run
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = {
        r.info.run_name: r for r in client.search_runs([experiment.experiment_id], max_results=200)
    }
    SHOTS.mkdir(parents=True, exist_ok=True)
    # the report stage put its PNG plots on the training runs too
    for name in ("static", "siit"):
        plots = {a.path for a in client.list_artifacts(runs[name].info.run_id, "plots")}
        assert "plots/valid_ndcg_at_10_per_round.png" in plots, (name, plots)

    # the experiment list, then the link the pipeline prints (tracking.ui_link): MLflow 3.17
    # picks the landing page from its GenAI / Model training switch, which the link sets
    browser.get(f"{ui}/#/experiments")
    _wait_text(browser, [experiment_name])
    link = tracking.ui_link(TrackingConfig(uri=uri, experiment=experiment_name), ui)
    assert link.endswith(f"/#/experiments/{experiment.experiment_id}?workflowType=machine_learning")
    browser.get(link)
    body = _wait_text(browser, ["static", "siit", "report", "register"])
    assert "/runs" in browser.current_url, browser.current_url
    assert "No data available for the selected time range" not in body  # not the GenAI overview
    # the Dataset column names the data, the Model column the logged recommender
    _wait_text(browser, ["data/processed", "recommender"])
    browser.save_screenshot(str(SHOTS / "runs_table.png"))

    # a nested round of the SIIT run: its page names its parent
    round_run = runs["siit-round-0"]
    assert round_run.data.tags["mlflow.parentRunId"] == runs["siit"].info.run_id
    ml = "?workflowType=machine_learning"
    page = f"{ui}/#/experiments/{experiment.experiment_id}/runs/{round_run.info.run_id}{ml}"
    browser.get(page)
    _wait_regex(browser, r"Parent run\s+siit\s")
    browser.save_screenshot(str(SHOTS / "nested_round.png"))

    # a metric chart of the SIIT run
    siit = runs["siit"].info.run_id
    browser.get(f"{ui}/#/experiments/{experiment.experiment_id}/runs/{siit}/model-metrics{ml}")
    _wait_text(browser, ["best_valid", "ndcg_at_10"])
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + 30
    while not browser.find_elements(By.CSS_SELECTOR, "svg .plot, .js-plotly-plot, canvas"):
        assert time.monotonic() < deadline, "no chart rendered"
        time.sleep(0.5)
    browser.save_screenshot(str(SHOTS / "metric_chart.png"))
    assert (SHOTS / "runs_table.png").stat().st_size > 10_000
