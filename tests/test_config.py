"""params.yaml is the single source of truth and matches the code's defaults; typos are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import ConfigError, Params, load_params

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_the_defaults() -> None:
    assert load_params(REPO / "params.yaml") == Params()


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epohcs: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epohcs"):
        load_params(path)


def test_epochs_must_split_into_rounds(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 5\nsiit:\n  rounds: 2\n")
    with pytest.raises(ConfigError, match="multiple of siit.rounds"):
        load_params(path)


def test_a_stride_beyond_a_history_needs_banded_windows(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  max_history: 20\ntrain:\n  window_stride: 40\n")
    with pytest.raises(ConfigError, match="train.banded"):
        load_params(path)
    path.write_text("data:\n  max_history: 20\ntrain:\n  window_stride: 40\n  banded: true\n")
    assert load_params(path).train.window_stride == 40
