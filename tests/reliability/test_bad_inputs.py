"""Issue 13, point 1: every file of the bad-data corpus (tests/data/fixtures/bad/) goes
through the real `siit prepare` and `siit validate` (Prefect flows, Great Expectations) and
gives a non-zero exit with ONE message on stderr naming the file, the column and the
offending rows, no traceback, and the previous good outputs untouched; inputs that only
look odd are accepted. The corpus runs in one subprocess (bad_data_driver.py) to pay the
interpreter start once; test_cli_errors.py runs the `siit` console script itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BAD = Path(__file__).parents[1] / "data" / "fixtures" / "bad"
GOOD = BAD / "_good"
REPO = Path(__file__).parents[2]

# case -> (the stage that refuses it, the fragments its message must contain)
REJECTED: dict[str, tuple[str, list[str]]] = {
    "empty_file": ("prepare", ["interactions.csv: the file is empty"]),
    "header_only": ("prepare", ["interactions.csv: no data rows (only a header)"]),
    "missing_column": (
        "prepare",
        ["interactions.csv: column 'timestamp' not found", "['user_id', 'item_id', 'rating']"],
    ),
    "renamed_column": (
        "prepare",
        ["interactions.csv: column 'user_id' not found", "data.files.columns.user_id", "'userId'"],
    ),
    "wrong_type_rating": (
        "prepare",
        ["interactions.csv: column 'rating': cannot parse as a number", "rows [3]", "['good']"],
    ),
    "nan_timestamp": (
        "validate",
        ["interactions.csv: column 'timestamp': null values", "rows [2]"],
    ),
    "negative_timestamp": (
        "validate",
        ["interactions.csv: column 'timestamp': timestamps negative", "rows [4]", "[-86400]"],
    ),
    "far_future_timestamp": (
        "validate",
        ["interactions.csv: column 'timestamp': timestamps negative", "rows [1]", "[4102444800]"],
    ),
    "millisecond_timestamps": (
        "validate",
        ["interactions.csv: column 'timestamp'", "epoch milliseconds", "1600000000000"],
    ),
    "unknown_items": (
        "validate",
        ["interactions.csv: column 'item_id': item ids not found in", "rows [5]", "['i9']"],
    ),
    "duplicate_rows": (
        "validate",
        [
            "interactions.csv: column 'user_id': duplicate rows",
            "rows [2, 3]",
            "('u1', 'i3', 1600000200)",
        ],
    ),
    "duplicate_item_ids": (
        "validate",
        ["items.csv: column 'item_id': duplicate item ids", "rows [2, 4]", "['i3', 'i3']"],
    ),
    "huge_ids": (
        "validate",
        [
            "interactions.csv: column 'user_id': values longer than 256",
            "rows [7]",
            "(5,000 characters)",
        ],
    ),
    "very_long_line": (
        "validate",
        ["items.csv: column 'title': values longer than 100,000", "rows [2]", "'Alien scraped"],
    ),
    "truncated_gzip": ("prepare", ["interactions.csv.gz: corrupt or truncated gzip file"]),
    "amazon_truncated_gzip": (
        "prepare",
        ["reviews.json.gz: corrupt or truncated gzip file after line"],
    ),
    "all_filtered_by_min_sequence_length": (
        "validate",
        ["interactions.csv: column 'user_id': users with fewer than 3", "rows [0, 1, 2, 3, 4]"],
    ),
    "mixed_date_formats": (
        "prepare",
        [
            "interactions.csv: column 'timestamp': cannot parse",
            "rows [2]",
            "['13/09/2020 12:30']",
            "one format",
        ],
    ),
    "thousands_separators": (
        "prepare",
        ["interactions.csv: column 'timestamp': cannot parse", "rows [6]", "['1,600,000,090']"],
    ),
    "null_strings": ("validate", ["interactions.csv: column 'user_id': null values", "rows [6]"]),
    "empty_row_in_the_middle": ("prepare", ["interactions.csv: empty rows", "rows [3]"]),
    "latin1_bytes": (
        "prepare",
        ["items.csv: line 5 is not UTF-8", "Am\ufffdlie", "save it as UTF-8"],
    ),
    "semicolon_separated": (
        "prepare",
        ["interactions.csv: column 'user_id' not found", "';'-separated"],
    ),
    "unclosed_quote": ("prepare", ["items.csv: line 3", "quote"]),
    "ragged_row": ("prepare", ["interactions.csv: line 6 has 5 fields, the header has 4", "extra"]),
    "repeated_column_name": (
        "prepare",
        ["interactions.csv: the header repeats the column names ['item_id']"],
    ),
    "html_error_page": (
        "prepare",
        ["interactions.csv: column 'user_id' not found", "<!DOCTYPE html>"],
    ),
    "header_repeated_mid_file": (
        "prepare",
        [
            "interactions.csv: column 'rating': cannot parse as a number",
            "rows [5]",
            "['rating']",
            "header line appears again",
        ],
    ),
    "jsonl_broken_line": ("prepare", ["interactions.jsonl: line 4 is not valid JSON", "timestamp"]),
    "parquet_boolean_timestamps": (
        "prepare",
        ["interactions.parquet: column 'timestamp': timestamps of type Boolean are not supported"],
    ),
    "utf16_excel_export": ("prepare", ["interactions.csv: the file is UTF-16", "CSV UTF-8"]),
    "xlsx_saved_as_csv": ("prepare", ["interactions.csv: the file is a zip archive", "xlsx"]),
}
ACCEPTED = [
    "ok_bom_crlf_quoted_commas",
    "ok_trailing_empty_rows",
    "ok_padded_cells_and_null_ratings",
    "ok_date_strings",
]
DEBUG_CASE = "debug:unknown_items"  # the same file with --debug: the traceback is printed
UNEXPECTED_CASE = "unexpected:data_is_a_file"  # an error that is not about the input


def _data_params(case: Path) -> dict:
    files = {p.name.split(".")[0]: p for p in case.iterdir()}
    if "reviews" in files:
        return {
            "source": "amazon",
            "amazon": {"reviews": str(files["reviews"]), "metadata": str(files["meta"])},
        }
    return {
        "source": "files",
        "files": {
            "interactions": str(files.get("interactions", GOOD / "interactions.csv")),
            "items": str(files.get("items", GOOD / "items.csv")),
        },
    }


def test_the_corpus_is_complete() -> None:
    on_disk = {p.name for p in BAD.iterdir() if p.is_dir()} - {"_good"}
    assert on_disk == set(REJECTED) | set(ACCEPTED)


WORKERS = 2  # a Prefect flow run mostly waits on its server: two drivers halve the wall time


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, prefect_env: dict[str, str]) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    cases = {name: {"data": _data_params(BAD / name)} for name in [*REJECTED, *ACCEPTED]}
    cases[DEBUG_CASE] = {**cases["unknown_items"], "argv": ["--debug"]}
    cases[UNEXPECTED_CASE] = {"data": _data_params(GOOD), "data_is_a_file": True}
    env = {**os.environ, **prefect_env, "OMP_NUM_THREADS": "1"}
    env.pop("SIIT_LOG_FILE", None)
    names = list(cases)
    runs = []
    for worker in range(WORKERS):
        spec, out = root / f"spec{worker}.json", root / f"out{worker}.json"
        part = {name: cases[name] for name in names[worker::WORKERS]}
        projects = root / f"projects{worker}"
        spec.write_text(
            json.dumps({"root": str(projects), "good": _data_params(GOOD), "cases": part})
        )
        command = [sys.executable, "-m", "tests.reliability.bad_data_driver", str(spec), str(out)]
        runs.append((subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE), out))
    results: dict = {}
    for proc, out in runs:
        _, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr.decode(errors="replace")[-3000:]
        results.update(json.loads(out.read_text()))
    return results


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_bad_input_is_refused_with_one_clear_message(outcomes: dict, name: str) -> None:
    stage, fragments = REJECTED[name]
    result = outcomes[name]
    last = result["commands"][-1]
    assert (last["stage"], last["code"]) == (stage, 1), last["stderr"]
    err = last["stderr"]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"siit {stage}: error: "), err
    message = err[err.index(f"siit {stage}: error: ") :]
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert f"{name}/" in message or str(GOOD) in message  # the user's path, not data/raw's
    # the cause is stated once: Prefect's own failure reports stay off the console
    first_line = message.splitlines()[0]
    assert err.count(first_line.split(": error: ", 1)[1][:80]) == 1, err
    assert "Traceback" in result["log"]  # ... and the traceback went to logs/siit.log


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_previous_good_outputs_are_untouched(outcomes: dict, name: str) -> None:
    result = outcomes[name]
    before, after = result["before"], result["after"]
    kept = [p for p in before if p.startswith(("data/processed", "reports"))]
    if result["commands"][-1]["stage"] == "prepare":
        kept += [p for p in before if p.startswith("data/raw")]
    assert kept and {p: after.get(p) for p in kept} == {p: before[p] for p in kept}
    assert set(after) == set(before) or result["commands"][-1]["stage"] == "validate"
    assert not [p for p in after if Path(p).name.startswith(".")]  # no temporary leftovers


@pytest.mark.parametrize("name", ACCEPTED)
def test_inputs_that_only_look_odd_are_accepted(outcomes: dict, name: str) -> None:
    commands = outcomes[name]["commands"]
    assert [(c["stage"], c["code"]) for c in commands] == [("prepare", 0), ("validate", 0)], (
        commands[-1]["stderr"]
    )


def test_debug_prints_the_traceback(outcomes: dict) -> None:
    err = outcomes[DEBUG_CASE]["commands"][-1]["stderr"]
    assert "Traceback (most recent call last)" in err
    assert "siit validate: error: data validation failed" in err


def test_an_unexpected_error_is_one_line_too(outcomes: dict) -> None:
    result = outcomes[UNEXPECTED_CASE]
    (command,) = result["commands"]
    assert (command["stage"], command["code"]) == ("prepare", 1)
    err = command["stderr"]
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "error" in x.lower()]
    assert line.startswith("siit prepare: error: ") and "Error: " in line  # the exception type
    assert "traceback in " in line and "logs/siit.log; --debug prints it here" in line
    assert "Traceback (most recent call last)" in result["log"]
