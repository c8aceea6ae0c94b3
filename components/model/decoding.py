"""Trie-constrained, batched beam search over item identifiers.

The trie is a list of dense tables, one per level: `children[l][node, code]` is the node
reached at level l+1 (or, at the last level, the item index), -1 where no identifier
continues. Masking with it means the search can only ever emit existing identifiers, and
a whole batch of users x beams advances with a few tensor ops per level, reusing the
prompt's KV cache instead of re-encoding it. An encoder-decoder (t5) encodes each prompt
once; its beams expand the decoder, over the decoder's cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from components.model.head import item_rows


@dataclass(frozen=True)
class PrefixTrie:
    """children[l][node, code]: the node at depth l+1 (the item index at the last level), -1 if none.

    item_nodes[l][item]: the node at depth l+1 that each item lies under (levels 0..L-2), so a
    per-user exclusion mask can be counted per prefix and prefixes with nothing left pruned.
    Empty for the unconstrained trie (no items).
    """

    children: tuple[torch.Tensor, ...]
    item_nodes: tuple[torch.Tensor, ...] = ()

    @property
    def levels(self) -> int:
        return len(self.children)

    @classmethod
    def from_codes(cls, codes: np.ndarray, codebook_sizes: tuple[int, ...]) -> PrefixTrie:
        """Trie of existing identifiers; leaves hold the item index (row of `codes`)."""
        codes = np.asarray(codes, dtype=np.int64)
        n, levels = codes.shape
        node = np.zeros(n, dtype=np.int64)
        n_nodes = 1
        children, item_nodes = [], []
        for lvl, size in enumerate(codebook_sizes):
            table = np.full((n_nodes, size), -1, dtype=np.int32)
            if lvl == levels - 1:
                if len(np.unique(node * size + codes[:, lvl])) != n:
                    raise ValueError("identifiers are not unique: the token map is not a bijection")
                table[node, codes[:, lvl]] = np.arange(n)
            else:
                uniq, node = np.unique(node * size + codes[:, lvl], return_inverse=True)
                table.reshape(-1)[uniq] = np.arange(len(uniq))
                n_nodes = len(uniq)
                item_nodes.append(torch.from_numpy(node.copy()))
            children.append(torch.from_numpy(table))
        return cls(tuple(children), tuple(item_nodes))

    @classmethod
    def unconstrained(cls, codebook_sizes: tuple[int, ...]) -> PrefixTrie:
        """Every well-formed identifier (any code at every level), e.g. for refinement."""
        return cls(tuple(torch.zeros((1, size), dtype=torch.int32) for size in codebook_sizes))

    @classmethod
    def free(cls, codes: np.ndarray, codebook_sizes: tuple[int, ...]) -> PrefixTrie:
        """Every well-formed identifier but those in `codes` (rows of identifiers held), e.g.
        for refinement candidates that no item holds. Depth l has a node per held prefix of
        length l and one shared node under which nothing is held (every code open); the last
        level marks held identifiers -1 and the rest 0. No item leaves (`leaves` are 0)."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, len(codebook_sizes))
        levels = len(codebook_sizes)
        node = np.zeros(len(codes), dtype=np.int64)  # each held identifier's prefix node
        rows, children = 1, []  # depth 0: the root alone; below it, held prefixes + shared
        for lvl, size in enumerate(codebook_sizes):
            keys = node * size + codes[:, lvl]
            if lvl == levels - 1:
                table = np.zeros((rows, size), dtype=np.int32)
                table.reshape(-1)[keys] = -1
            else:
                uniq, node = np.unique(keys, return_inverse=True)
                shared = len(uniq)  # the next depth's node under which nothing is held
                table = np.full((rows, size), shared, dtype=np.int32)
                table.reshape(-1)[uniq] = np.arange(shared)
                rows = shared + 1
            children.append(torch.from_numpy(table))
        return cls(tuple(children))

    def to(self, device: torch.device) -> PrefixTrie:
        return PrefixTrie(
            tuple(t.to(device) for t in self.children), tuple(t.to(device) for t in self.item_nodes)
        )

    def open_nodes(self, exclude: torch.Tensor) -> list[torch.Tensor]:
        """Per level below the root: bool [batch, n_nodes], True where a prefix still holds an
        item that `exclude` (bool [batch, n_items]) does not exclude."""
        if len(self.item_nodes) != self.levels - 1:
            raise ValueError("exclusions need a trie built from item codes (PrefixTrie.from_codes)")
        keep = (~exclude).to(torch.int32)
        out = []
        for lvl, nodes in enumerate(self.item_nodes):
            n_nodes = int(self.children[lvl + 1].shape[0])
            left = torch.zeros(
                (exclude.shape[0], n_nodes), dtype=torch.int32, device=exclude.device
            )
            left.index_add_(1, nodes, keep)
            out.append(left > 0)
        return out


