"""`model.item_rows_init: text`: a model trained from scratch starts its item rows (input and,
tied, output) from the items' text embeddings, so that items of similar text start close."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from components.config import ModelConfig
from tests.model.test_item_inputs import N_ITEMS, TINY, _rec

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(rec) -> torch.Tensor:
    weight = rec.model.get_input_embeddings().weight.detach()
    return weight[rec.item_input_base : rec.item_input_base + rec.item_inputs].clone()


def _clustered(n_items: int, dim: int = 48, clusters: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 3.0
    return (centres[np.arange(n_items) % clusters] + rng.normal(size=(n_items, dim)) * 0.3).astype(
        np.float32
    )


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_rows_become_the_features_principal_components_at_the_random_rows_spread(
    arch: str,
) -> None:
    rec = _rec(arch=arch)
    weight = rec.model.get_input_embeddings().weight
    before, random_rows = weight.detach().clone(), _rows(rec)
    features = _clustered(N_ITEMS)
    rec.init_item_rows(features)
    rows = _rows(rec).double()

    # only the item rows change, and the output head (tied) reads the same rows
    torch.testing.assert_close(
        weight.detach()[: rec.item_input_base], before[: rec.item_input_base]
    )
    assert rec.model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()
    # 12 items span at most 11 directions: that many leading columns are the components, the
    # rest of each row stays as initialised
    x = torch.as_tensor(features, dtype=torch.float64)
    x = x - x.mean(dim=0)
    k = int(torch.linalg.matrix_rank(x))
    assert 0 < k < rows.shape[1]
    torch.testing.assert_close(rows[:, k:], random_rows[:, k:].double())
    # the same geometry as the centred features' (distances up to one scale)
    gram, target = rows[:, :k] @ rows[:, :k].T, x @ x.T
    scale = (gram * target).sum() / (target * target).sum()
    torch.testing.assert_close(gram, scale * target, rtol=1e-4, atol=1e-8)
    # at the scale the optimiser expects
    assert rows[:, :k].std().item() == pytest.approx(random_rows[:, :k].double().std().item())
    # items of one text cluster start nearest each other
    dist = torch.cdist(rows, rows)
    dist.fill_diagonal_(float("inf"))
    nearest = dist.argmin(dim=1).numpy()
    assert (nearest % 3 == np.arange(N_ITEMS) % 3).all()


def test_the_start_is_deterministic_and_fills_the_width_when_features_are_wide() -> None:
    features = np.random.default_rng(1).normal(size=(N_ITEMS, 400)).astype(np.float32)
    a, b = _rec(), _rec()
    a.init_item_rows(features)
    b.init_item_rows(features)
    torch.testing.assert_close(_rows(a), _rows(b), rtol=0, atol=0)
    # a fresh model of the same seed differs only in the item rows
    fresh = _rec()
    assert not torch.equal(_rows(a), _rows(fresh))
    # each component's sign is fixed: its largest entry is positive
    x = torch.as_tensor(features, dtype=torch.float64)
    k = min(_rows(a).shape[1], int(torch.linalg.matrix_rank(x - x.mean(0))))
    comps = _rows(a)[:, :k]
    top = comps.gather(0, comps.abs().argmax(dim=0, keepdim=True))
    assert (top > 0).all()


def test_bad_features_are_refused_and_change_nothing() -> None:
    rec = _rec()
    start = _rows(rec)
    with pytest.raises(ValueError, match=f"one row per item \\({N_ITEMS}\\)"):
        rec.init_item_rows(np.ones((N_ITEMS - 1, 8)))
    bad = np.ones((N_ITEMS, 8))
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rec.init_item_rows(bad)
    with pytest.raises(ValueError, match="no item rows"):
        _rec(item_inputs=False).init_item_rows(np.ones((N_ITEMS, 8)))
    rec.init_item_rows(np.ones((N_ITEMS, 8)))  # identical texts: nothing tells items apart
    torch.testing.assert_close(_rows(rec), start, rtol=0, atol=0)


def test_only_models_with_item_rows_start_them_from_text() -> None:
    assert ModelConfig(**TINY).item_rows_init == "text" and ModelConfig(**TINY).rows_from_text
    assert not ModelConfig(**TINY, item_rows_init="random").rows_from_text
    # the default is harmless where there are no item rows: they ignore it
    assert not ModelConfig(**TINY, item_inputs=False).rows_from_text
    assert not ModelConfig(profile="pretrained").rows_from_text
    with pytest.raises(ValidationError, match="item_rows_init"):
        ModelConfig(**TINY, item_rows_init="texts")
