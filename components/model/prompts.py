"""Every prompt of every task, in one place, as token-id sequences.

Identifiers are written as their code tokens directly (never re-tokenized from text), so
a prompt is `text prefix ids + identifier ids + ...`. Labels are -100 except on response
tokens: the loss covers the response only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100

SEQREC_PREFIX = "Recommend the next item after this history:"
ITEM2ID_PREFIX = "Item: "
ITEM2ID_SUFFIX = "\nIdentifier:"
ID2ITEM_PREFIX = "Identifier: "
ID2ITEM_SUFFIX = "\nTitle:"


def template_texts() -> list[str]:
    """Prompt text the tiny tokenizer must cover."""
    return [SEQREC_PREFIX, ITEM2ID_PREFIX, ITEM2ID_SUFFIX, ID2ITEM_PREFIX, ID2ITEM_SUFFIX]


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    # a banded seqrec window: (prefix tokens, tokens per item, history) when every item token
    # may attend only to the prompt prefix and the `history` items before the item it predicts
    # (`components.model.training.band_mask`); None: plain causal attention
    band: tuple[int, int, int] | None = None


class PromptBuilder:
    """Turns items, histories and identifiers into token ids for one tokenizer.

    `item_tokens` is int [n_items, levels]: the vocabulary ids of each item's identifier.
    `input_tokens` (same shape, default `item_tokens`): how an item reads inside a history
    (`model.item_inputs`: its leading codes and a token of its own); what the model is taught
    to generate is always `item_tokens`.
    """

    def __init__(
        self,
        tokenizer,
        item_tokens: np.ndarray,
        max_text_tokens: int = 48,
        input_tokens: np.ndarray | None = None,
        histories: bool = True,
        text_tokens: np.ndarray | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.item_tokens = np.asarray(item_tokens, dtype=np.int64)
        self.input_tokens = (
            self.item_tokens if input_tokens is None else np.asarray(input_tokens, dtype=np.int64)
        )
        if self.input_tokens.shape != self.item_tokens.shape:
            raise ValueError(
                f"input tokens {self.input_tokens.shape} and identifiers {self.item_tokens.shape} "
                "must have one row per item and one column per level"
            )
        self.max_text_tokens = max_text_tokens
        # `model.text_token`: item i's item2id prompt starts with token text_tokens[i]
        self.text_tokens = None if text_tokens is None else np.asarray(text_tokens, dtype=np.int64)
        if self.text_tokens is not None and self.text_tokens.shape != (len(self.item_tokens),):
            raise ValueError(
                f"text tokens {self.text_tokens.shape} must be one per item "
                f"({len(self.item_tokens)})"
            )
        # False: a builder for the text tasks only (its rows need not be the catalogue's items)
        self.histories = histories
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = tokenizer.eos_token_id
        self._seqrec_prefix = self.bos + self._encode(SEQREC_PREFIX)
        self._id2item_prefix = self.bos + self._encode(ID2ITEM_PREFIX)
        self._id2item_suffix = self._encode(ID2ITEM_SUFFIX)
        self._item2id_suffix = self._encode(ITEM2ID_SUFFIX)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def identifier(self, item_idx: int) -> list[int]:
        return self.item_tokens[item_idx].tolist()

    # seqrec -------------------------------------------------------------------------
    def seqrec_prompt(self, history: np.ndarray) -> list[int]:
        """Prompt whose continuation is the next item's identifier."""
        self._check_histories()
        return self._seqrec_prefix + self.input_tokens[np.asarray(history)].reshape(-1).tolist()

    def seqrec_window(self, window: np.ndarray, min_history: int = 1, band: int = 0) -> Example:
        """All next-item targets of a window in one sequence (causal LM, one pass).

        Every item after the first `min_history` is a response to the items before it, so one
        forward pass trains len(window) - min_history next-item predictions. `band` > 0: each
        target attends to at most that many items before it (a window longer than a history).
        """
        self._check_histories()
        window = np.asarray(window)
        ids = self.item_tokens[window]
        n_prefix = len(self._seqrec_prefix)
        input_ids = self._seqrec_prefix + self.input_tokens[window].reshape(-1).tolist()
        labels = [IGNORE] * (n_prefix + ids.shape[1] * min_history) + ids[min_history:].reshape(
            -1
        ).tolist()
        return Example(input_ids, labels, (n_prefix, ids.shape[1], band) if band else None)

    def _check_histories(self) -> None:
        if not self.histories:
            raise ValueError(
                "this prompt builder is for the text tasks only (its rows are not the "
                "catalogue's items): histories need GenerativeRecommender.prompt_builder(codes)"
            )

    # item2id ------------------------------------------------------------------------
    def item2id_prompt(self, text: str, item_idx: int | None = None) -> list[int]:
        """The item's text, then the cue for its identifier. With text tokens
        (`model.text_token`) the item's own comes first: `item_idx` is then required."""
        body = self._encode(ITEM2ID_PREFIX + text)[: self.max_text_tokens]
        if self.text_tokens is None:
            return self.bos + body + self._item2id_suffix
        if item_idx is None:
            raise ValueError(
                "this model reads each item's text row (model.text_token): say which item"
            )
        return self.bos + [int(self.text_tokens[item_idx])] + body + self._item2id_suffix

    def item2id(self, text: str, item_idx: int) -> Example:
        prompt = self.item2id_prompt(text, item_idx)
        target = self.identifier(item_idx)
        return Example(prompt + target, [IGNORE] * len(prompt) + target)

    # id2item ------------------------------------------------------------------------
    def id2item(self, item_idx: int, title: str) -> Example:
        prompt = self._id2item_prefix + self.identifier(item_idx) + self._id2item_suffix
        target = self._encode(" " + title)[: self.max_text_tokens] + [self.eos]
        return Example(prompt + target, [IGNORE] * len(prompt) + target)