@dataclass(frozen=True)
class BeamResult:
    codes: torch.Tensor  # long [batch, k, levels]
    scores: (
        torch.Tensor
    )  # float [batch, k]: summed log-probabilities, -inf where fewer than k exist
    leaves: torch.Tensor  # long [batch, k]: item index for a trie of items, -1 where absent
    given: torch.Tensor | None = None  # float [n_prompts]: log-prob of `score_tokens`, per prompt
    # float [n_prompts, hidden]: the final hidden state at each prompt's last token, where the
    # search computed it (a Llama whose beams share their prompt); else None
    prompt_hidden: torch.Tensor | None = None


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (LoRA), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_kwarg(model: torch.nn.Module) -> str:
    base = _base_model(model)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@dataclass
class CodeLevels:
    """Per-level softmax (`model.code_softmax`): the vocabulary ids of each identifier level,
    and for every vocabulary id its level (-1: not an identifier token) and index in it."""

    ids: list[torch.Tensor]
    level_of: torch.Tensor  # long [vocabulary]
    index_of: torch.Tensor  # long [vocabulary]

    @classmethod
    def build(cls, ids: list[torch.Tensor], vocab_size: int) -> CodeLevels:
        level_of = torch.full((vocab_size,), -1, dtype=torch.long)
        index_of = torch.zeros(vocab_size, dtype=torch.long)
        for lvl, level in enumerate(ids):
            level_of[level] = lvl
            index_of[level] = torch.arange(len(level))
        return cls([t.long() for t in ids], level_of, index_of)


def code_levels(model: torch.nn.Module) -> CodeLevels | None:
    """The model's per-level softmax (set by `GenerativeRecommender` for a model trained with
    `model.code_softmax`), else None: the softmax covers the whole vocabulary."""
    return getattr(model, "siit_code_levels", None)


