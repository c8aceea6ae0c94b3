"""Champion start: the fitted tokenizer encodes new items without a refit; new identifiers never
collide with existing ones (the codebooks grow when a prefix is full); existing items keep
theirs; an incompatible champion is refused with the reason; the registry's champion
downloads with everything a warm start needs."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import ModelConfig, Params, TokenizeConfig
from components.model.recommender import GenerativeRecommender
from components.siit.warm_start import (
    ITEM_ENCODER_DIR,
    MODEL_DIR,
    RECORD_FILE,
    TOKEN_MAP_FILE,
    assign_new_identifiers,
    grow_codebooks,
    incompatibility,
    load_warm_start,
    rows_from_features,
    tokenizer_candidates,
    warm_start_record,
)
from components.tokenizers import ItemEncoder, TokenMap, fit_token_map

TINY_MODEL = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 64,
    "text_vocab_size": 200,
}
SIZES = (4, 4, 4)


def _params(**overrides) -> Params:
    raw = {
        "model": TINY_MODEL,
        "tokenize": {"method": "random", "codebook_size": 4, "levels": 3},
        "siit": {"candidates": 4, "beam_size": 8, "batch_size": 8},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value}
    return Params.model_validate(raw)


def _texts(ids: list[str]) -> list[str]:
    return [f"item {i} about topic {int(i) % 5} words" for i in ids]


def make_champion(root: Path, params: Params, n_items: int = 20) -> Path:
    """A model folder as a training stage writes it (untrained tiny LM, random identifiers)."""
    torch.manual_seed(0)
    ids = [str(i) for i in range(n_items)]
    token_map, encoder = fit_token_map(
        "random", params.tokenize, item_ids=ids, texts=_texts(ids), train_sequences=[]
    )
    rec = GenerativeRecommender.create(
        params.model, token_map.codebook_sizes, _texts(ids), seed=0, n_items=n_items
    )
    rec.save(root / MODEL_DIR)
    token_map.save(root / TOKEN_MAP_FILE)
    encoder.save(root / ITEM_ENCODER_DIR)
    record = warm_start_record(params, "md5-of-data", {"start": "scratch"})
    (root / RECORD_FILE).write_text(json.dumps(record))
    return root


def _no_embeddings(texts, encoder):  # the random tokenizer needs none
    raise AssertionError("embeddings requested")


def _text_embeddings(texts, encoder):
    """Stand-in sentence vectors: one direction per topic word, plus a little per text."""
    topics = np.random.default_rng(7).normal(size=(5, 16))
    return np.stack(
        [
            topics[int(t.split("topic ")[1].split()[0])]
            + np.random.default_rng(zlib.crc32(t.encode())).normal(size=16) * 0.1
            for t in texts
        ]
    ).astype(np.float32)


# the fitted tokenizer ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rqkmeans", "rqvae"])
def test_saved_tokenizer_encodes_items_as_when_it_was_fitted(method: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(48, 16)).astype(np.float32)
    cfg = TokenizeConfig(
        method=method,
        levels=2,
        codebook_size=6,
        rqvae_epochs=3,
        rqvae_hidden=[16],
        rqvae_latent_dim=8,
    )
    ids = [str(i) for i in range(48)]
    token_map, encoder = fit_token_map(
        method, cfg, item_ids=ids, texts=ids, train_sequences=[], embeddings=emb
    )
    encoder.save(tmp_path / "enc")
    loaded = ItemEncoder.load(tmp_path / "enc")
    codes, costs = loaded.encode(ids, emb)
    again, _ = encoder.encode(ids, emb)
    np.testing.assert_array_equal(codes, again)
    assert costs.shape == (48, 6)
    if method == "rqvae":  # nearest-codeword quantisation: the first level is the map's
        np.testing.assert_array_equal(codes[:, 0], token_map.codes[:, 0])
    else:  # capacity-constrained k-means: most items sit in their nearest centroid
        assert (codes[:, 0] == token_map.codes[:, 0]).mean() > 0.5
    with pytest.raises(ValueError, match="dimensions"):
        loaded.encode(ids[:2], emb[:2, :8])


def test_cid_has_no_tokenizer_and_random_is_deterministic() -> None:
    ids = [str(i) for i in range(10)]
    cfg = TokenizeConfig(method="cid", levels=2, codebook_size=4)
    seqs = [np.arange(10), np.arange(10)[::-1]]
    assert fit_token_map("cid", cfg, item_ids=ids, texts=ids, train_sequences=seqs)[1] is None
    enc = ItemEncoder.random(TokenizeConfig(method="random", levels=3, codebook_size=4))
    a, _ = enc.encode(["x", "y"])
    b, _ = enc.encode(["y", "x"])
    np.testing.assert_array_equal(a, b[::-1])


# collision-free assignment ------------------------------------------------------------------


def test_new_identifiers_avoid_existing_ones_and_report_collisions() -> None:
    existing = np.array([[0, 0, 0], [0, 0, 1], [1, 1, 1]])
    # item 0 wants an existing identifier; items 1 and 2 want the same free one
    enc_codes = np.array([[0, 0, 0], [2, 2, 2], [2, 2, 2], [3, 3, 3]])
    costs = np.abs(np.arange(4)[None, :] - enc_codes[:, -1:]).astype(float)

    class Fixed(ItemEncoder):
        def encode(self, item_ids, embeddings=None):
            return enc_codes, costs

    enc = Fixed("rqkmeans", SIZES, "x", 0)
    cand, scores = tokenizer_candidates(enc, list("abcd"), None, SIZES)
    assert cand.shape == (4, 4, 3)
    np.testing.assert_array_equal(cand[:, 0], enc_codes)  # the encoded code is tried first
    new, sizes, stats = assign_new_identifiers(existing, cand, scores, SIZES)
    assert sizes == SIZES
    everything = [tuple(c) for c in np.concatenate([existing, new]).tolist()]
    assert len(set(everything)) == len(everything)
    np.testing.assert_array_equal(new[:, :-1], enc_codes[:, :-1])  # prefixes kept
    assert tuple(new[3]) == (3, 3, 3)
    assert stats["count"] == 4
    assert stats["collision_rate_before"] == pytest.approx(3 / 4)
    assert stats["moved"] == 2 and stats["grown_codes"] == 0


def test_a_full_prefix_grows_the_last_level() -> None:
    sizes = (2, 2)
    existing = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])  # every identifier is taken
    cand = np.array([[[1, 1], [1, 0]], [[1, 0], [1, 1]]])
    scores = np.array([[-1.0, -2.0], [-1.0, -2.0]])
    new, grown, stats = assign_new_identifiers(existing, cand, scores, sizes)
    assert grown == (2, 4)
    assert [tuple(c) for c in new.tolist()] == [(1, 2), (1, 3)]
    assert stats["grown_codes"] == 2 and stats["collision_rate_before"] == 1.0


def test_growing_the_codebooks_adds_rows_and_keeps_the_old_ones() -> None:
    cfg = ModelConfig(**TINY_MODEL, item_inputs=False)  # with them: the test below
    rec = GenerativeRecommender.create(cfg, (2, 2), ["a b", "c d"], seed=0)
    before = rec.model.get_input_embeddings().weight.detach().clone()
    grown = grow_codebooks(rec, (2, 3))
    weight = grown.model.get_input_embeddings().weight
    assert weight.shape[0] == before.shape[0] + 1
    torch.testing.assert_close(weight[: before.shape[0]], before)
    new_row = weight[int(grown.code_token_ids[1][2])]
    torch.testing.assert_close(new_row, before[rec.code_token_ids[1]].mean(0))
    assert grown.item_tokens(np.array([[1, 2]])).shape == (1, 2)
    out = grown.model(input_ids=torch.tensor([[int(grown.code_token_ids[1][2])]]))
    assert out.logits.shape[-1] == weight.shape[0]


def test_growing_the_codebooks_keeps_each_items_input_row() -> None:
    cfg = ModelConfig(**TINY_MODEL, item_inputs=True, item_inputs_in_head=False)
    rec = GenerativeRecommender.create(cfg, (2, 2), ["a b", "c d", "e f"], seed=0, n_items=3)
    rows = rec.model.get_input_embeddings().weight[rec.item_input_base :].detach().clone()
    grown = grow_codebooks(rec, (2, 4))
    weight = grown.model.get_input_embeddings().weight
    assert grown.item_input_base == len(grown.tokenizer) == rec.item_input_base + 2
    assert weight.shape[0] == grown.item_input_base + 3
    torch.testing.assert_close(weight[grown.item_input_base :], rows)
    assert grown.input_tokens(np.array([[0, 3], [1, 2], [1, 0]]))[:, -1].tolist() == [
        grown.item_input_base + i for i in range(3)
    ]
    head = grown.model.get_output_embeddings()  # the softmax stops before the moved rows
    assert head.size == grown.item_input_base and head.weight is weight


# loading a champion -------------------------------------------------------------------------


@pytest.mark.parametrize("rows_init", ["random", "text"])
def test_item_input_rows_follow_their_items_into_the_new_catalogue(
    rows_init: str, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    params = _params(
        model={"item_inputs": True, "item_inputs_in_head": False, "item_rows_init": rows_init}
    )
    champion = make_champion(tmp_path / "champion", params)
    old_rec = GenerativeRecommender.load(champion / MODEL_DIR, device=torch.device("cpu"))
    old_ids = list(TokenMap.load(champion / TOKEN_MAP_FILE).item_ids)
    old_rows = old_rec.model.get_input_embeddings().weight[old_rec.item_input_base :].detach()
    ids = sorted([str(i) for i in range(2, 26)], key=int)  # 0, 1 dropped; 20..25 new
    asked: list[tuple[list[str], str]] = []

    def embed(texts, encoder):
        asked.append((list(texts), encoder))
        return _text_embeddings(texts, encoder)

    warm = load_warm_start(champion, params, ids, _texts(ids), embed)
    rec = warm.rec
    assert rec.item_inputs == len(ids)
    rows = rec.model.get_input_embeddings().weight[rec.item_input_base :].detach()
    assert rows.shape[0] == len(ids)
    new = [r for r, item in enumerate(ids) if item not in old_ids]
    if rows_init == "text":  # new rows predicted from the known items' text and rows
        assert asked == [(_texts(ids), params.tokenize.encoder)]
        features = _text_embeddings(_texts(ids), None)
        known = [r for r in range(len(ids)) if r not in new]
        predicted = rows_from_features(
            old_rows[[old_ids.index(ids[r]) for r in known]], features[known], features[new]
        )
        assert warm.stats["new_rows_from"] == "text"
    else:
        assert asked == [] and warm.stats["new_rows_from"] == "mean"
        predicted = old_rows.mean(0).expand(len(new), -1)
    for r, item in enumerate(ids):
        want = old_rows[old_ids.index(item)] if item in old_ids else predicted[new.index(r)]
        torch.testing.assert_close(rows[r], want)
    prompt = rec.prompt_builder(warm.token_map.codes).seqrec_prompt(np.arange(len(ids)))
    logits = rec.model(input_ids=torch.tensor([prompt])).logits
    assert logits.shape[1:] == (len(prompt), rec.item_input_base)  # no item row in the head
    # a champion without item inputs does not fit a run with them, and the reason says so
    plain = make_champion(tmp_path / "plain", _params(model={"item_inputs": False}))
    assert "model.item_inputs" in incompatibility(plain, params, ids)
    # nor one whose softmax covered the item rows (set so, or saved before the setting)
    legacy = make_champion(tmp_path / "legacy", _params(model={"item_inputs_in_head": True}))
    assert "model.item_inputs_in_head" in incompatibility(legacy, params, ids)
    record = json.loads((champion / RECORD_FILE).read_text())
    del record["compatibility"]["model"]["item_inputs_in_head"]
    (champion / RECORD_FILE).write_text(json.dumps(record))
    assert "model.item_inputs_in_head" in incompatibility(champion, params, ids)
    as_before = _params(model={"item_inputs": True, "item_inputs_in_head": True})
    assert incompatibility(champion, as_before, ids) is None


def test_true_and_training_continue_each_other(tmp_path: Path) -> None:
    """`item_inputs_in_head` `true` and `training` train alike (the rows in the training
    softmax) and differ only in decoding: a champion of one continues a run of the other, and
    the continued model decodes as the run says. `false` trains otherwise."""
    torch.set_num_threads(1)
    ids = [str(i) for i in range(20)]
    for theirs, ours in ((True, "training"), ("training", True)):
        folder = tmp_path / f"champion-{theirs}"
        champion = make_champion(folder, _params(model={"item_inputs_in_head": theirs}))
        params = _params(model={"item_inputs_in_head": ours})
        assert incompatibility(champion, params, ids) is None
        rec = load_warm_start(champion, params, ids, _texts(ids), _no_embeddings).rec
        assert rec.item_inputs_in_head == ours
        rec.model.eval()
        prompt = torch.tensor([rec.prompt_builder(np.zeros((20, 3), int)).seqrec_prompt([1, 2])])
        width = rec.item_input_base + (len(ids) if ours is True else 0)
        assert rec.model(input_ids=prompt).logits.shape[-1] == width
        cut = _params(model={"item_inputs_in_head": False})
        assert "model.item_inputs_in_head" in incompatibility(champion, cut, ids)


@pytest.mark.parametrize("new_items", ["tokenizer", "model"])
def test_existing_items_keep_identifiers_new_items_get_free_ones(
    new_items: str, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    params = _params(tokenize={"new_items": new_items})
    champion = make_champion(tmp_path / "champion", params)
    old = TokenMap.load(champion / TOKEN_MAP_FILE)
    # items 0 and 1 left the catalogue; 20..25 are new (ids sort naturally among the old ones)
    ids = sorted([str(i) for i in range(2, 26)], key=int)
    assert incompatibility(champion, params, ids) is None
    warm = load_warm_start(champion, params, ids, _texts(ids), _text_embeddings)
    codes = warm.token_map.codes
    assert list(warm.token_map.item_ids) == ids
    for row, item in enumerate(ids):
        if int(item) < 20:
            np.testing.assert_array_equal(codes[row], old.codes[old.item_ids.index(item)])
    assert len({tuple(c) for c in codes.tolist()}) == len(ids)
    assert warm.stats["new_count"] == 6
    assert warm.stats["known_items"] == 18 and warm.stats["dropped_items"] == 2
    assert 0.0 <= warm.stats["new_collision_rate_before"] <= 1.0
    assert warm.stats["new_items"] == new_items
    # the model can write every identifier of the new map
    assert warm.rec.item_tokens(codes).shape == (24, 3)


def test_incompatible_champions_are_refused_with_the_reason(tmp_path: Path) -> None:
    params = _params()
    champion = make_champion(tmp_path / "champion", params)
    ids = [str(i) for i in range(20)]
    assert incompatibility(champion, params, ids) is None
    bigger = _params(model={"hidden_size": 64})
    assert "model.hidden_size" in incompatibility(champion, bigger, ids)
    # text rows are one catalogue's: never continued
    text_rows = _params(model={"item_inputs": False, "text_token": True})
    assert "model.text_token" in incompatibility(champion, text_rows, ids)
    # how a scratch model's item and identifier rows started binds nothing: either start
    # continues either
    for rows in ("random", "text"):
        for key in ("item_rows_init", "code_rows_init"):
            assert incompatibility(champion, _params(model={key: rows}), ids) is None
    # a champion saved before text rows existed had none: it continues a run without them
    record = json.loads((champion / RECORD_FILE).read_text())
    del record["compatibility"]["model"]["text_token"]
    (champion / RECORD_FILE).write_text(json.dumps(record))
    assert incompatibility(champion, params, ids) is None
    other_ids = [f"x{i}" for i in range(20)]
    assert incompatibility(champion, params, other_ids).startswith("data fingerprint")
    (champion / RECORD_FILE).unlink()
    assert incompatibility(champion, params, ids).startswith("code version")


def test_the_registered_champion_downloads_with_its_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components import tracking
    from components.config import TrackingConfig
    from components.serving import SERVING_CONFIG, ServingConfig

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t-warm")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.uri)
    monkeypatch.chdir(tmp_path)
    assert tracking.download_champion(cfg, tmp_path / "dl") is None
    params = _params()
    bundle = make_champion(tmp_path / "bundle", params)
    ServingConfig(default_k=5, beam_size=10, max_history=8).write(bundle / SERVING_CONFIG)
    _, _, version = tracking.log_recommender(
        cfg, bundle, run_id=None, registered_model=cfg.registered_model
    )
    tracking.gate_champion(cfg, version, score=0.1, fingerprint="d")
    folder, got = tracking.download_champion(cfg, tmp_path / "dl")
    assert got == version
    ids = [str(i) for i in range(20)]
    assert incompatibility(folder, params, ids) is None
    assert ItemEncoder.load(folder / ITEM_ENCODER_DIR).method == "random"


def test_new_items_rows_are_predicted_from_their_features() -> None:
    """`rows_from_features`: rows that are a linear function of the features (plus noise) are
    recovered for unseen items far better than by the mean row; degenerate inputs fall back."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 24))
    truth = features @ rng.normal(size=(24, 16)) + 0.5
    rows = torch.as_tensor(truth[:250] + rng.normal(size=(250, 16)) * 0.3, dtype=torch.float32)
    got = rows_from_features(rows, features[:250], features[250:])
    assert got.dtype == torch.float32 and got.shape == (50, 16)
    err = (got.double() - torch.as_tensor(truth[250:])).pow(2).mean()
    err_mean = (rows.double().mean(0) - torch.as_tensor(truth[250:])).pow(2).mean()
    assert err < 0.05 * err_mean
    # rows unrelated to the features: shrunk to about the mean row
    noise = torch.as_tensor(rng.normal(size=(250, 16)), dtype=torch.float32)
    flat = rows_from_features(noise, features[:250], features[250:])
    assert (flat - noise.mean(0)).pow(2).mean() < 0.1 * noise.var(0).mean()
    # nothing to fit: the mean row
    same = rows_from_features(rows, np.ones((250, 24)), features[250:])
    torch.testing.assert_close(same, rows.mean(0).expand(50, -1))
    one = rows_from_features(rows[:1], features[:1], features[250:])
    torch.testing.assert_close(one, rows[:1].expand(50, -1))
    with pytest.raises(ValueError, match="do not match"):
        rows_from_features(rows, features[:249], features[250:])
    bad = features[250:].copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        rows_from_features(rows, features[:250], bad)
