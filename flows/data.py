"""Stages `prepare` (raw snapshot) and `validate` (Great Expectations, then the split)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.config import Params, load_params
from components.data import RawData, build_dataset, fetch_raw, load_raw, validate_raw
from components.io import atomic_write_json
from components.paths import Paths
from flows.common import IO


@task(name="fetch-raw-data", **IO)
def fetch_raw_task(params: Params, paths: Paths) -> list[str]:
    return [str(p) for p in fetch_raw(params.data, paths.raw)]


@flow(name="prepare")
def prepare_flow(params_file: str = "params.yaml", root: str = ".") -> list[str]:
    """Materialise the configured raw data source under data/raw (immutable snapshot)."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    files = fetch_raw_task(params, paths)
    get_run_logger().info("raw data: %s", ", ".join(files))
    return files


@task(name="load-raw-data", cache_policy=NO_CACHE)
def load_raw_task(params: Params, paths: Paths) -> RawData:
    return load_raw(params.data, paths.raw)


@task(name="validate-raw-data", cache_policy=NO_CACHE)
def validate_raw_task(raw: RawData, params: Params) -> dict:
    return validate_raw(raw, params.data)


@task(name="split-and-write", cache_policy=NO_CACHE)
def write_dataset_task(raw: RawData, params: Params, paths: Paths, report: dict) -> str:
    dataset = build_dataset(raw, params.data)
    dataset.write(paths.processed)
    summary = {
        "users": dataset.n_users,
        "items": dataset.n_items,
        "interactions": int(sum(len(s) for s in dataset.sequences)),
    }
    atomic_write_json(paths.reports / "data_validation.json", {**report, "dataset": summary})
    return str(paths.processed)


@flow(name="validate")
def validate_flow(params_file: str = "params.yaml", root: str = ".") -> str:
    """Great Expectations on the raw data, then the leave-one-out dataset; nothing is written on failure."""
    params, paths = load_params(Path(root) / params_file), Paths(Path(root))
    raw = load_raw_task(params, paths)
    report = validate_raw_task(raw, params)
    return write_dataset_task(raw, params, paths, report)
