"""Progress bars in a terminal, silence in logs.

`progress(iterable, ...)` shows a tqdm bar only when stderr is a terminal (or
`SIIT_PROGRESS=1`); in CI, under `dvc repro` with captured output, in a Prefect worker or
with `SIIT_PROGRESS=0` it returns the iterable untouched. `quiet_third_party_bars()` does
the same for the libraries' own bars (transformers' weight loading, Hugging Face hub,
MLflow artifact transfers, any other tqdm) by setting their switches in the environment
before they are imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def interactive() -> bool:
    forced = os.environ.get("SIIT_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str | None = None, unit: str = "it"
) -> Iterable[T] | Iterator[T]:
    """`iterable` wrapped in a tqdm bar on a terminal, unchanged otherwise."""
    if not interactive():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def quiet_third_party_bars() -> None:
    """No library progress bars outside a terminal (the user's environment wins)."""
    if interactive():
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
