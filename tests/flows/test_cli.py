"""The `siit` command line outside the stages: repro/exp hand-off, base_model, errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from flows import cli, server


def test_repro_and_exp_pass_their_arguments_to_dvc(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(server, "run_with_server", lambda cmd, home: calls.append(cmd) or 0)
    assert cli.main(["repro", "--force", "train_siit"]) == 0
    assert cli.main(["exp", "run", "-S", "train.lr=0.001"]) == 0
    dvc = str(Path(sys.executable).parent / "dvc")
    assert calls == [
        [dvc, "repro", "--force", "train_siit"],
        [dvc, "exp", "run", "-S", "train.lr=0.001"],
    ]


def test_stage_commands_use_this_environment_without_activation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")  # set: no server is started
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    out = tmp_path / "path.txt"
    code = f"import os, pathlib; pathlib.Path({str(out)!r}).write_text(os.environ['PATH'])"
    assert server.run_with_server([sys.executable, "-c", code], tmp_path) == 0
    assert out.read_text().split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_base_model_for_the_tiny_profile_writes_a_manifest_without_torch(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"model": {"profile": "tiny"}}))
    manifest = tmp_path / "out" / "base_model.json"
    code = (
        "import sys; from flows.cli import main; "
        f"rc = main(['--params', {str(params)!r}, 'base_model', '--manifest', {str(manifest)!r}]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    # a fresh interpreter: this test process has torch imported already
    assert os.system(f'{sys.executable} -c "{code}"') == 0
    assert json.loads(manifest.read_text()) == {"profile": "tiny"}


def test_base_model_with_a_bad_parameter_file_fails_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"model": {"profile": "huge"}}))
    manifest = tmp_path / "base_model.json"
    assert cli.main(["--params", str(params), "base_model", "--manifest", str(manifest)]) == 1
    assert str(params) in capsys.readouterr().err
    assert not manifest.exists()
