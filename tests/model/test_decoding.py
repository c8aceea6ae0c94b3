"""The constrained decoder: never emits a non-item, and is exact when the beam is wide enough,
for the decoder-only Llama and the T5 encoder-decoder alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from components.model.decoding import (
    CodeLevels,
    PrefixTrie,
    constrained_beam_search,
    sequence_log_probs,
)

LEVELS, K = 3, 4
ARCHS = ["llama", "llama-gqa", "t5"]  # llama-gqa: 2 key/value heads for 4 query heads
pytestmark = pytest.mark.usefixtures("one_thread")
TEXT_VOCAB = 10  # ids 0..9 are "text"; level l code c is token 10 + l*K + c


def code_token_ids() -> list[torch.Tensor]:
    return [torch.arange(TEXT_VOCAB + lvl * K, TEXT_VOCAB + (lvl + 1) * K) for lvl in range(LEVELS)]


def tiny_lm(seed: int = 0, arch: str = "llama") -> LlamaForCausalLM | T5ForConditionalGeneration:
    if arch == "t5":
        return tiny_t5(seed)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=TEXT_VOCAB + LEVELS * K,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2 if arch == "llama-gqa" else 4,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharpen the distribution so ties are impossible
        model.lm_head.weight.mul_(20)
    return model


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    """The T5 of `model.architecture: t5` in miniature; the padding token (0) starts the decoder."""
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=TEXT_VOCAB + LEVELS * K,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # sharpen the distribution (embeddings and head are tied)
        model.shared.weight.mul_(4)
    return model


def item_codes(n_items: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    flat = rng.choice(K**LEVELS, n_items, replace=False)
    return np.stack([flat // K**2, (flat // K) % K, flat % K], axis=1)


def _picked(logits: torch.Tensor, tokens: torch.Tensor, per_level: bool) -> torch.Tensor:
    """Each identifier token's log-probability from logits [n, LEVELS, vocabulary]: over the
    whole vocabulary, or (`model.code_softmax`) over its level's codes only."""
    if not per_level:
        return torch.log_softmax(logits.float(), -1).gather(2, tokens[..., None])[..., 0]
    ids = code_token_ids()
    return torch.stack(
        [
            torch.log_softmax(logits[:, lvl, ids[lvl]].float(), -1).gather(
                1, (tokens[:, lvl : lvl + 1] - ids[lvl][0])
            )[:, 0]
            for lvl in range(LEVELS)
        ],
        1,
    )


def brute_force_scores(model, prompt: list[int], codes: np.ndarray) -> np.ndarray:
    """Exact log-probability of every item's identifier after the prompt (teacher forcing: one
    full forward per identifier, no cache, no padding); per level when the model has a
    per-level softmax (`siit_code_levels`)."""
    per_level = getattr(model, "siit_code_levels", None) is not None
    ids = code_token_ids()
    tokens = torch.stack([ids[lvl][torch.as_tensor(codes[:, lvl])] for lvl in range(LEVELS)], dim=1)
    if model.config.is_encoder_decoder:  # the prompt to the encoder, the identifier decoded
        start = torch.full((len(codes), 1), model.config.decoder_start_token_id)
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor(prompt).repeat(len(codes), 1),
                decoder_input_ids=torch.cat([start, tokens[:, :-1]], 1),
            ).logits
        return _picked(logits, tokens, per_level).sum(1).numpy()
    seqs = torch.cat([torch.tensor(prompt).repeat(len(codes), 1), tokens], dim=1)
    with torch.no_grad():
        logits = model(input_ids=seqs).logits
    start = len(prompt) - 1
    return _picked(logits[:, start : start + LEVELS], tokens, per_level).sum(1).numpy()


