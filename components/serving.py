"""The served recommender: user histories (item ids) in, top-k item ids with scores out.

`Recommender` is plain Python around the trained LM, its text tokenizer and the token map;
`SiitPyfunc` wraps it as an MLflow pyfunc model (`tracking.log_recommender` logs it with the
weights, tokenizer files, token map and `serving.json`), so `mlflow models serve` answers
`/invocations` with it.

Request: a table with one row per user.
- `history` (required): the user's items, oldest first, as a list of item ids (strings or
  integers; they are compared as strings).
- `k` (optional, per row): how many items to return; the `k` param (`"params": {"k": 5}`)
  sets it for every row; default `serving.json: default_k` (evaluate.top_k).
- `user_id` (optional): echoed back.

Answer, one row per request row: `item_ids` (best first), `scores` (the log-probability of
each item's identifier after the history; with `serving.json: item_weight` > 0, from
evaluate.item_weight, that plus item_weight x the item's log-probability among the item rows,
the beam's leaves re-ranked by it, with `serving.json: row_candidates` > 0 beside the item
rows' best items the beam missed), `k` (the k used), `unknown_item_ids` (history ids not in
the catalogue), and `user_id` when given.

Edge cases (the documented answers; nothing here is an HTTP 500):
- empty history: the model's recommendations after an empty history (a new user);
- unknown item ids: left out of the prompt and listed in `unknown_item_ids`; a history of
  unknown ids only is answered as an empty one;
- items in the history are never recommended back; the answer holds min(k, catalogue size -
  distinct known history items) items;
- k larger than the catalogue: capped at the catalogue size (`k` in the answer says so);
- k not a positive integer, a missing `history` column, a history that is not a list, an
  unknown column: a `RequestError` (HTTP 400 from the server, message only, no traceback);
  a body that is not valid JSON is rejected by MLflow's server with HTTP 400 as well.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.paths import MODEL_DIR, TOKEN_MAP_FILE

SERVING_CONFIG = "serving.json"
REQUEST_COLUMNS = ("history", "k", "user_id")
OUTPUT_COLUMNS = ("item_ids", "scores", "k", "unknown_item_ids")
BEAM_BUDGET = 4096  # prompts x beams decoded at once (bounds memory for large k)


class RequestError(ValueError):
    """A request the model cannot answer as sent: the caller's mistake (HTTP 400)."""


@dataclass(frozen=True)
class ServingConfig:
    default_k: int = 10
    beam_size: int = 20
    max_history: int = 20
    batch_size: int = 64
    item_weight: float = 0.0  # evaluate.item_weight: the beam's leaves re-scored by item rows
    row_candidates: int = 0  # evaluate.row_candidates: the item rows' best missed items too

    @classmethod
    def read(cls, path: str | Path) -> ServingConfig:
        raw = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        fields = cls.__dataclass_fields__
        return cls(
            **{k: float(v) if k == "item_weight" else int(v) for k, v in raw.items() if k in fields}
        )

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.__dict__, indent=2))


@dataclass(frozen=True)
class Request:
    histories: list[list[str]]
    ks: list[int]
    user_ids: list[str] | None


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return isinstance(value, float) and math.isnan(value)
    except TypeError:
        return False


def _as_k(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise RequestError(f"{where}: k must be a positive integer, got {value!r}")
    try:
        k = int(value)
        exact = float(value) == k
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{where}: k must be a positive integer, got {value!r}") from None
    if not exact or k < 1:
        raise RequestError(f"{where}: k must be a positive integer, got {value!r}")
    return k


def _as_history(value: Any, row: int) -> list[str]:
    if _is_missing(value):
        return []
    if isinstance(value, str):
        try:  # CSV bodies carry the list as a JSON string
            value = json.loads(value)
        except ValueError:
            raise RequestError(
                f"row {row}: history must be a list of item ids, got the string {value!r}"
            ) from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise RequestError(
            f"row {row}: history must be a list of item ids, got {type(value).__name__}"
        )
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int | np.integer):
            if isinstance(item, float) and item.is_integer():
                item = int(item)
            else:
                raise RequestError(
                    f"row {row}: item ids are strings or integers, got {item!r} "
                    f"({type(item).__name__})"
                )
        out.append(str(item))
    return out


def parse_request(frame: Any, params: Mapping[str, Any] | None, default_k: int) -> Request:
    """A pandas DataFrame (or a list of records / a column dict) -> histories and ks."""
    import pandas as pd

    if isinstance(frame, Mapping):
        frame = pd.DataFrame(dict(frame))
    elif isinstance(frame, list):
        frame = pd.DataFrame(frame)
    if not isinstance(frame, pd.DataFrame):
        raise RequestError(f"expected a table with a 'history' column, got {type(frame).__name__}")
    unknown = [str(c) for c in frame.columns if c not in REQUEST_COLUMNS]
    if unknown:
        raise RequestError(
            f"unknown column(s) {unknown}; a request has 'history' and optionally 'k', 'user_id'"
        )
    if "history" not in frame.columns:
        raise RequestError("missing column 'history' (a list of item ids per user)")
    params = dict(params or {})
    extra = sorted(set(params) - {"k"})
    if extra:
        raise RequestError(f"unknown param(s) {extra}; the only param is 'k'")
    base_k = default_k if _is_missing(params.get("k")) else _as_k(params["k"], "params")
    histories = [_as_history(v, i) for i, v in enumerate(frame["history"].tolist())]
    if "k" in frame.columns:
        ks = [
            base_k if _is_missing(v) else _as_k(v, f"row {i}")
            for i, v in enumerate(frame["k"].tolist())
        ]
    else:
        ks = [base_k] * len(histories)
    user_ids = (
        [None if _is_missing(u) else str(u) for u in frame["user_id"].tolist()]
        if "user_id" in frame.columns
        else None
    )
    return Request(histories, ks, user_ids)


