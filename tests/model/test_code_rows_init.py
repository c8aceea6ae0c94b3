"""`model.code_rows_init: text`: a model trained from scratch starts its identifier tokens'
rows (input and, tied, output) from the text of the items that hold each code, read as
residual quantisation reads codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from components.config import ModelConfig
from tests.model.test_item_inputs import N_ITEMS, TINY, _rec

pytestmark = pytest.mark.usefixtures("one_thread")


def _weight(rec) -> torch.Tensor:
    return rec.model.get_input_embeddings().weight


def _code_rows(rec, level: int) -> torch.Tensor:
    return _weight(rec).detach()[rec.code_token_ids[level]].clone()


def _components(features: np.ndarray) -> torch.Tensor:
    """The features' principal components, signs fixed as the model fixes them."""
    x = torch.as_tensor(features, dtype=torch.float64)
    x = x - x.mean(dim=0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = int((s > s[0] * 1e-9).sum())
    comps = x @ vh[:k].T
    return comps * torch.sign(comps.gather(0, comps.abs().argmax(dim=0, keepdim=True)))


def _map(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """12 items in 3 text clusters (code 0..2 at the first level), the second level a
    sub-cluster inside each; the third level a collision index. Codes 3 (first level) and
    2-3 (the others) are held by no item."""
    rng = np.random.default_rng(seed)
    dim = 24
    centres = rng.normal(size=(3, dim)) * 3.0
    subs = rng.normal(size=(2, dim)) * 1.0
    first = np.arange(N_ITEMS) % 3
    second = (np.arange(N_ITEMS) // 3) % 2
    third = np.arange(N_ITEMS) // 6
    features = centres[first] + subs[second] + rng.normal(size=(N_ITEMS, dim)) * 0.1
    return features.astype(np.float32), np.stack([first, second, third], axis=1)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_code_rows_are_their_items_residual_means_at_each_levels_random_spread(
    arch: str,
) -> None:
    rec = _rec(arch=arch)
    features, codes = _map()
    before = _weight(rec).detach().clone()
    random_rows = [_code_rows(rec, lvl) for lvl in range(3)]
    rec.init_code_rows(features, codes)

    comps = _components(features)
    k = comps.shape[1]
    assert 0 < k < before.shape[1]
    left = comps.clone()
    for lvl in range(3):
        if lvl:  # take away the mean of the items sharing the earlier codes
            keys = [tuple(c) for c in codes[:, :lvl]]
            for key in set(keys):
                rows = [i for i, other in enumerate(keys) if other == key]
                left[rows] -= left[rows].mean(dim=0)
        held = np.unique(codes[:, lvl]).tolist()  # 0..2, 0..1 and 0..1
        expected = torch.stack([left[codes[:, lvl] == c].mean(dim=0) for c in held])
        rows = _code_rows(rec, lvl).double()
        # the held codes' leading columns: the expected means, up to one scale per level
        scale = (rows[held, :k] * expected).sum() / (expected * expected).sum()
        assert scale > 0
        torch.testing.assert_close(rows[held, :k], scale * expected, rtol=1e-4, atol=1e-6)
        # at that level's random spread, the rest of each row as initialised
        assert rows[held, :k].std().item() == pytest.approx(
            random_rows[lvl][held, :k].double().std().item()
        )
        torch.testing.assert_close(rows[held, k:], random_rows[lvl][held, k:].double())
        # the codes no item holds stay random
        free = [c for c in range(4) if c not in held]
        torch.testing.assert_close(rows[free], random_rows[lvl][free].double())

    # nothing but the held codes' rows changes (item rows, text tokens), and the output
    # head (tied) reads the same rows
    changed = (_weight(rec).detach() != before).any(dim=1).nonzero().flatten()
    held = torch.cat([rec.code_token_ids[lvl][np.unique(codes[:, lvl])] for lvl in range(3)])
    assert set(changed.tolist()) <= set(held.tolist())
    if arch == "llama":
        assert rec.model.get_output_embeddings().weight.data_ptr() == _weight(rec).data_ptr()


def test_first_level_rows_keep_the_text_clusters_apart_and_the_start_is_deterministic() -> None:
    features, codes = _map(seed=3)
    a, b = _rec(), _rec()
    a.init_code_rows(features, codes)
    b.init_code_rows(features, codes)
    for lvl in range(3):
        torch.testing.assert_close(_code_rows(a, lvl), _code_rows(b, lvl), rtol=0, atol=0)
    # the three first-level codes: as far apart as their clusters' centres
    k = _components(features).shape[1]  # the leading columns; the rest stays random
    rows = _code_rows(a, 0)[:3, :k].double()
    centres = torch.stack(
        [torch.as_tensor(features[codes[:, 0] == c], dtype=torch.float64).mean(0) for c in range(3)]
    )
    d_rows, d_centres = torch.pdist(rows), torch.pdist(centres)
    torch.testing.assert_close(
        d_rows / d_rows.max(), d_centres / d_centres.max(), rtol=1e-3, atol=0
    )
    # item rows are another setting's: untouched here
    fresh = _rec()
    base, n = fresh.item_input_base, fresh.item_inputs
    torch.testing.assert_close(
        _weight(a).detach()[base : base + n], _weight(fresh).detach()[base : base + n]
    )


def test_bad_inputs_are_refused_and_uninformative_ones_change_nothing() -> None:
    rec = _rec()
    features, codes = _map()
    start = _weight(rec).detach().clone()
    with pytest.raises(ValueError, match="3 levels per item"):
        rec.init_code_rows(features, codes[:, :2])
    with pytest.raises(ValueError, match=f"one row per item \\({N_ITEMS}\\)"):
        rec.init_code_rows(features[:-1], codes)
    bad = features.copy()
    bad[5, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        rec.init_code_rows(bad, codes)
    rec.init_code_rows(np.ones_like(features), codes)  # identical texts
    # every item under one code at every level: its items' mean is nothing to tell apart
    rec.init_code_rows(features, np.zeros_like(codes))
    torch.testing.assert_close(_weight(rec).detach(), start, rtol=0, atol=0)


def test_code_rows_start_from_text_only_when_asked_and_only_in_the_tiny_profile() -> None:
    assert ModelConfig(**TINY).code_rows_init == "random"
    assert not ModelConfig(**TINY).codes_from_text
    assert ModelConfig(**TINY, code_rows_init="text").codes_from_text
    # models without item rows have identifier rows all the same
    assert ModelConfig(**TINY, code_rows_init="text", item_inputs=False).codes_from_text
    assert not ModelConfig(profile="pretrained", code_rows_init="text").codes_from_text
    with pytest.raises(ValidationError, match="code_rows_init"):
        ModelConfig(**TINY, code_rows_init="texts")