def level_log_probs(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over one level's identifier tokens (`ids`), renormalised from
    log-probabilities (or logits) over the whole vocabulary in the last dimension."""
    sub = logp[..., ids.to(logp.device)]
    return sub - sub.logsumexp(-1, keepdim=True)


def continuation_log_probs(
    logp: torch.Tensor, tokens: torch.Tensor, levels: CodeLevels | None
) -> torch.Tensor:
    """Log-probability of each token of an identifier (long [batch, L], level j at position j)
    from whole-vocabulary log-probabilities [batch, L, vocabulary]; with a per-level softmax
    each position is renormalised over its level."""
    if levels is None:
        return logp.gather(2, tokens[..., None])[..., 0]
    out = [
        level_log_probs(logp[:, j], levels.ids[j]).gather(
            1, levels.index_of.to(tokens.device)[tokens[:, j : j + 1]]
        )[:, 0]
        for j in range(tokens.shape[1])
    ]
    return torch.stack(out, 1)


def is_encoder_decoder(model: torch.nn.Module) -> bool:
    """Whether `model` is an encoder-decoder (t5), not a causal LM."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


class _CausalSteps:
    """A causal LM's side of the search: the prompts (left-padded) in one forward, then one
    token per beam per step over the KV cache."""

    def __init__(self, model: torch.nn.Module, prompts: list[list[int]], pad_id: int) -> None:
        device = next(model.parameters()).device
        self.model, self.cache_kw = model, _cache_kwarg(model)
        batch = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        width_t = int(lengths.max())
        input_ids = torch.full((batch, width_t), pad_id, dtype=torch.long, device=device)
        attention = torch.zeros((batch, width_t), dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):  # left padding keeps every last token at -1
            input_ids[row, width_t - len(prompt) :] = torch.tensor(prompt, device=device)
            attention[row, width_t - len(prompt) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        # Equal-length prompts need no mask, which keeps SDPA on its fast causal path.
        self.padded = bool((lengths != width_t).any())
        logits, self.cache = self._prompt_pass(
            input_ids, attention if self.padded else None, positions
        )
        self.logp = torch.log_softmax(logits.float(), dim=-1)
        self.attention, self.next_pos = attention, lengths.clone()

    def _prompt_pass(
        self, input_ids: torch.Tensor, attention: torch.Tensor | None, positions: torch.Tensor
    ) -> tuple[torch.Tensor, object]:
        """The prompts' forward: the next-token logits [prompts, vocab] and the KV cache."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1], _output_cache(out)

    def repeat(self, width: int) -> None:
        """One beam per prompt so far: repeat each row `width` times."""
        self.cache.batch_repeat_interleave(width)
        self.attention = self.attention.repeat_interleave(width, dim=0)
        self.next_pos = self.next_pos.repeat_interleave(width)

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)
        self.attention, self.next_pos = self.attention[rows], self.next_pos[rows]

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (long [rows, 1]); the next log-probabilities [rows, vocab]."""
        attention = self.attention
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
        self.attention = attention
        out = self.model(
            input_ids=tokens,
            attention_mask=attention if self.padded else None,
            position_ids=self.next_pos[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: self.cache},
        )
        self.cache = _output_cache(out)
        self.next_pos = self.next_pos + 1
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)


class _SharedPromptSteps(_CausalSteps):
    """A Llama's side of the search with each prompt's keys and values shared by its beams.

    The generic path copies every prompt's cache once per beam and again at every reorder, and
    appends to all of it per step: on CPU that bookkeeping was three quarters of the search.
    Here the prompt cache stays [prompts, heads, T, d]; each beam only holds the keys and
    values of the identifier tokens it has generated (at most levels - 1), and a step's
    attention is the softmax over both parts, computed per layer with the model's own
    projections, norms, rotary embedding and MLP (LoRA adapters included). Same numbers as
    the generic path to float rounding (tested).
    """

    def __init__(self, model: torch.nn.Module, prompts: list[list[int]], pad_id: int) -> None:
        self.base = _base_model(model)
        super().__init__(model, prompts, pad_id)
        layers = self.cache.layers
        self.prompt_k = [layer.keys for layer in layers]  # [P, Hkv, T, d] (rotary applied)
        self.prompt_v = [layer.values for layer in layers]
        self.cache = None
        dtype = self.prompt_k[0].dtype
        self.prompt_bias = (  # additive [P, 1, 1, T]: -inf on left padding
            torch.zeros(
                self.attention.shape, dtype=dtype, device=self.attention.device
            ).masked_fill(self.attention == 0, float("-inf"))[:, None, None, :]
        )
        self.n_prompts = len(prompts)
        self.prompt_logp, self.prompt_end = self.logp, self.next_pos.clone()
        self._start_beams()

    def _prompt_pass(
        self, input_ids: torch.Tensor, attention: torch.Tensor | None, positions: torch.Tensor
    ) -> tuple[torch.Tensor, object]:
        """As the model's forward computes it (its decoder, then its head on the last
        position), keeping the final hidden state at each prompt's last token
        (`prompt_hidden`), which the item rows' re-scoring reads (`rescored_beam_search`)."""
        out = self.base.model(
            input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True
        )
        self.prompt_hidden = out.last_hidden_state[:, -1]
        return self.base.lm_head(self.prompt_hidden), _output_cache(out)

    def _start_beams(self) -> None:
        self.width, self.next_pos = 1, self.prompt_end.clone()
        self.beam_k: list[torch.Tensor | None] = [None] * len(self.prompt_k)
        self.beam_v: list[torch.Tensor | None] = [None] * len(self.prompt_k)

    def score(self, tokens: torch.Tensor) -> torch.Tensor:
        """Summed log-probability of one continuation per prompt (long [P, L]) by teacher
        forcing over the prompt cache: no second pass over the prompts. Ends the search."""
        return self.score_many(tokens[:, None])[:, 0]

    def score_many(self, tokens: torch.Tensor) -> torch.Tensor:
        """`score` of M continuations per prompt (long [P, M, L]) -> float [P, M]: they take
        the places of a prompt's beams, all over the one prompt cache. Ends the search."""
        self._start_beams()
        n_prompts, width, length = tokens.shape
        self.width = width
        flat = tokens.reshape(n_prompts * width, length)
        logp = self.prompt_logp.repeat_interleave(width, dim=0)
        total = torch.zeros(len(flat), device=tokens.device)
        levels = code_levels(self.model)
        for pos in range(length):
            if levels is not None:  # identifier token `pos` is of level `pos`
                logp = level_log_probs(logp, levels.ids[pos])
                column = levels.index_of.to(tokens.device)[flat[:, pos : pos + 1]]
            else:
                column = flat[:, pos : pos + 1]
            total = total + logp.gather(1, column)[:, 0]
            if pos + 1 < length:
                logp = self.advance(flat[:, pos : pos + 1])
        return total.view(n_prompts, width)

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        base = _base_model(model)
        cfg = getattr(base, "config", None)
        return (
            getattr(cfg, "model_type", None) == "llama"
            and hasattr(getattr(base, "model", None), "rotary_emb")
            and not base.training
        )

    def repeat(self, width: int) -> None:
        self.width = width

    def reorder(self, rows: torch.Tensor) -> None:
        """`rows` index prompt-major rows (prompt * beams + beam) and never leave their prompt."""
        self.width = len(rows) // self.n_prompts
        self.beam_k = [k[rows] for k in self.beam_k]
        self.beam_v = [v[rows] for v in self.beam_v]

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        base, inner = self.base, self.base.model
        n_prompts, width = self.n_prompts, self.width
        rows = n_prompts * width
        positions = self.next_pos.repeat_interleave(width)[:, None]
        self.next_pos = self.next_pos + 1
        hidden = inner.embed_tokens(tokens)  # [R, 1, D]
        cos, sin = inner.rotary_emb(hidden, positions)
        for idx, layer in enumerate(inner.layers):
            attn = layer.self_attn
            normed = layer.input_layernorm(hidden)
            q = attn.q_proj(normed).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(normed).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(normed).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
            q, k = _apply_rotary(q, k, cos, sin)
            if self.beam_k[idx] is not None:
                k = torch.cat([self.beam_k[idx], k], dim=2)
                v = torch.cat([self.beam_v[idx], v], dim=2)
            self.beam_k[idx], self.beam_v[idx] = k, v  # [R, Hkv, s, d]
            hidden = hidden + attn.o_proj(self._attend(idx, q, k, v, attn.scaling))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        logits = base.lm_head(inner.norm(hidden))
        return torch.log_softmax(logits[:, -1].float(), dim=-1)

    def _attend(
        self, idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """One query per row over its prompt's keys and its own beam's; [R, 1, H * d]."""
        n_prompts, width = self.n_prompts, self.width
        rows, heads, _, dim = q.shape
        kv_heads = k.shape[1]
        group = heads // kv_heads  # query heads per key/value head (head = kv * group + j)
        pk, pv = self.prompt_k[idx], self.prompt_v[idx]
        length = pk.shape[2]
        # prompt part: the beams of a prompt are its queries, [P, Hkv, group * W, T]
        qp = q.view(n_prompts, width, kv_heads, group, dim).permute(0, 2, 3, 1, 4)
        qp = qp.reshape(n_prompts, kv_heads, group * width, dim)
        sp = torch.matmul(qp, pk.transpose(-1, -2)) * scaling + self.prompt_bias
        sp = sp.view(n_prompts, kv_heads, group, width, length).permute(0, 3, 1, 2, 4)
        sp = sp.reshape(rows, kv_heads, group, length)
        # own part: the identifier tokens this beam generated, [R, Hkv, group, s]
        sb = torch.matmul(q.view(rows, kv_heads, group, dim), k.transpose(-1, -2)) * scaling
        probs = torch.softmax(torch.cat([sp, sb], dim=-1).float(), dim=-1).to(q.dtype)
        pp, pb = probs[..., :length], probs[..., length:]
        pp = pp.view(n_prompts, width, kv_heads, group, length).permute(0, 2, 3, 1, 4)
        out_p = torch.matmul(pp.reshape(n_prompts, kv_heads, group * width, length), pv)
        out_p = out_p.view(n_prompts, kv_heads, group, width, dim).permute(0, 3, 1, 2, 4)
        out = out_p.reshape(rows, kv_heads, group, dim) + torch.matmul(pb, v)
        return out.reshape(rows, 1, heads * dim)


def _apply_rotary(q, k, cos, sin):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    return apply_rotary_pos_emb(q, k, cos, sin)


def _encode(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """An encoder-decoder's encoder states of right-padded prompts and their mask."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(prompt, device=device)
        mask[row, : len(prompt)] = 1
    return model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state, mask


class _Seq2SeqSteps:
    """An encoder-decoder's side of the search: every prompt encoded once; the decoder starts
    from its start token and takes one token per beam per step over its cache (self-attention
    keys and values grow, the cross-attention ones are computed once)."""

    def __init__(self, model: torch.nn.Module, prompts: list[list[int]], pad_id: int) -> None:
        self.model, self.cache_kw = model, _cache_kwarg(model)
        self.encoded, self.mask = _encode(model, prompts, pad_id)
        start = model.config.decoder_start_token_id
        tokens = torch.full((len(prompts), 1), start, dtype=torch.long, device=self.mask.device)
        self.cache = None
        self.logp = self.advance(tokens)

    def repeat(self, width: int) -> None:
        self.cache.batch_repeat_interleave(width)
        self.encoded = self.encoded.repeat_interleave(width, dim=0)
        self.mask = self.mask.repeat_interleave(width, dim=0)

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)
        self.encoded, self.mask = self.encoded[rows], self.mask[rows]

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        cache = {self.cache_kw: self.cache} if self.cache is not None else {}
        out = self.model(
            encoder_outputs=(self.encoded,),
            attention_mask=self.mask,
            decoder_input_ids=tokens,
            use_cache=True,
            **cache,
        )
        self.cache = _output_cache(out)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)


@torch.no_grad()
def constrained_beam_search(
    model: torch.nn.Module,
    prompts: list[list[int]],
    code_token_ids: list[torch.Tensor],
    trie: PrefixTrie,
    beam_size: int,
    top_k: int,
    pad_id: int = 0,
    exclude: torch.Tensor | None = None,
    level_bias: list[torch.Tensor] | None = None,
    groups: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    fixed_prefix: torch.Tensor | None = None,
    shared_prompt: bool = True,
    prefix_bias: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    score_tokens: torch.Tensor | None = None,
    steps_out: list | None = None,
) -> BeamResult:
    """Beam search the `top_k` best identifiers after each prompt (or each group of prompts).

    exclude: optional bool [groups, n_items], items that may not be returned (a user's seen
    items). They are pruned at every level: a prefix whose items are all excluded is never
    expanded, so the top-k holds k items whenever that many are not excluded (beam >= top_k).
    level_bias: optional per-level float [K_l] added to the ranking score only (not to the
    returned log-probabilities), e.g. a load-aware penalty.
    prefix_bias: optional `f(level, prefix)` -> float [groups, beams, K_level], a ranking bias
    that depends on each beam's codes so far (long [groups, beams, level]), e.g. a penalty for
    the load of each code under that prefix (`components.siit.refine.PrefixLoad`). Unlike
    `level_bias` (each level's own, so it prunes beams but leaves the final ranking to the
    last level's), it is summed along a beam's path and ranks the final identifiers too.
    groups: optional long [n_prompts], the group (0..G-1) of each prompt. The prompts of a
    group share their beams, and a beam's score is the weighted sum (`weights`, float
    [n_prompts], default 1) of its log-probability after each of them: e.g. an item's identifier
    scored by the mean log-probability over the histories that lead to it. Without `groups`,
    every prompt is its own group.
    fixed_prefix: optional long [groups, F]: the first F codes of each group's identifiers are
    given (e.g. refinement that keeps an item's semantic prefix and moves it among siblings).
    shared_prompt: for a Llama in eval mode, beams share their prompt's keys and values
    (`_SharedPromptSteps`); False takes transformers' cache, copied per beam (the reference).
    score_tokens: optional long [n_prompts, L] token ids: `given` is then each prompt's summed
    log-probability of its row (e.g. an item's current identifier), over the same prompt pass
    where the cache is shared, else by `sequence_log_probs`.
    steps_out: optional list the model's side of the search is appended to: it can still
    score continuations over the prompt pass (`_SharedPromptSteps.score_many`).
    """
    device = next(model.parameters()).device
    batch, levels = len(prompts), trie.levels
    if is_encoder_decoder(model):
        steps = _Seq2SeqSteps(model, prompts, pad_id)
    elif shared_prompt and _SharedPromptSteps.supports(model):
        steps = _SharedPromptSteps(model, prompts, pad_id)
    else:
        steps = _CausalSteps(model, prompts, pad_id)
    logp = steps.logp

    grouped = groups is not None
    if grouped:
        groups = groups.to(device=device, dtype=torch.long)
        n_groups = int(groups.max()) + 1
        row_weight = (
            torch.ones(batch, device=device) if weights is None else weights.to(device).float()
        )
    else:
        groups, n_groups = torch.arange(batch, device=device), batch
    children = [c.to(device) for c in trie.children]
    token_ids = [t.to(device) for t in code_token_ids]
    open_nodes = trie.to(device).open_nodes(exclude.to(device)) if exclude is not None else None
    nodes = torch.zeros((n_groups, 1), dtype=torch.long, device=device)
    scores = torch.zeros((n_groups, 1), device=device)
    penalty = torch.zeros((n_groups, 1), device=device)  # prefix_bias so far, per beam
    codes = torch.zeros((n_groups, 1, 0), dtype=torch.long, device=device)
    group_rows = torch.arange(n_groups, device=device)[:, None, None]
    prompt_rows = torch.arange(batch, device=device)
    per_level = code_levels(model) is not None  # the softmax of each level over its codes
    for lvl in range(levels):
        n_beams, size = nodes.shape[1], token_ids[lvl].numel()
        ids = token_ids[lvl]
        step = level_log_probs(logp, ids) if per_level else logp[:, ids]
        step = step.view(batch, n_beams, size)
        if grouped:
            step = torch.zeros((n_groups, n_beams, size), device=device).index_add_(
                0, groups, step * row_weight[:, None, None]
            )
        child = children[lvl][nodes.clamp(min=0)].long()  # [groups, beams, K]
        valid = (child >= 0) & torch.isfinite(scores)[..., None]
        if open_nodes is not None:
            allowed = ~exclude.to(device) if lvl == levels - 1 else open_nodes[lvl]
            valid &= allowed[group_rows, child.clamp(min=0)]
        if fixed_prefix is not None and lvl < fixed_prefix.shape[1]:
            given = fixed_prefix[:, lvl].to(device)
            valid &= (torch.arange(size, device=device) == given[:, None])[:, None, :]
        total = scores[..., None] + step
        rank = total if level_bias is None else total + level_bias[lvl].to(device)
        if prefix_bias is not None:  # summed along each beam's path
            path_bias = penalty[..., None] + prefix_bias(lvl, codes).to(device)
            rank = rank + path_bias
        rank = rank.masked_fill(~valid, float("-inf")).view(n_groups, -1)
        width = min(top_k if lvl == levels - 1 else beam_size, rank.shape[1])
        best, idx = rank.topk(width, dim=-1)
        origin, code = idx // size, idx % size
        scores = (
            total.view(n_groups, -1)
            .gather(1, idx)
            .masked_fill(~torch.isfinite(best), float("-inf"))
        )
        nodes = child.view(n_groups, -1).gather(1, idx)
        if prefix_bias is not None:
            penalty = path_bias.expand_as(total).reshape(n_groups, -1).gather(1, idx)
        codes = torch.cat(
            [codes.gather(1, origin[..., None].expand(-1, -1, lvl)), code[..., None]], dim=-1
        )
        if lvl == levels - 1:
            break
        if lvl == 0:  # one beam per prompt so far: repeat the prompt cache once per beam
            steps.repeat(width)
        else:  # every prompt follows the beams of its group
            steps.reorder((prompt_rows[:, None] * n_beams + origin[groups]).view(-1))
        logp = steps.advance(token_ids[lvl][code[groups]].view(-1, 1))
    leaves = nodes.masked_fill(~torch.isfinite(scores), -1)
    given = None
    if score_tokens is not None:
        score_tokens = score_tokens.to(device=device, dtype=torch.long)
        given = (
            steps.score(score_tokens)
            if isinstance(steps, _SharedPromptSteps)
            else sequence_log_probs(model, prompts, score_tokens, pad_id)
        )
    if steps_out is not None:
        steps_out.append(steps)
    return BeamResult(
        codes=codes,
        scores=scores,
        leaves=leaves,
        given=given,
        prompt_hidden=getattr(steps, "prompt_hidden", None),
    )


@torch.no_grad()
def sequence_log_probs(
    model: torch.nn.Module, prompts: list[list[int]], continuations: torch.Tensor, pad_id: int = 0
) -> torch.Tensor:
    """Summed log-probability of each continuation (long [batch, L]) after its prompt."""
    device = next(model.parameters()).device
    batch, levels = continuations.shape
    if is_encoder_decoder(model):
        encoded, mask = _encode(model, prompts, pad_id)
        targets = continuations.to(device)
        start = torch.full((batch, 1), model.config.decoder_start_token_id, device=device)
        logits = model(
            encoder_outputs=(encoded,),
            attention_mask=mask,
            decoder_input_ids=torch.cat([start.long(), targets[:, :-1]], 1),
        ).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        return continuation_log_probs(logp, targets, code_levels(model)).sum(dim=1)
    seqs = [p + c for p, c in zip(prompts, continuations.tolist(), strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros((batch, width), dtype=torch.long, device=device)
    for row, seq in enumerate(seqs):  # left padding: every continuation ends the row
        ids[row, width - len(seq) :] = torch.tensor(seq, device=device)
        attention[row, width - len(seq) :] = 1
    padded = bool((attention == 0).any())
    logits = model(  # logits only where the continuation's tokens are predicted
        input_ids=ids,
        attention_mask=attention if padded else None,
        position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
        logits_to_keep=levels + 1,
    ).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return continuation_log_probs(logp, continuations.to(device), code_levels(model)).sum(dim=1)


def scores_item_rows(model: torch.nn.Module) -> bool:
    """Whether the model's final hidden state can score its item rows (`item_log_probs`,
    `train.item_loss`, `evaluate.item_weight`): a decoder-only model with item input rows.
    Other models (T5, the pretrained profile, no item inputs) ignore those settings."""
    return item_rows(model) is not None and not is_encoder_decoder(model)


@torch.no_grad()
def item_log_probs(
    model: torch.nn.Module, prompts: list[list[int]], pad_id: int = 0
) -> torch.Tensor:
    """float [n_prompts, n_items]: every item's log-softmax over the model's item rows
    (`model.item_inputs`), scored by the final hidden state at each prompt's last token, the
    position that predicts the next item's first code (what `train.item_loss` trains).
    Decoder-only models only (the tiny Llama)."""
    _check_item_rows(model)
    device = next(model.parameters()).device
    ids = torch.full((len(prompts), max(len(p) for p in prompts)), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.as_tensor(p)
    last = torch.as_tensor([len(p) - 1 for p in prompts])
    # right padding, causal attention: a real token never attends to the padding after it
    hidden = _base_model(model).model(input_ids=ids.to(device)).last_hidden_state
    return item_log_probs_of(model, hidden[torch.arange(len(prompts)), last.to(device)])


def _check_item_rows(model: torch.nn.Module) -> None:
    if not scores_item_rows(model):
        raise ValueError(
            "item-row scores need a decoder-only model with item input rows "
            "(model.item_inputs true, model.architecture llama)"
        )


@torch.no_grad()
def item_log_probs_of(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """`item_log_probs` from final hidden states already computed (float [n, hidden]), e.g.
    the beam search's own (`BeamResult.prompt_hidden`)."""
    _check_item_rows(model)
    rows = item_rows(model)
    weight = model.get_input_embeddings().weight[rows.base : rows.base + rows.count]
    return torch.log_softmax(hidden.float() @ weight.float().T, -1)


def rescore_with_item_rows(
    result: BeamResult, item_logp: torch.Tensor, weight: float, top_k: int
) -> BeamResult:
    """The beam's leaves re-ranked by identifier log-probability + `weight` x item-row
    log-probability (`item_log_probs`; `evaluate.item_weight`): the generative search's
    shortlist, re-scored. The top `top_k`, the combined score as `scores`; -1 / -inf where
    the beam had fewer leaves. A stable sort: weight 0 keeps the beam's order."""
    leaves = result.leaves
    combined = result.scores.float() + weight * item_logp.gather(1, leaves.clamp(min=0))
    combined = combined.masked_fill(leaves < 0, -torch.inf)
    order = combined.argsort(dim=1, descending=True, stable=True)[:, :top_k]
    scores = combined.gather(1, order)
    return BeamResult(
        codes=result.codes.gather(1, order[..., None].expand(-1, -1, result.codes.shape[2])),
        scores=scores,
        leaves=leaves.gather(1, order).masked_fill(scores == -torch.inf, -1),
        given=result.given,
    )


@torch.no_grad()
def rescored_beam_search(
    model: torch.nn.Module,
    prompts: list[list[int]],
    code_token_ids: list[torch.Tensor],
    trie: PrefixTrie,
    beam_size: int,
    top_k: int,
    pad_id: int = 0,
    exclude: torch.Tensor | None = None,
    item_weight: float = 0.0,
    item_codes: torch.Tensor | None = None,
    row_candidates: int = 0,
) -> BeamResult:
    """`constrained_beam_search`'s top `top_k`, or with `item_weight` > 0 (`evaluate.item_weight`)
    its whole beam re-ranked by `rescore_with_item_rows`: what evaluation and serving rank.
    With `row_candidates` > 0 (`evaluate.row_candidates`; needs `item_codes`, the map: long
    [n_items, levels]) the shortlist also holds the item rows' best `row_candidates` items the
    beam did not reach (`with_row_candidates`). Models without item rows to score
    (`scores_item_rows`) ignore both."""
    weight = item_weight if scores_item_rows(model) else 0.0
    steps = []
    result = constrained_beam_search(
        model,
        prompts,
        code_token_ids,
        trie,
        beam_size=beam_size,
        top_k=beam_size if weight else top_k,  # the whole beam is the shortlist
        pad_id=pad_id,
        exclude=exclude,
        steps_out=steps,
    )
    if not weight:
        return result
    items = search_item_log_probs(model, result, prompts, pad_id)
    if row_candidates:
        if item_codes is None:
            raise ValueError("row_candidates needs the items' codes (item_codes)")
        result = with_row_candidates(
            model,
            steps[0],
            prompts,
            result,
            items,
            item_codes,
            code_token_ids,
            row_candidates,
            exclude,
            pad_id,
        )
    return rescore_with_item_rows(result, items, weight, top_k)


@torch.no_grad()
def with_row_candidates(
    model: torch.nn.Module,
    steps: _CausalSteps,
    prompts: list[list[int]],
    result: BeamResult,
    item_logp: torch.Tensor,
    item_codes: torch.Tensor,
    code_token_ids: list[torch.Tensor],
    count: int,
    exclude: torch.Tensor | None = None,
    pad_id: int = 0,
) -> BeamResult:
    """The beam's leaves and, after them, the `count` items of best item-row log-probability
    (`item_logp`) that are neither among the leaves nor excluded, each with its identifier's
    log-probability after the prompt as its score, as the beam scores its leaves: teacher-forced
    over the search's own prompt pass where it kept it (`_SharedPromptSteps.score_many`), else
    by `sequence_log_probs`. -1 / -inf where fewer items are left."""
    device = item_logp.device
    leaves = result.leaves.to(device)
    n_items = item_logp.shape[1]
    # the leaves' items are blocked; an absent leaf (-1) marks a spare last column, dropped
    blocked = torch.zeros((len(leaves), n_items + 1), dtype=torch.bool, device=device)
    blocked = blocked.scatter_(1, leaves.masked_fill(leaves < 0, n_items), True)[:, :n_items]
    if exclude is not None:
        blocked |= exclude.to(device)
    count = min(count, n_items)  # a catalogue smaller than the count asked
    values, extra = item_logp.masked_fill(blocked, -torch.inf).topk(count, dim=1)
    extra = extra.masked_fill(values == -torch.inf, -1)
    codes = item_codes.to(device)[extra.clamp(min=0)]  # [P, count, levels]
    tokens = torch.stack(
        [code_token_ids[lvl].to(device)[codes[..., lvl]] for lvl in range(codes.shape[-1])], -1
    )
    if isinstance(steps, _SharedPromptSteps):
        scores = steps.score_many(tokens)
    else:
        flat = sequence_log_probs(
            model, [p for p in prompts for _ in range(count)], tokens.flatten(0, 1), pad_id
        )
        scores = flat.view(len(prompts), count)
    scores = scores.to(result.scores.dtype).masked_fill(extra < 0, -torch.inf)
    return BeamResult(
        codes=torch.cat([result.codes, codes.to(result.codes.device)], 1),
        scores=torch.cat([result.scores, scores.to(result.scores.device)], 1),
        leaves=torch.cat([result.leaves, extra.to(result.leaves.device)], 1),
        given=result.given,
        prompt_hidden=result.prompt_hidden,
    )


def search_item_log_probs(
    model: torch.nn.Module, result: BeamResult, prompts: list[list[int]], pad_id: int = 0
) -> torch.Tensor:
    """`item_log_probs` of a search's prompts: from the hidden states its own pass over them
    kept (`BeamResult.prompt_hidden`), else by a pass of their own."""
    if result.prompt_hidden is not None:
        return item_log_probs_of(model, result.prompt_hidden)
    return item_log_probs(model, prompts, pad_id)
