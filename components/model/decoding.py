"""Trie-constrained, batched beam search over item identifiers.

The trie is a list of dense tables, one per level: `children[l][node, code]` is the node
reached at level l+1 (or, at the last level, the item index), -1 where no identifier
continues. Masking with it means the search can only ever emit existing identifiers, and
a whole batch of users x beams advances with a few tensor ops per level, reusing the
prompt's KV cache instead of re-encoding it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PrefixTrie:
    children: tuple[torch.Tensor, ...]

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
        children = []
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
            children.append(torch.from_numpy(table))
        return cls(tuple(children))

    @classmethod
    def unconstrained(cls, codebook_sizes: tuple[int, ...]) -> PrefixTrie:
        """Every well-formed identifier (any code at every level), e.g. for refinement."""
        return cls(tuple(torch.zeros((1, size), dtype=torch.int32) for size in codebook_sizes))

    def to(self, device: torch.device) -> PrefixTrie:
        return PrefixTrie(tuple(t.to(device) for t in self.children))


@dataclass(frozen=True)
class BeamResult:
    codes: torch.Tensor  # long [batch, k, levels]
    scores: (
        torch.Tensor
    )  # float [batch, k]: summed log-probabilities, -inf where fewer than k exist
    leaves: torch.Tensor  # long [batch, k]: item index for a trie of items, -1 where absent


def _cache_kwarg(model: torch.nn.Module) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


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
) -> BeamResult:
    """Beam search the `top_k` best identifiers after each prompt.

    exclude: optional bool [batch, n_items]; leaves set there are masked at the last level
    (items the user has already seen). level_bias: optional per-level float [K_l] added to the
    ranking score only (not to the returned log-probabilities), e.g. a load-aware penalty.
    """
    device = next(model.parameters()).device
    cache_kw = _cache_kwarg(model)
    batch, levels = len(prompts), trie.levels
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width_t = int(lengths.max())
    input_ids = torch.full((batch, width_t), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros((batch, width_t), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):  # left padding keeps every last token at -1
        input_ids[row, width_t - len(prompt) :] = torch.tensor(prompt, device=device)
        attention[row, width_t - len(prompt) :] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    # Equal-length prompts need no mask, which keeps SDPA on its fast causal path.
    padded = bool((lengths != width_t).any())
    out = model(
        input_ids=input_ids,
        attention_mask=attention if padded else None,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    cache = _output_cache(out)
    next_pos = lengths.clone()

    children = [c.to(device) for c in trie.children]
    token_ids = [t.to(device) for t in code_token_ids]
    nodes = torch.zeros((batch, 1), dtype=torch.long, device=device)
    scores = torch.zeros((batch, 1), device=device)
    codes = torch.zeros((batch, 1, 0), dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    for lvl in range(levels):
        n_beams, size = nodes.shape[1], token_ids[lvl].numel()
        step = logp[:, token_ids[lvl]].view(batch, n_beams, size)
        child = children[lvl][nodes.clamp(min=0)].long()  # [batch, beams, K]
        valid = (child >= 0) & torch.isfinite(scores)[..., None]
        if exclude is not None and lvl == levels - 1:
            valid &= ~exclude[rows[:, None, None], child.clamp(min=0)]
        total = scores[..., None] + step
        rank = total if level_bias is None else total + level_bias[lvl].to(device)
        rank = rank.masked_fill(~valid, float("-inf")).view(batch, -1)
        width = min(top_k if lvl == levels - 1 else beam_size, rank.shape[1])
        best, idx = rank.topk(width, dim=-1)
        origin, code = idx // size, idx % size
        scores = (
            total.view(batch, -1).gather(1, idx).masked_fill(~torch.isfinite(best), float("-inf"))
        )
        nodes = child.view(batch, -1).gather(1, idx)
        codes = torch.cat(
            [codes.gather(1, origin[..., None].expand(-1, -1, lvl)), code[..., None]], dim=-1
        )
        if lvl == levels - 1:
            break
        if lvl == 0:  # one beam per row so far: repeat the prompt cache once per beam
            cache.batch_repeat_interleave(width)
            attention = attention.repeat_interleave(width, dim=0)
            next_pos = next_pos.repeat_interleave(width)
        else:
            flat = (rows[:, None] * n_beams + origin).view(-1)
            cache.reorder_cache(flat)
            attention, next_pos = attention[flat], next_pos[flat]
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
        tokens = token_ids[lvl][code].view(-1, 1)
        out = model(
            input_ids=tokens,
            attention_mask=attention if padded else None,
            position_ids=next_pos[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        cache = _output_cache(out)
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        next_pos = next_pos + 1
    leaves = nodes.masked_fill(~torch.isfinite(scores), -1)
    return BeamResult(codes=codes, scores=scores, leaves=leaves)


@torch.no_grad()
def sequence_log_probs(
    model: torch.nn.Module, prompts: list[list[int]], continuations: torch.Tensor, pad_id: int = 0
) -> torch.Tensor:
    """Summed log-probability of each continuation (long [batch, L]) after its prompt."""
    device = next(model.parameters()).device
    batch, levels = continuations.shape
    seqs = [p + c for p, c in zip(prompts, continuations.tolist(), strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    for row, seq in enumerate(seqs):  # right padding: causal attention ignores it
        ids[row, : len(seq)] = torch.tensor(seq, device=device)
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)
    starts = torch.tensor([len(p) - 1 for p in prompts], device=device)
    pos = starts[:, None] + torch.arange(levels, device=device)[None, :]
    picked = logp[torch.arange(batch, device=device)[:, None], pos, continuations.to(device)]
    return picked.sum(dim=1)
