"""The side-by-side table `siit show` prints."""

from __future__ import annotations

from components.reporting import format_metrics_table

VALUES = {"recall@5": 0.1, "recall@10": 0.2, "ndcg@5": 0.05, "ndcg@10": 0.075}


def _rows(metrics: dict) -> list[tuple[str, str]]:
    """(model, split) of every row of the table, in order."""
    lines = format_metrics_table(metrics).splitlines()[2:]
    return [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in lines]


def test_rows_are_baselines_then_static_then_siit_whatever_the_file_order() -> None:
    metrics = {  # sorted keys, as metrics.json is written
        "improvement": {**{m: 0.1 for m in VALUES}, "average": 0.1},
        "popularity": {"valid": VALUES, "test": VALUES},
        "sasrec": {"test": VALUES},
        "siit": {"valid": VALUES, "test": VALUES},
        "static": {"valid": VALUES, "test": VALUES},
    }
    assert _rows(metrics) == [
        ("popularity", "valid"),
        ("popularity", "test"),
        ("sasrec", "test"),
        ("static", "valid"),
        ("static", "test"),
        ("siit", "valid"),
        ("siit", "test"),
        ("siit vs static", "test"),
    ]
    assert (
        format_metrics_table(metrics)
        .splitlines()[-1]
        .endswith("| +10.0% | +10.0% | +10.0% | +10.0% |")
    )


def test_the_cross_fitted_validation_sits_between_validation_and_test() -> None:
    metrics = {
        "siit": {"test": VALUES, "valid": VALUES, "valid_cross_fitted": VALUES},
        "static": {"valid": VALUES, "test": VALUES},  # a model report from before: no such row
    }
    assert _rows(metrics) == [
        ("static", "valid"),
        ("static", "test"),
        ("siit", "valid"),
        ("siit", "valid_cross_fitted"),
        ("siit", "test"),
    ]
