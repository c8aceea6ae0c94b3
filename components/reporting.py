"""Human-readable results: the side-by-side metrics table printed by `make run`."""

from __future__ import annotations

from components.metrics import METRIC_NAMES

MODEL_ORDER = {"popularity": 0, "sasrec": 1, "static": 2, "siit": 3}


def format_metrics_table(metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: one row per (model, split), one column per metric.

    Baselines first, then static, then SIIT (metrics.json is written with sorted keys).
    """
    order = {"popularity": 0, "static": 2, "siit": 3}
    header = "| model | split | " + " | ".join(METRIC_NAMES) + " |"
    lines = [header, "|" + "---|" * (len(METRIC_NAMES) + 2)]
    for model, splits in sorted(metrics.items(), key=lambda kv: (order.get(kv[0], 1), kv[0])):
        if model == "improvement":
            continue
        for split in ("valid", "valid_cross_fitted", "test"):
            if split in splits:
                values = " | ".join(f"{splits[split][m]:.4f}" for m in METRIC_NAMES)
                lines.append(f"| {model} | {split} | {values} |")
    if "improvement" in metrics:
        imp = metrics["improvement"]
        values = " | ".join(f"{100 * imp[m]:+.1f}%" for m in METRIC_NAMES)
        lines.append(f"| siit vs static | test | {values} |")
    return "\n".join(lines)
