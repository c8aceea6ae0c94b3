"""Issue 13, point 2: a parameter file with an unknown key, a wrong type or an out-of-range
value is rejected before any work, naming the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import ConfigError, load_params


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "train:\n  epoch: 6\n",
            "train.epoch: unknown key; did you mean 'epochs'? allowed keys here: epochs,",
        ),
        ("trian:\n  epochs: 6\n", "trian: unknown key; did you mean 'train'?"),
        (
            "data:\n  files:\n    columns: {user: uid}\n",
            "data.files.columns.user: unknown key; did you mean 'user_id'?",
        ),
        (
            "train:\n  epochs: six\n",
            "train.epochs: 'six' is not allowed: Input should be a valid integer, unable to parse "
            "string as an integer; allowed: an integer >= 1",
        ),
        (
            "data:\n  min_sequence_length: 2\n",
            "data.min_sequence_length: 2 is not allowed: Input should be greater than or equal "
            "to 3; allowed: an integer >= 3",
        ),
        (
            "train:\n  lr: -0.1\n",
            "train.lr: -0.1 is not allowed: Input should be greater than 0; allowed: a number > 0",
        ),
        (
            "siit:\n  max_churn: 1.5\n",
            "siit.max_churn: 1.5 is not allowed: Input should be less than or equal to 1; allowed: a number > 0 and <= 1",
        ),
        ("model:\n  dropout: 1\n", "allowed: a number >= 0 and < 1"),
        (
            "siit:\n  assignment: fancy\n",
            "siit.assignment: 'fancy' is not allowed: Input should be 'greedy', 'exact' or 'balanced'; allowed: one of greedy, exact, balanced",
        ),
        ("tokenize:\n  rqvae_hidden: [64, x]\n", "tokenize.rqvae_hidden.1: 'x' is not allowed"),
        (
            "model:\n  trust_remote_code: maybe\n",
            "model.trust_remote_code: 'maybe' is not allowed: Input should be a valid boolean",
        ),
        (
            "model:\n  hidden_size: 130\n",
            "model: model.hidden_size (130) must be divisible by model.num_heads (4)",
        ),
        ("train:\n  epochs: 5\n", "train.epochs (5) must be a multiple of siit.rounds + 1 (3)"),
        (
            "train:\n  epochs: 6\ntrain:\n  lr: 0.1\n",
            "not valid YAML: key 'train' appears twice in the same mapping",
        ),
        ("train: [\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping at the top level"),
    ],
    ids=[
        "unknown-key",
        "unknown-section",
        "unknown-nested-key",
        "wrong-type",
        "below-minimum",
        "not-positive",
        "above-maximum",
        "half-open-range",
        "not-a-choice",
        "list-item",
        "not-a-boolean",
        "cross-field",
        "epochs-vs-rounds",
        "duplicate-key",
        "bad-yaml",
        "not-a-mapping",
    ],
)
def test_bad_parameters_name_the_key_and_what_is_allowed(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert expected in _error(tmp_path, text)


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    message = _error(tmp_path, "train:\n  epochs: 0\n  lr: 0\nsiit:\n  candidates: 0\n")
    assert message.splitlines()[1:] == [
        "  train.epochs: 0 is not allowed: Input should be greater than or equal to 1; allowed: an integer >= 1",
        "  train.lr: 0 is not allowed: Input should be greater than 0; allowed: a number > 0",
        "  siit.candidates: 0 is not allowed: Input should be greater than or equal to 1; allowed: an integer >= 1",
    ]


def test_the_committed_params_file_is_valid() -> None:
    load_params(Path(__file__).parents[2] / "params.yaml")
