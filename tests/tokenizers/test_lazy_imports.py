"""Stages that only read and validate token maps do not pay for the tokenizer backends."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_tokenizers_package_leaves_the_heavy_backends_unloaded() -> None:
    code = (
        "import sys, components.tokenizers as t\n"
        "heavy = [m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert t.ItemEncoder.__name__ == 'ItemEncoder'  # still there, loaded on first use\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