def test_trie_tables_map_identifiers_to_items() -> None:
    codes = np.array([[0, 1, 2], [0, 1, 3], [3, 0, 0]])
    trie = PrefixTrie.from_codes(codes, (K, K, K))
    for item, (a, b, c) in enumerate(codes):
        node1 = int(trie.children[0][0, a])
        node2 = int(trie.children[1][node1, b])
        assert int(trie.children[2][node2, c]) == item
    assert int((trie.children[0] >= 0).sum()) == 2  # two distinct first codes
    with pytest.raises(ValueError, match="not a bijection"):
        PrefixTrie.from_codes(np.array([[0, 1, 2], [0, 1, 2]]), (K, K, K))


@pytest.mark.parametrize("arch", ARCHS)
def test_wide_beam_returns_the_exact_top_k_with_exclusions(arch: str) -> None:
    model, codes = tiny_lm(arch=arch), item_codes(25)
    trie = PrefixTrie.from_codes(codes, (K,) * LEVELS)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1]]  # different lengths: left padding is exercised
    seen = [np.array([0, 3]), np.array([], dtype=np.int64), np.array([5])]
    exclude = torch.zeros((3, len(codes)), dtype=torch.bool)
    for row, items in enumerate(seen):
        exclude[row, items] = True
    res = constrained_beam_search(
        model, prompts, code_token_ids(), trie, beam_size=len(codes), top_k=10, exclude=exclude
    )
    for row, prompt in enumerate(prompts):
        scores = brute_force_scores(model, prompt, codes)
        scores[seen[row]] = -np.inf
        expected = np.argsort(-scores, kind="stable")[:10]
        assert res.leaves[row].tolist() == expected.tolist()
        np.testing.assert_allclose(res.scores[row].numpy(), scores[expected], rtol=1e-4, atol=1e-4)
        assert (res.codes[row].numpy() == codes[expected]).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_narrow_beam_only_emits_existing_unseen_items(arch: str) -> None:
    model, codes = tiny_lm(1, arch), item_codes(40, seed=1)
    trie = PrefixTrie.from_codes(codes, (K,) * LEVELS)
    exclude = torch.zeros((2, len(codes)), dtype=torch.bool)
    exclude[:, :20] = True
    res = constrained_beam_search(
        model, [[1, 2], [3]], code_token_ids(), trie, beam_size=3, top_k=3, exclude=exclude
    )
    leaves = res.leaves.numpy()
    assert ((leaves >= 20) | (leaves == -1)).all()
    for row in range(2):
        for item, code in zip(leaves[row], res.codes[row].numpy(), strict=True):
            if item >= 0:
                assert (codes[item] == code).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_fewer_items_than_k_pads_with_minus_one(arch: str) -> None:
    model, codes = tiny_lm(arch=arch), item_codes(4)
    trie = PrefixTrie.from_codes(codes, (K,) * LEVELS)
    res = constrained_beam_search(model, [[1]], code_token_ids(), trie, beam_size=10, top_k=6)
    leaves = res.leaves[0].tolist()
    assert sorted(x for x in leaves if x >= 0) == [0, 1, 2, 3]
    assert leaves[4:] == [-1, -1]
    assert torch.isinf(res.scores[0, 4:]).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_equals_one_at_a_time(arch: str) -> None:
    model, codes = tiny_lm(2, arch), item_codes(30, seed=2)
    trie = PrefixTrie.from_codes(codes, (K,) * LEVELS)
    prompts = [[1, 2, 3, 4], [5], [6, 7]]
    batched = constrained_beam_search(model, prompts, code_token_ids(), trie, beam_size=5, top_k=5)
    for row, prompt in enumerate(prompts):
        single = constrained_beam_search(
            model, [prompt], code_token_ids(), trie, beam_size=5, top_k=5
        )
        assert single.leaves[0].tolist() == batched.leaves[row].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_unconstrained_trie_allows_any_well_formed_identifier(arch: str) -> None:
    model = tiny_lm(3, arch)
    trie = PrefixTrie.unconstrained((K,) * LEVELS)
    res = constrained_beam_search(
        model, [[1, 2]], code_token_ids(), trie, beam_size=K**LEVELS, top_k=5
    )
    all_codes = np.array([[a, b, c] for a in range(K) for b in range(K) for c in range(K)])
    scores = brute_force_scores(model, [1, 2], all_codes)
    expected = all_codes[np.argsort(-scores, kind="stable")[:5]]
    assert (res.codes[0].numpy() == expected).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_free_trie_allows_every_identifier_no_item_holds(arch: str) -> None:
    """`PrefixTrie.free`: the search's top 5 over every identifier but the held ones, in the
    brute force's order; the trie walks to a leaf exactly for the identifiers not held."""
    model = tiny_lm(3, arch)
    all_codes = np.array([[a, b, c] for a in range(K) for b in range(K) for c in range(K)])
    scores = brute_force_scores(model, [1, 2], all_codes)
    best = np.argsort(-scores, kind="stable")
    held = all_codes[np.r_[best[:4], best[10:20]]]  # the four favourites among them
    trie = PrefixTrie.free(held, (K,) * LEVELS)
    taken = {tuple(c) for c in held}
    for code in all_codes:
        node = 0
        for lvl, c in enumerate(code):
            node = int(trie.children[lvl][node, c])
            if node < 0:
                break
        assert (node >= 0) == (tuple(code) not in taken)
    res = constrained_beam_search(
        model, [[1, 2]], code_token_ids(), trie, beam_size=K**LEVELS, top_k=5
    )
    expected = [c for c in all_codes[best] if tuple(c) not in taken][:5]
    assert (res.codes[0].numpy() == np.array(expected)).all()


