"""bench/README.md names every script in bench/, so none is found only by reading the folder."""

from __future__ import annotations

from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_every_bench_script_is_in_the_bench_readme() -> None:
    readme = (BENCH / "README.md").read_text()
    scripts = sorted(p.name for p in BENCH.glob("*.py"))
    assert scripts, "no scripts found in bench/"
    missing = [name for name in scripts if f"`{name}`" not in readme]
    assert not missing, f"bench/README.md does not name: {', '.join(missing)}"