class Recommender:
    """The trained LM + tokenizer + token map, answering histories of item ids."""

    def __init__(self, rec, token_map, config: ServingConfig) -> None:
        import torch

        from components.model.decoding import PrefixTrie

        self.rec = rec
        self.rec.model.eval()
        self.config = config
        self.item_ids = list(token_map.item_ids)
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.prompts = rec.prompt_builder(token_map.codes)
        self.trie = PrefixTrie.from_codes(token_map.codes, rec.codebook_sizes).to(rec.device)
        self.item_codes = torch.tensor(np.asarray(token_map.codes), dtype=torch.long)

    @classmethod
    def load(cls, model_dir: str | Path, token_map: str | Path, config: ServingConfig):
        from components.model.recommender import GenerativeRecommender
        from components.tokenizers.token_map import TokenMap

        return cls(GenerativeRecommender.load(model_dir), TokenMap.load(token_map), config)

    @classmethod
    def from_bundle(cls, path: str | Path) -> Recommender:
        """A directory holding model/, token_map.parquet and serving.json."""
        path = Path(path)
        return cls.load(
            path / MODEL_DIR, path / TOKEN_MAP_FILE, ServingConfig.read(path / SERVING_CONFIG)
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def recommend(self, histories: list[list[str]], ks: list[int]) -> list[dict[str, Any]]:
        """One answer per history (see the module docstring)."""
        known, unknown = [], []
        for history in histories:
            idx = [self.index[i] for i in history if i in self.index]
            known.append(np.asarray(idx, dtype=np.int64))
            unknown.append([i for i in history if i not in self.index])
        ks = [min(int(k), self.n_items) for k in ks]
        answers: list[dict[str, Any]] = [{} for _ in histories]
        order = sorted(range(len(histories)), key=lambda r: (ks[r], len(known[r])))
        start = 0
        while start < len(order):
            k = ks[order[start]]
            width = max(self.config.beam_size, k)
            rows_per_batch = max(1, min(self.config.batch_size, BEAM_BUDGET // width))
            rows = [r for r in order[start : start + rows_per_batch] if ks[r] == k]
            items, scores = self._decode([known[r] for r in rows], k, width)
            for r, it, sc in zip(rows, items, scores, strict=True):
                answers[r] = {
                    "item_ids": [self.item_ids[i] for i in it],
                    "scores": [float(s) for s in sc],
                    "k": k,
                    "unknown_item_ids": unknown[r],
                }
            start += len(rows)
        return answers

    def _decode(
        self, histories: list[np.ndarray], k: int, width: int
    ) -> tuple[list[list[int]], list[list[float]]]:
        import torch

        from components.model.decoding import rescored_beam_search

        device = self.rec.device
        prompts = [self.prompts.seqrec_prompt(h[-self.config.max_history :]) for h in histories]
        exclude = torch.zeros((len(histories), self.n_items), dtype=torch.bool, device=device)
        for row, h in enumerate(histories):
            if len(h):
                exclude[row, torch.as_tensor(h, device=device)] = True
        with torch.inference_mode():
            result = rescored_beam_search(
                self.rec.model,
                prompts,
                self.rec.code_token_ids,
                self.trie,
                beam_size=width,
                top_k=k,
                pad_id=self.rec.tokenizer.pad_token_id or 0,
                exclude=exclude,
                item_weight=self.config.item_weight,
                item_codes=self.item_codes,
                row_candidates=self.config.row_candidates,
            )
        leaves = result.leaves.cpu().numpy()
        scores = result.scores.float().cpu().numpy()
        items, out_scores = [], []
        for row in range(len(histories)):
            keep = (leaves[row] >= 0) & np.isfinite(scores[row])
            items.append(leaves[row][keep].tolist())
            out_scores.append(scores[row][keep].tolist())
        return items, out_scores

    def predict(self, frame: Any, params: Mapping[str, Any] | None = None):
        """The pyfunc contract: a request table -> a pandas DataFrame of answers."""
        import pandas as pd

        request = parse_request(frame, params, self.config.default_k)
        answers = self.recommend(request.histories, request.ks)
        out = pd.DataFrame(answers, columns=list(OUTPUT_COLUMNS))
        if request.user_ids is not None:
            out.insert(0, "user_id", request.user_ids)
        return out


def ndcg_at_k(ranked: list[list[str]], targets: list[str], k: int = 10) -> float:
    """Mean NDCG@k of one target per user (leave-one-out): 1/log2(rank + 1) where found."""
    total = 0.0
    for items, target in zip(ranked, targets, strict=True):
        top = list(items[:k])
        if target in top:
            total += 1.0 / math.log2(top.index(target) + 2)
    return total / max(1, len(targets))


try:  # the pyfunc wrapper needs MLflow; the recommender itself does not
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object


class SiitPyfunc(_PythonModel):
    """MLflow pyfunc: `predict(table, params={"k": ...})` -> top-k item ids + scores."""

    _skip_type_hint_validation = True  # the request is checked here (parse_request)

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        self.recommender = Recommender.load(
            artifacts["model"],
            artifacts["token_map"],
            ServingConfig.read(artifacts["serving_config"]),
        )

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException

        try:
            return self.recommender.predict(model_input, params)
        except RequestError as exc:  # a 400 with a message, no stack trace
            raise MlflowException.invalid_parameter_value(str(exc)) from None