@pytest.mark.parametrize("beam", [10, 12])
@pytest.mark.parametrize("arch", ARCHS)
def test_user_who_has_seen_almost_everything_still_gets_k_items(beam: int, arch: str) -> None:
    """All-seen prefixes are pruned at every level, so a narrow beam cannot run dry."""
    model, codes = tiny_lm(4, arch), item_codes(K**LEVELS, seed=4)  # every identifier is an item
    trie = PrefixTrie.from_codes(codes, (K,) * LEVELS)
    rng = np.random.default_rng(0)
    unseen = rng.choice(len(codes), 11, replace=False)
    exclude = torch.ones((1, len(codes)), dtype=torch.bool)
    exclude[0, unseen] = False
    res = constrained_beam_search(
        model, [[1, 2, 3]], code_token_ids(), trie, beam_size=beam, top_k=10, exclude=exclude
    )
    leaves = res.leaves[0].tolist()
    assert len(set(leaves)) == 10 and set(leaves) <= set(unseen.tolist())
    assert torch.isfinite(res.scores).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_without_pruning_the_same_narrow_beam_would_run_dry(arch: str) -> None:
    """The case above is not vacuous: masking the last level only returns fewer than k."""
    model, codes = tiny_lm(4, arch), item_codes(K**LEVELS, seed=4)
    trie = PrefixTrie.from_codes(codes, (K,) * LEVELS)
    unseen = np.random.default_rng(0).choice(len(codes), 11, replace=False)
    open_all = PrefixTrie(trie.children, ())  # no item->node maps: only the leaves are masked
    mask = torch.ones(len(codes), dtype=torch.bool)
    mask[unseen] = False
    res = constrained_beam_search(
        model, [[1, 2, 3]], code_token_ids(), open_all, beam_size=10, top_k=10
    )
    leaves = [x for x in res.leaves[0].tolist() if x >= 0 and not mask[x]]
    assert len(leaves) < 10


