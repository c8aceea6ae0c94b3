"""The output head of a model with item input tokens (`model.item_inputs`).

An item's own input token is a vocabulary row past the tokenizer's, read inside histories and
never a target. `model.item_inputs_in_head` says which softmax covers those rows:

- `true`: training and decoding alike (the stock tied `lm_head`): every item row is a negative
  of every target, which keeps it apart from what the model predicts;
- `training` (the default): the training loss does, decoding does not: the rows regularise as
  above, and the beam searches, `sequence_log_probs`, a T5's forward and `generate` get a
  softmax over what the model may produce, with a head that does not grow with the catalogue
  (identical top-k to `true` on MovieLens within 0.0004 NDCG@10, many times faster on 100,000
  items);
- `false`: neither.

`OutputHead` takes the place of the tied `lm_head` for the last two: its rows follow the module's
mode, `training_size` in training (`model.train()`), `size` in evaluation (`model.eval()`, as
every decoding path sets). The weight is the same tied Parameter under the same name
(`lm_head.weight`), so the model saves and loads as the stock one; `GenerativeRecommender`
installs the head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class OutputHead(torch.nn.Module):
    """`F.linear(x, weight[:rows])`: logits over the first `size` vocabulary rows in evaluation
    mode, the first `training_size` (None: all of them) in training mode."""

    def __init__(
        self, weight: torch.nn.Parameter, size: int, training_size: int | None = None
    ) -> None:
        super().__init__()
        vocab = weight.shape[0]
        for rows in (size, training_size):
            if rows is not None and not 0 < rows <= vocab:
                raise ValueError(f"output size {rows} outside the vocabulary's 1..{vocab}")
        self.weight = weight
        self.size = size
        self.training_size = training_size

    @property
    def rows(self) -> int:
        """How many rows the logits cover in the module's current mode."""
        if self.training:
            return self.weight.shape[0] if self.training_size is None else self.training_size
        return self.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[: self.rows])

    def extra_repr(self) -> str:
        training = "all" if self.training_size is None else self.training_size
        return (
            f"in_features={self.weight.shape[1]}, out_features={self.size} of "
            f"{self.weight.shape[0]} (training: {training})"
        )


@dataclass(frozen=True)
class ItemRows:
    """Where a model's item input tokens are: vocabulary rows `base` .. `base + count - 1`, item
    i's at `base + i`; each item reads in a history as `levels` tokens, its own token last."""

    base: int
    count: int
    levels: int


def item_rows(model: torch.nn.Module) -> ItemRows | None:
    """The model's item rows (set by `GenerativeRecommender` with `model.item_inputs`), or None."""
    return getattr(model, "siit_item_rows", None)


def trains_item_rows(in_head: bool | str) -> bool:
    """Whether `model.item_inputs_in_head` puts the item rows in the training softmax (`true`
    and `training` train alike; they differ in decoding only)."""
    return in_head is not False


def output_weight(model: torch.nn.Module) -> torch.Tensor:
    """The rows of `model.lm_head` the model's logits come from now (all of a stock head's)."""
    head = model.lm_head
    return head.weight[: head.rows] if isinstance(head, OutputHead) else head.weight


def set_output_size(
    model: torch.nn.Module, size: int | None, training_size: int | None = None
) -> None:
    """Logits over the first `size` vocabulary rows in evaluation mode and `training_size` in
    training mode (None: all of them; both None: the stock head), with the weight the model's
    output embeddings have now (tied or not)."""
    get_head = getattr(model, "get_output_embeddings", None)  # any model without one: as is
    head = get_head() if get_head is not None else None
    if size is None and training_size is None:
        if isinstance(head, OutputHead):  # back to a stock Linear on the same weight
            stock = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0], bias=False)
            stock.weight = head.weight
            model.set_output_embeddings(stock)
        return
    if size is None:
        raise ValueError(
            "item rows can be left out of decoding alone, or of both; not of training alone"
        )
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output head to leave item rows out of")
    if isinstance(head, OutputHead):
        head.size, head.training_size = size, training_size
    else:
        if getattr(head, "bias", None) is not None:
            raise ValueError("an output head with a bias cannot leave out vocabulary rows")
        new = OutputHead(head.weight, size, training_size)
        new.train(head.training)
        model.set_output_embeddings(new)


@contextmanager
def training_rows(model: torch.nn.Module) -> Iterator[None]:
    """The training loss's rows while the model is in evaluation mode (dropout off), for
    losses that must be the one training computes (`TrainingSession.seqrec_loss`)."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, OutputHead):
        yield
        return
    was = head.training
    head.train(True)
    try:
        yield
    finally:
        head.train(was)


def resize_vocabulary(model: torch.nn.Module, size: int) -> None:
    """`resize_token_embeddings(size)` (new rows zero: the caller fills them) on a stock head:
    transformers resizes nn.Linear heads only. The head is left stock; whoever owns the model
    (`GenerativeRecommender`) installs its `OutputHead` for the new vocabulary."""
    set_output_size(model, None)
    model.resize_token_embeddings(size, mean_resizing=False)
