"""Progress bars on a terminal only (components/progress.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from components import progress


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_no_bar_outside_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIIT_PROGRESS", raising=False)
    stream = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", stream)
    items = [1, 2, 3]
    assert progress.progress(items, desc="epoch") is items
    assert stream.getvalue() == ""


def test_a_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIIT_PROGRESS", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    stream = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", stream)
    assert list(progress.progress(range(3), desc="epoch")) == [0, 1, 2]
    assert "epoch" in stream.getvalue()


def test_the_switch_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    monkeypatch.setenv("SIIT_PROGRESS", "0")
    assert not progress.interactive()
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    monkeypatch.setenv("SIIT_PROGRESS", "1")
    assert progress.interactive()


def test_library_bars_are_quiet_in_logs() -> None:
    """A non-interactive process: transformers' and tqdm's bars are off after the call."""
    code = (
        "import os, sys\n"
        "from components.progress import quiet_third_party_bars\n"
        "quiet_third_party_bars()\n"
        "from transformers.utils import logging\n"
        "from tqdm import tqdm\n"
        "for _ in tqdm(range(3), desc='visible?'): pass\n"
        "assert not logging.is_progress_bar_enabled()\n"
        "assert os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'] == 'false'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SIIT_PROGRESS", "TQDM_DISABLE")}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "visible?" not in proc.stderr


@pytest.mark.parametrize("switch", ["1", "0"])
def test_tokenizer_training_and_epochs_show_bars_only_when_asked(
    switch: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The long loops (RQ-VAE epochs, training batches) draw a bar on a terminal
    (SIIT_PROGRESS=1 stands for one here) and write nothing in a log (SIIT_PROGRESS=0)."""
    import numpy as np

    from components.config import TokenizeConfig, TrainConfig
    from components.model.training import Trainer, length_bucketed_batches
    from components.tokenizers.rqvae import fit_rqvae
    from tests.model.test_distributed import BATCH, examples, tiny_llama

    monkeypatch.setenv("SIIT_PROGRESS", switch)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    embeddings = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    cfg = TokenizeConfig(
        levels=2, codebook_size=4, rqvae_epochs=2, rqvae_hidden=[8], rqvae_latent_dim=4
    )
    fit_rqvae(embeddings, cfg)
    data = examples()
    trainer = Trainer(tiny_llama(), TrainConfig(), -(-len(data) // BATCH), 1, precision="fp32")
    trainer.train_epoch(length_bucketed_batches(data, BATCH, 0, np.random.default_rng(0)))
    err = capsys.readouterr().err
    if switch == "1":
        assert "rq-vae" in err and "epoch 1" in err
    else:
        assert err == ""