@pytest.mark.parametrize("arch", ARCHS)
def test_grouped_search_scores_the_weighted_sum_over_a_groups_prompts(arch: str) -> None:
    model = tiny_lm(5, arch)
    trie = PrefixTrie.unconstrained((K,) * LEVELS)
    prompts = [[1, 2], [3, 4, 5], [6], [7, 8]]
    groups = torch.tensor([0, 0, 0, 1])
    weights = torch.tensor([0.5, 0.25, 0.25, 1.0])
    res = constrained_beam_search(
        model,
        prompts,
        code_token_ids(),
        trie,
        beam_size=K**LEVELS,
        top_k=5,
        groups=groups,
        weights=weights,
    )
    all_codes = np.array([[a, b, c] for a in range(K) for b in range(K) for c in range(K)])
    per_prompt = np.stack([brute_force_scores(model, p, all_codes) for p in prompts])
    for g in range(2):
        mixed = (weights.numpy()[:, None] * per_prompt)[groups.numpy() == g].sum(0)
        expected = np.argsort(-mixed, kind="stable")[:5]
        assert (res.codes[g].numpy() == all_codes[expected]).all()
        np.testing.assert_allclose(res.scores[g].numpy(), mixed[expected], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_fixed_prefix_is_kept_and_the_rest_searched_exactly(arch: str) -> None:
    model = tiny_lm(6, arch)
    trie = PrefixTrie.unconstrained((K,) * LEVELS)
    prefix = torch.tensor([[2], [0]])
    res = constrained_beam_search(
        model,
        [[1, 2], [3]],
        code_token_ids(),
        trie,
        beam_size=K**LEVELS,
        top_k=4,
        fixed_prefix=prefix,
    )
    all_codes = np.array([[a, b, c] for a in range(K) for b in range(K) for c in range(K)])
    for row, prompt in enumerate([[1, 2], [3]]):
        scores = brute_force_scores(model, prompt, all_codes)
        scores[all_codes[:, 0] != int(prefix[row, 0])] = -np.inf
        expected = all_codes[np.argsort(-scores, kind="stable")[:4]]
        assert (res.codes[row].numpy() == expected).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_prefix_bias_is_summed_along_the_path_and_ranks_the_final_identifiers(
    arch: str,
) -> None:
    """With a beam wide enough to be exact, the ranking is log-probability plus the sum of the
    bias of every code given its prefix; the returned scores stay log-probabilities."""
    model = tiny_lm(3, arch)
    trie = PrefixTrie.unconstrained((K,) * LEVELS)
    table = torch.randn((LEVELS, K, K), generator=torch.Generator().manual_seed(0))

    def bias(level: int, prefix: torch.Tensor) -> torch.Tensor:  # depends on the last code
        last = prefix[..., -1] if level else torch.zeros(prefix.shape[:-1], dtype=torch.long)
        return 3.0 * table[level][last]

    prompts = [[1, 2], [3, 4, 5]]
    res = constrained_beam_search(
        model, prompts, code_token_ids(), trie, beam_size=K**LEVELS, top_k=6, prefix_bias=bias
    )
    all_codes = np.array([[a, b, c] for a in range(K) for b in range(K) for c in range(K)])
    t = 3.0 * table.numpy()
    path = t[0, 0, all_codes[:, 0]] + t[1, all_codes[:, 0], all_codes[:, 1]]
    path = path + t[2, all_codes[:, 1], all_codes[:, 2]]
    for row, prompt in enumerate(prompts):
        logp = brute_force_scores(model, prompt, all_codes)
        expected = np.argsort(-(logp + path), kind="stable")[:6]
        assert (res.codes[row].numpy() == all_codes[expected]).all()
        np.testing.assert_allclose(res.scores[row].numpy(), logp[expected], rtol=1e-4, atol=1e-4)
        assert not (res.codes[row].numpy() == all_codes[np.argsort(-logp)[:6]]).all()


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("arch", ["llama", "llama-gqa"])
def test_shared_prompt_cache_matches_transformers_cache(arch: str, lora: bool) -> None:
    """The beams-share-the-prompt search gives the reference path's results: same items and
    codes, scores to float rounding; padded prompts, exclusions, groups and LoRA adapters."""
    model, codes = tiny_lm(7, arch), item_codes(50, seed=7)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():  # non-zero adapters, so they change the numbers
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
        model.eval()
    trie = PrefixTrie.from_codes(codes, (K,) * LEVELS)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1], [2], [3, 3, 3, 3]]
    exclude = torch.zeros((3, len(codes)), dtype=torch.bool)
    exclude[0, :10] = True
    exclude[2, 30:] = True
    kwargs = dict(
        beam_size=6,
        top_k=5,
        exclude=exclude,
        groups=torch.tensor([0, 1, 1, 2, 2]),
        weights=torch.tensor([1.0, 0.5, 0.5, 0.3, 0.7]),
    )
    ours = constrained_beam_search(model, prompts, code_token_ids(), trie, **kwargs)
    ref = constrained_beam_search(
        model, prompts, code_token_ids(), trie, shared_prompt=False, **kwargs
    )
    assert ours.leaves.tolist() == ref.leaves.tolist()
    assert (ours.codes == ref.codes).all()
    np.testing.assert_allclose(ours.scores.numpy(), ref.scores.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_given_continuations_are_scored_like_teacher_forcing(arch: str, shared: bool) -> None:
    """`score_tokens` (an item's current identifier, in refinement) gets the brute-force
    log-probability, from the search's own prompt pass or from `sequence_log_probs`."""
    model, codes = tiny_lm(8, arch), item_codes(20, seed=8)
    trie = PrefixTrie.from_codes(codes, (K,) * LEVELS)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1]]
    ids = code_token_ids()
    given = codes[[3, 0, 11]]
    tokens = torch.stack([ids[lvl][torch.as_tensor(given[:, lvl])] for lvl in range(LEVELS)], 1)
    res = constrained_beam_search(
        model, prompts, ids, trie, beam_size=4, top_k=3, score_tokens=tokens, shared_prompt=shared
    )
    expected = [
        brute_force_scores(model, p, given[row : row + 1])[0] for row, p in enumerate(prompts)
    ]
    np.testing.assert_allclose(res.given.numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        sequence_log_probs(model, prompts, tokens).numpy(), expected, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_per_level_softmax_is_searched_and_scored_exactly(arch: str, shared: bool) -> None:
    """`model.code_softmax`: each identifier token's log-probability is normalised over its
    level's codes; the wide search returns the exact top-k of that score, and the given
    continuations and `sequence_log_probs` agree with brute force; the ranking is not the
    whole-vocabulary one's."""
    model, codes = tiny_lm(3, arch), item_codes(25, seed=3)
    trie = PrefixTrie.from_codes(codes, (K,) * LEVELS)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1]]
    whole = [brute_force_scores(model, p, codes) for p in prompts]
    model.siit_code_levels = CodeLevels.build(code_token_ids(), TEXT_VOCAB + LEVELS * K)
    ids = code_token_ids()
    given = codes[[3, 0, 11]]
    tokens = torch.stack([ids[lvl][torch.as_tensor(given[:, lvl])] for lvl in range(LEVELS)], 1)
    res = constrained_beam_search(
        model,
        prompts,
        ids,
        trie,
        beam_size=len(codes),
        top_k=10,
        score_tokens=tokens,
        shared_prompt=shared,
    )
    for row, prompt in enumerate(prompts):
        scores = brute_force_scores(model, prompt, codes)
        assert not np.allclose(scores, whole[row], atol=1e-3)
        expected = np.argsort(-scores, kind="stable")[:10]
        assert res.leaves[row].tolist() == expected.tolist()
        np.testing.assert_allclose(res.scores[row].numpy(), scores[expected], rtol=1e-4, atol=1e-4)
    expected = [
        brute_force_scores(model, p, given[row : row + 1])[0] for row, p in enumerate(prompts)
    ]
    np.testing.assert_allclose(res.given.numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        sequence_log_probs(model, prompts, tokens).numpy(), expected, rtol=1e-4, atol=1e-4
    )
