"""bench/decode.py: the trie search against `generate`, and the re-scored search beside them."""

from __future__ import annotations

import sys

import pytest
import torch

ARGS = ["decode.py", "--items", "300", "--users", "6", "--codebook", "8", "--batch-size", "3"]


@pytest.fixture
def decode(bench_script):
    torch.set_num_threads(1)
    return bench_script("decode")


def _table_row(out: str) -> list[str]:
    (row,) = [r for r in out.splitlines() if r.startswith("| 300 |")]
    return [c.strip() for c in row.strip("|").split("|")]


def test_identical_top_k_and_a_timed_rescored_column(decode, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [*ARGS, "--item-weight", "5", "--row-candidates", "0"])
    assert decode.main() == 0  # every user's top-k is generate's
    out = capsys.readouterr().out
    assert "re-scored, item_weight 5 (users/s)" in out
    cells = _table_row(out)
    assert cells[1] == "6/6 users"
    assert float(cells[-1]) > 0  # the re-scored decoder's users/s


def test_weight_zero_leaves_the_rescored_decoder_out(decode, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [*ARGS, "--item-weight", "0"])
    assert decode.main() == 0
    out = capsys.readouterr().out
    assert "re-scored" not in out
    assert len(_table_row(out)) == 6


def test_rescored_decoder_ranks_as_evaluation_does(decode) -> None:
    """The third decoder is `rescored_beam_search` itself: its top-k differs from the beam's
    order only by the item rows' re-ranking of the same shortlist."""
    cfg = decode.load_params(decode.ROOT / "params.yaml").model
    rec = decode.build_model(cfg, 8, torch.device("cpu"), 0, 300)
    codes = decode.random_codes(300, decode.LEVELS, 8, 0)
    builder = rec.prompt_builder(codes)
    prompts = [builder.seqrec_prompt(torch.arange(u, u + 20).numpy()) for u in range(4)]
    beam = decode.trie_decoder(rec, codes, 20, 20)(prompts)[0]
    top, _ = decode.rescored_decoder(rec, codes, 20, 10, 5.0)(prompts)
    for shortlist, got in zip(beam, top, strict=True):
        assert set(got) <= set(shortlist)
    assert (top != beam[:, :10]).any()
    # with row candidates: items outside the beam's shortlist may rank too
    wide, _ = decode.rescored_decoder(rec, codes, 20, 10, 5.0, row_candidates=20)(prompts)
    assert any(not set(got) <= set(shortlist) for shortlist, got in zip(beam, wide, strict=True))
