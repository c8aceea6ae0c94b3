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


@pytest.mark.parametrize(
    "refused,accepted,message",
    [
        (  # windows longer than a history are banded ones
            "data:\n  max_history: 20\ntrain:\n  window_stride: 40\n",
            "data:\n  max_history: 20\ntrain:\n  window_stride: 40\n  banded: true\n",
            "train.banded",
        ),
        (  # a per-level softmax has no text targets
            "model:\n  code_softmax: true\ntrain:\n  tasks: {id2item: 1.0}\n",
            "model:\n  code_softmax: true\n",
            "id2item",
        ),
        (  # held-out histories exist only with items held out of training
            "siit:\n  signal: context\n  contexts_from: held_out\ntrain:\n  hold_out_last: 0\n",
            "siit:\n  signal: context\n  contexts_from: held_out\ntrain:\n  hold_out_last: 1\n",
            "hold_out_last > 0",
        ),
        (  # and only the context signals read histories
            "siit:\n  contexts_from: held_out\n",
            "siit:\n  signal: mixed\n  contexts_from: held_out\n",
            "siit.signal context",
        ),
    ],
)
def test_settings_that_need_each_other(
    tmp_path: Path, refused: str, accepted: str, message: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(refused)
    with pytest.raises(ConfigError, match=message):
        load_params(path)
    path.write_text(accepted)
    load_params(path)
