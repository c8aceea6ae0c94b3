"""Human-readable results: the side-by-side metrics table printed by `make run`."""

from __future__ import annotations

from components.metrics import METRIC_NAMES

MODEL_ORDER = {"popularity": 0, "sasrec": 1, "static": 2, "siit": 3}


def format_metrics_table(metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: one row per (model, split), one column per metric."""
    header = "| model | split | " + " | ".join(METRIC_NAMES) + " |"
    lines = [header, "|" + "---|" * (len(METRIC_NAMES) + 2)]
    for model, splits in metrics.items():
        if model == "improvement":
            continue
        for split in ("valid", "test"):
            if split in splits:
                values = " | ".join(f"{splits[split][m]:.4f}" for m in METRIC_NAMES)
                lines.append(f"| {model} | {split} | {values} |")
    if "improvement" in metrics:
        imp = metrics["improvement"]
        values = " | ".join(f"{100 * imp[m]:+.1f}%" for m in METRIC_NAMES)
        lines.append(f"| siit vs static | test | {values} |")
    return "\n".join(lines)
