"""The output head of a model with item input tokens (`model.item_inputs`).

An item's own input token is a vocabulary row past the tokenizer's, read inside histories and
never a target. By default (`model.item_inputs_in_head: true`) the tied head still covers those
rows, so they are negatives of every target. With `false`, `OutputHead` takes the place of the
tied `lm_head` and multiplies by the rows below them only, so every path that reads the
model's logits (training, the beam searches, `sequence_log_probs`, a T5's forward, `generate`)
gets a softmax over what the model may produce, and the head does not grow with the
catalogue. The weight is the same tied Parameter under the same name (`lm_head.weight`), so the
model saves and loads as the stock one; `GenerativeRecommender` installs the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class OutputHead(torch.nn.Module):
    """`F.linear(x, weight[:size])`: logits over the first `size` vocabulary rows."""

    def __init__(self, weight: torch.nn.Parameter, size: int) -> None:
        super().__init__()
        if not 0 < size <= weight.shape[0]:
            raise ValueError(f"output size {size} outside the vocabulary's 1..{weight.shape[0]}")
        self.weight = weight
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[: self.size])

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.size} of {self.weight.shape[0]}"


def output_weight(model: torch.nn.Module) -> torch.Tensor:
    """The rows of `model.lm_head` the model's logits come from (all of a stock head's)."""
    head = model.lm_head
    return head.weight[: head.size] if isinstance(head, OutputHead) else head.weight


def set_output_size(model: torch.nn.Module, size: int | None) -> None:
    """Logits over the first `size` vocabulary rows (None: all of them, the stock head), with the
    weight the model's output embeddings have now (tied or not)."""
    get_head = getattr(model, "get_output_embeddings", None)  # any model without one: as is
    head = get_head() if get_head is not None else None
    if size is None:
        if isinstance(head, OutputHead):  # back to a stock Linear on the same weight
            stock = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0], bias=False)
            stock.weight = head.weight
            model.set_output_embeddings(stock)
        return
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output head to leave item rows out of")
    if isinstance(head, OutputHead):
        head.size = size
    else:
        if getattr(head, "bias", None) is not None:
            raise ValueError("an output head with a bias cannot leave out vocabulary rows")
        model.set_output_embeddings(OutputHead(head.weight, size))


def resize_vocabulary(model: torch.nn.Module, size: int) -> None:
    """`resize_token_embeddings(size)` (new rows zero: the caller fills them) on a stock head:
    transformers resizes nn.Linear heads only. The head is left stock; whoever owns the model
    (`GenerativeRecommender`) installs its `OutputHead` for the new vocabulary."""
    set_output_size(model, None)
    model.resize_token_embeddings(size, mean_resizing=False)
