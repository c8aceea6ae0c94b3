"""bench/siit_vs_static.py: variant parsing and the up-front check of every configuration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from components.config import ConfigError

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling `runner`
    try:
        spec = importlib.util.spec_from_file_location("siit_vs_static", BENCH / "siit_vs_static.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_a_variant_keeps_lists_whole(bench) -> None:
    name, sets = bench.parse_variant("late:siit.rounds=1,siit.refine_after=[2,4]")
    assert name == "late"
    assert sets == {"siit": {"rounds": 1, "refine_after": [2, 4]}}


def test_every_configuration_is_checked_before_training(bench) -> None:
    bench.check_configs({}, {"siit": {}}, {"e12": {"train": {"epochs": 12}}})  # all valid
    with pytest.raises(ConfigError) as err:
        bench.check_configs(
            {"train": {"threads": 1}},
            {"siit": {}, "bad": {"siit": {"bogus": 1}}},
            {"e20": {"train": {"epochs": 20}}},
        )
    message = str(err.value)
    assert "bad: siit.bogus" in message  # the variant and the key at fault
    assert "e20:" in message and "multiple of siit.rounds + 1" in message
    assert "siit:" not in message.replace("siit.", "")  # the valid ones are not named
