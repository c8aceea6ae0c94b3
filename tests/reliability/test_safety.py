"""Issue 13, point 5 (the parts that are checked statically or by the config loader):
weights load only with `weights_only=True` (or from safetensors), remote code stays off
unless the user sets it, servers bind to 127.0.0.1, and a path in params.yaml cannot make
the pipeline write outside the project."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, ModelConfig, load_params

REPO = Path(__file__).parents[2]
SOURCES = sorted(p for d in ("components", "flows", "bench") for p in (REPO / d).rglob("*.py"))


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Calls of `<something>.<name>(...)` or `<name>(...)` in the project's code."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    found.append((path, node))
    return found


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_torch_load_is_always_weights_only() -> None:
    loads = [(p, c) for p, c in _calls("load") if ast.unparse(c.func).startswith("torch.")]
    assert loads, "the audit found no torch.load at all: has the code moved?"
    for path, call in loads:
        value = _keyword(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, (
            f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True"
        )


def test_no_pickle_based_loading() -> None:
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import pickle|import joblib|import dill)", text, re.M), path
        assert "pickle.load" not in text and "joblib.load" not in text, path


def test_remote_code_is_off_unless_the_user_sets_it() -> None:
    assert ModelConfig().trust_remote_code is False
    for path, call in _calls("from_pretrained"):
        value = _keyword(call, "trust_remote_code")
        where = f"{path.relative_to(REPO)}:{call.lineno}"
        assert not (isinstance(value, ast.Constant) and value.value is True), where


def test_servers_bind_to_localhost() -> None:
    server = (REPO / "flows" / "server.py").read_text()
    assert '"--host", "127.0.0.1"' in server
    assert "--host 127.0.0.1" in (REPO / "Makefile").read_text()
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////tmp/elsewhere/mlflow.db",
        "sqlite:///../mlflow.db",
        "file:///var/mlruns",
        "~/mlruns",
    ],
)
def test_a_tracking_path_outside_the_project_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"uri": uri}}))
    with pytest.raises(ConfigError) as err:
        load_params("params.yaml")
    assert f"tracking.uri: {uri!r} writes outside the project" in str(err.value)
    assert "MLFLOW_TRACKING_URI" in str(err.value)


@pytest.mark.parametrize(
    "uri", ["sqlite:///mlflow.db", "sqlite:///runs/mlflow.db", "mlruns", "http://127.0.0.1:5000"]
)
def test_tracking_inside_the_project_or_on_a_server_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"uri": uri}}))
    assert load_params("params.yaml").tracking.uri == uri


def test_input_files_are_snapshotted_by_name_only(tmp_path: Path) -> None:
    """data.files paths are read from anywhere but only ever written as data/raw/<name>."""
    from components.config import DataConfig, FilesSource
    from components.data import fetch_raw

    src = tmp_path / "elsewhere"
    src.mkdir()
    (src / "events.csv").write_text("user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,a,3\n")
    (src / "items.csv").write_text("item_id,title\na,A\nb,B\n")
    cfg = DataConfig(
        source="files",
        files=FilesSource(
            interactions=str(src / ".." / "elsewhere" / "events.csv"), items=str(src / "items.csv")
        ),
    )
    written = fetch_raw(cfg, tmp_path / "project" / "data" / "raw")
    assert [p.relative_to(tmp_path) for p in written] == [
        Path("project/data/raw/events.csv"),
        Path("project/data/raw/items.csv"),
    ]
