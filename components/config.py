"""Strict configuration: `params.yaml` parsed into frozen pydantic models.

A typo in a parameter file is an error, not a silent default (`extra="forbid"`).
Every stage reads the whole file but only depends (in dvc.yaml) on its own section.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ColumnNames(Strict):
    """Column names in the user's files, mapped onto the data contract."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = "rating"


class FilesSource(Strict):
    """User-provided interaction and item tables (CSV/TSV/Parquet/JSONL)."""

    interactions: str = ""
    items: str = ""
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"
    columns: ColumnNames = ColumnNames()
    text_columns: list[str] = Field(default_factory=lambda: ["title"])
    title_column: str = "title"


class AmazonSource(Strict):
    """Amazon-reviews format: 5-core reviews + item metadata, JSON lines, optionally gzipped."""

    reviews: str = ""
    metadata: str = ""


class SyntheticSource(Strict):
    n_users: int = Field(300, gt=0)
    n_items: int = Field(120, gt=1)
    n_clusters: int = Field(6, gt=0)
    mean_length: int = Field(16, gt=3)
    drift: float = Field(0.15, ge=0.0, le=1.0)
    seed: int = 0


class DataConfig(Strict):
    source: Literal["movielens100k", "files", "amazon", "synthetic"] = "movielens100k"
    files: FilesSource = FilesSource()
    amazon: AmazonSource = AmazonSource()
    synthetic: SyntheticSource = SyntheticSource()
    min_sequence_length: int = Field(
        3, ge=3, description="users with fewer interactions fail validation"
    )
    max_history: int = Field(20, gt=0)


class TokenizeConfig(Strict):
    method: Literal["rqvae", "rqkmeans", "cid", "random"] = "rqvae"
    levels: int = Field(3, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    seed: int = 42
    encoder: str = "all-MiniLM-L6-v2"
    # RQ-VAE
    rqvae_epochs: int = Field(200, ge=1)
    rqvae_hidden: list[int] = Field(default_factory=lambda: [256, 128])
    rqvae_latent_dim: int = Field(32, ge=1)
    rqvae_lr: float = Field(1e-3, gt=0)
    rqvae_beta: float = Field(0.25, ge=0)
    rqvae_batch_size: int = Field(256, gt=0)
    new_items: Literal["tokenizer", "model"] = Field(
        "tokenizer",
        description="champion start: identifiers of items absent from the champion's map, from "
        "its fitted initial tokenizer (no refit) or from the champion's own beam search on text",
    )


class ModelConfig(Strict):
    profile: Literal["tiny", "pretrained"] = "tiny"
    # tiny profile: a small model trained from scratch
    architecture: Literal["llama", "t5"] = Field(
        "llama",
        description="tiny profile: llama (decoder-only) or t5 (encoder-decoder: the prompt to "
        "the encoder, the identifier or title as the decoder's target)",
    )
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(512, gt=0)
    text_vocab_size: int = Field(1000, ge=100)
    dropout: float = Field(
        0.1, ge=0, lt=1, description="llama: attention dropout; t5: its dropout (all of it)"
    )
    residual_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="tiny llama: dropout on embeddings, attention and MLP outputs; t5, whose "
        "model.dropout already covers those outputs, and the pretrained profile ignore it",
    )
    # pretrained profile
    name_or_path: str = "smollm2-135m"
    trust_remote_code: bool = False
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    code_softmax: bool = Field(
        False,
        description="identifier tokens: the softmax (training loss and decoding) covers the "
        "target's level's codes only, as per-level vocabularies (TIGER) do: the output head "
        "and cross-entropy shrink from the whole vocabulary to one codebook; saved with the "
        "model (text targets, train.tasks.id2item, need it off)",
    )
    item_inputs: bool = Field(
        True,
        description="tiny profile (the pretrained one reads histories as identifiers): every "
        "history item reads as its identifier's leading codes followed by a token of its own "
        "(one learned embedding per item, as SASRec's), in place of its last code; what the "
        "model generates is still the identifier. A history then reads the same whatever "
        "identifiers refinement gives its items; saved with the model",
    )
    item_inputs_in_head: bool | Literal["training"] = Field(
        "training",
        description="with item_inputs, which output softmax covers the item rows (never "
        "targets): true: training and decoding; training: the training loss only, where as "
        "negatives they keep each item's row apart from what the model predicts (better on "
        "validation on MovieLens than false), while decoding and refinement score over what "
        "the model may produce with a head that does not grow with the catalogue (a large one "
        "decodes many times faster; top-k as true's within noise); false: neither; saved "
        "with the model",
    )

    item_rows_init: Literal["random", "text"] = Field(
        "text",
        description="with item_inputs, how a model trained from scratch starts its item rows "
        "(input and, tied, output): random (as every other row) or text: the principal "
        "components of the items' text embeddings (tokenize.encoder), scaled to the random "
        "rows' spread, so that items with similar text start close together as the "
        "tokenizer's identifiers do (+2.5% on validation over random, 5 paired seeds); a "
        "champion start keeps the champion's rows; models without item rows ignore it",
    )

    code_rows_init: Literal["random", "text"] = Field(
        "random",
        description="how a tiny model trained from scratch starts its identifier tokens' rows "
        "(input and, tied, output): random, or text: from the text embeddings "
        "(tokenize.encoder) of the items that hold each code in the initial map, read as "
        "residual quantisation reads codes (a first-level code: its items' mean; a deeper "
        "code: its items' mean after the mean of the items sharing their earlier codes is "
        "taken away), in the principal components item_rows_init uses, scaled to each "
        "level's random spread; codes no item holds stay random; a champion start keeps the "
        "champion's rows (on MovieLens: faster for two epochs, then 2.8% lower on validation, 5 seeds)",
    )

    text_token: bool = Field(
        False,
        description="tiny Llama without item_inputs: every item2id prompt carries one more "
        "input token, the item's own, whose row is its text embedding (tokenize.encoder) in "
        "the principal components item_rows_init uses, fixed while training (never a target, "
        "never in a history): the model reads each item's text as the sentence encoder does "
        "besides its title's tokens, so what it proposes for an item's text follows the "
        "items of similar text. For models whose identifiers are their only item "
        "representation; a champion start is refused (the rows are one catalogue's); saved "
        "with the model",
    )

    @property
    def rows_from_text(self) -> bool:
        """Whether a model trained from scratch starts its item rows from the items' text
        (`item_rows_init: text` where there are item rows: tiny profile, `item_inputs`)."""
        return self.item_rows_init == "text" and self.item_inputs and self.profile == "tiny"

    @property
    def codes_from_text(self) -> bool:
        """Whether a model trained from scratch starts its identifier rows from the items'
        text (`code_rows_init: text`, tiny profile)."""
        return self.code_rows_init == "text" and self.profile == "tiny"

    @model_validator(mode="after")
    def _text_token_needs_a_tiny_llama(self) -> ModelConfig:
        if self.text_token and not (
            self.profile == "tiny" and self.architecture == "llama" and not self.item_inputs
        ):
            raise ValueError(
                "model.text_token needs the tiny Llama without item input rows (model.profile "
                f"tiny, model.architecture llama, model.item_inputs false; here {self.profile}, "
                f"{self.architecture}, item_inputs {self.item_inputs})"
            )
        return self

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})"
            )
        return self

    @model_validator(mode="after")
    def _t5_is_tiny(self) -> ModelConfig:
        if self.architecture != "t5":
            return self
        if self.profile != "tiny":
            raise ValueError(
                "model.architecture t5 is a tiny-profile model trained from scratch; the "
                "pretrained profile loads the causal LM named by model.name_or_path (use "
                "model.architecture: llama with it)"
            )
        return self


class TaskWeights(Strict):
    seqrec: float = Field(1.0, ge=0)
    item2id: float = Field(5.0, ge=0)
    id2item: float = Field(0.0, ge=0)


class WarmStartConfig(Strict):
    """Budget and schedule of a champion start (`train.start: champion`)."""

    epochs: int = Field(2, ge=1, description="epochs trained from the champion (all rounds)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (cosine schedule)")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    refine_after: list[int] = Field(
        default_factory=list,
        description="train_siit: epochs after which to refine, e.g. [1]; [] = no refinement",
    )
    min_overlap: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of the champion's items that must still be in the catalogue, else "
        "the champion is for other data and the run starts from scratch",
    )

    @model_validator(mode="after")
    def _refine_inside_budget(self) -> WarmStartConfig:
        after = self.refine_after
        if any(b <= a for a, b in zip([0, *after], [*after, self.epochs], strict=True)):
            raise ValueError(
                f"train.warm.refine_after ({after}) must be increasing epochs in "
                f"1..{self.epochs - 1} (train.warm.epochs = {self.epochs})"
            )
        return self


class TrainConfig(Strict):
    epochs: int = Field(6, ge=1, description="total epoch budget (all rounds)")
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    tasks: TaskWeights = TaskWeights()
    window_stride: int = Field(
        0,
        ge=0,
        description="seqrec windows: targets trained per window after the first (each sees at "
        "most data.max_history items); 0 = about half a history (a target costs ~2 items of "
        "forward pass), data.max_history = windows overlapping by one item (~1); banded: 0 = "
        "twice a history (~1.5), any number",
    )
    banded: bool = Field(
        False,
        description="seqrec windows longer than a history with banded attention: every target "
        "sees exactly its last data.max_history items, as in evaluation (decoder-only tiny "
        "profile; other models train on plain windows)",
    )
    band_min: int = Field(
        0,
        ge=0,
        description="banded windows in training: each target's band is drawn per step, "
        "uniformly from band_min to data.max_history items (varied context, as plain windows "
        "give); 0 = always data.max_history",
    )
    item_loss: float = Field(
        1.0,
        ge=0,
        description="with model.item_inputs on the tiny Llama (ignored by other models): every "
        "seqrec target also trains a "
        "next-item cross-entropy over the item rows (SASRec's objective, on the position that "
        "predicts the item's first code; the rows are the items' tied input embeddings), with "
        "this weight against a label token's 1; decoding still generates identifiers; 0 = off "
        "(1.0: chosen on validation under two held out, 8 paired seeds, docs/experiments.md step 24)",
    )
    hold_out_last: int = Field(
        2,
        ge=0,
        description="each user's last n training items are not trained on (no target, no "
        "context): they stay the newest items of validation's history, which the model then "
        "never saw in that user's context, as test's newest items are (bench/split_distance.py)"
        "; 2 (the default): validation's two newest history items are as new to the model as "
        "test's two (the held-out item and validation's target); true/1: the last one; "
        "false/0: every training item trained on",
    )
    seed: int = 42
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch default")
    concurrent: bool = Field(
        True,
        description="the `train` stage trains the static and the SIIT model at the same time, "
        "each in its own process on half the CPU threads (same results); false: one after "
        "the other",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA and on CPUs with native bf16 (else fp32; "
        "SIIT_TRAIN_PRECISION decides when set); fp32 or bf16: the same choice on every machine",
    )
    start: Literal["scratch", "champion"] = Field(
        "scratch",
        description="champion: warm start from the registered champion (falls back to scratch "
        "when there is none or it is incompatible)",
    )
    champion: str = Field(
        "",
        description="champion start: a model folder (model/, token_map.parquet, item_encoder/); "
        "empty = the registry alias `champion` of tracking.registered_model",
    )
    warm: WarmStartConfig = WarmStartConfig()


class SiitConfig(Strict):
    """Self-improving rounds. `train.epochs` is the total budget of both static and SIIT runs:
    the map is refined after the epochs in `refine_after` (default: `rounds` refinements evenly
    spaced), and identifiers stay frozen after the last one."""

    rounds: int = Field(2, ge=0)
    refine_after: list[int] = Field(
        default_factory=list,
        description="epochs after which to refine, e.g. [2, 4]; empty: evenly spaced",
    )
    signal: Literal["text", "context", "mixed", "rows"] = Field(
        "text",
        description="text: the item's text prompt (item2id); context: the mean log-probability "
        "over training histories whose next item it is; mixed: a weighted sum; rows (tiny "
        "Llama with model.item_inputs): the mean over the training histories after which the "
        "model's item rows expect the item most",
    )
    context_weight: float = Field(0.5, ge=0, le=1, description="weight of context when mixed")
    contexts_per_item: int = Field(4, ge=1, description="training histories scored per item")
    contexts_from: Literal["trained", "held_out"] = Field(
        "trained",
        description="context/mixed: which histories score an item. trained: those the model "
        "trains on (it has learnt the current identifier there); held_out: those before the "
        "items train.hold_out_last keeps out of training (the model never saw them lead to the "
        "item: cross-fitted), and only items with such a history may move",
    )
    row_pool: int = Field(
        8192,
        ge=1,
        description="rows: how many training histories (drawn uniformly over the training "
        "next-item positions) the item rows rank for every item",
    )
    background_contexts: int = Field(
        0,
        ge=0,
        description="context/mixed: subtract the mean log-probability over this many random "
        "training histories (pointwise mutual information: what an item's histories predict "
        "more than any history does, not the popular items' identifiers); 0 = off",
    )
    background_weight: float = Field(
        1.0,
        ge=0,
        le=1,
        description="how much of the background is subtracted: 1 = pointwise mutual information "
        "(favours identifiers no history predicts), 0 = none (favours popular ones)",
    )
    fixed_levels: int = Field(
        0, ge=0, description="leading identifier levels kept from the current map"
    )
    text_holdout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="text/mixed: this share of the items (a fold of a fixed random order, "
        "another fold each round) is left out of the item2id task during the epochs before "
        "a refinement, and only those items may move in it: their text proposals are the "
        "model's generalisation from the other items' texts, not its memory of the current "
        "map; 0 = off",
    )
    min_gain: float = Field(
        0.5, ge=0, description="score gain (nats) over the current identifier needed to move"
    )
    free_candidates: bool = Field(
        False,
        description="the beam search proposes only identifiers that no item holds (an item's "
        "own stays an option of its own): a favourite that is another item's cannot be taken, "
        "and 90-97% of the favourites are; false = any identifier",
    )
    candidates: int = Field(10, ge=1, description="top-B identifiers kept per item")
    beam_size: int = Field(20, ge=1)
    diversity: float = Field(1.0, ge=0, description="load-aware penalty strength; 0 = off")
    diversity_scope: Literal["level", "prefix"] = Field(
        "level",
        description="what the load-aware penalty counts. level: each code's use on its level; "
        "prefix: a code's use under the beam's prefix against an even share of that prefix's "
        "items (items spread over a prefix's children; the same as level at the first level)",
    )
    assignment: Literal["greedy", "exact", "balanced"] = Field(
        "greedy",
        description="how the items' candidates become unique identifiers. greedy: best score "
        "first; exact: the largest total score (bipartite matching); balanced: best first, each "
        "candidate's score less the load penalty (siit.diversity, counted per prefix as "
        "diversity_scope prefix does) of the identifiers already placed, so that items do not "
        "crowd the prefixes they all prefer",
    )
    max_churn: float = Field(
        1.0, gt=0, le=1, description="cap on the fraction of items changing per round"
    )
    min_churn: float = Field(0.01, ge=0, le=1, description="stop refining once churn falls below")
    batch_size: int = Field(32, gt=0)
    effect_windows: int = Field(
        2048,
        ge=0,
        description="immediate effect: the training windows (a fixed random sample of this many, "
        "drawn with train.seed) whose seqrec loss is scored with the old and the refined map; "
        "0 = every window",
    )
    text_coherence: bool = Field(
        True,
        description="each refinement's text coherence before and after (how much identifiers "
        "sharing a prefix are items of similar text; components.tokenizers.text_coherence), "
        "in rounds.csv and MLflow: needs the items' text embeddings (tokenize.encoder), "
        "computed once if the tokenize stage did not",
    )
    retrain: bool = Field(
        False,
        description="train-refine-retrain: the co-trained rounds are a probe that makes the "
        "map; after them a fresh model (static's start: same seed and initialisation) trains "
        "on the final map for the whole budget, validated as static is, and the model kept is "
        "that model's best epoch. Twice the training compute. Scratch starts only (a champion "
        "start keeps its warm model); false = the co-trained model is the SIIT model",
    )


class EvaluateConfig(Strict):
    beam_size: int = Field(20, ge=1)
    every_epoch: bool = Field(
        True, description="validate after every epoch and keep the best epoch (else per round)"
    )
    top_k: int = Field(10, ge=1)
    exclude_seen: bool = True
    batch_size: int = Field(128, gt=0)
    item_weight: float = Field(
        5.0,
        ge=0,
        description="with model.item_inputs on the tiny Llama (ignored by other models), with "
        "train.item_loss: the beam's "
        "beam_size leaves re-ranked by identifier log-probability + item_weight x the item "
        "rows' log-probability (the generative shortlist re-scored; evaluation, best-epoch "
        "choice and serving alike); 0 = the beam's own order (5: chosen on validation)",
    )
    row_candidates: int = Field(
        20,
        ge=0,
        description="with item_weight > 0: the shortlist re-ranked also holds the item rows' "
        "best row_candidates unseen items the beam did not reach, scored alike (their "
        "identifiers' log-probability, teacher-forced); 0 = the beam's leaves alone (20: "
        "chosen on validation)",
    )

    @model_validator(mode="after")
    def _beam_covers_top_k(self) -> EvaluateConfig:
        if self.beam_size < self.top_k:
            raise ValueError(
                f"evaluate.beam_size ({self.beam_size}) must be >= evaluate.top_k ({self.top_k})"
            )
        return self


class TrackingConfig(Strict):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "siit"
    registered_model: str = "siit-recommender"


class Params(Strict):
    data: DataConfig = DataConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    siit: SiitConfig = SiitConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _epochs_split_into_rounds(self) -> Params:
        epochs, after = self.train.epochs, self.siit.refine_after
        if after:
            if len(after) != self.siit.rounds:
                raise ValueError(
                    f"siit.refine_after ({after}) lists {len(after)} refinements but "
                    f"siit.rounds is {self.siit.rounds}: they must agree"
                )
            if any(b <= a for a, b in zip([0, *after], [*after, epochs], strict=True)):
                raise ValueError(
                    f"siit.refine_after ({after}) must be increasing epochs in 1..{epochs - 1} "
                    f"(train.epochs = {epochs})"
                )
        elif epochs % (self.siit.rounds + 1):
            raise ValueError(
                f"train.epochs ({epochs}) must be a multiple of siit.rounds + 1 "
                f"({self.siit.rounds + 1}) when siit.refine_after is empty: each round trains "
                "the same number of epochs"
            )
        if self.siit.signal == "rows" and not (
            self.model.profile == "tiny"
            and self.model.architecture == "llama"
            and self.model.item_inputs
        ):
            raise ValueError(
                "siit.signal rows ranks histories by the model's item rows: it needs the tiny "
                "Llama with item input rows (model.profile tiny, model.architecture llama, "
                "model.item_inputs true)"
            )
        if self.siit.text_holdout > 0 and (
            self.siit.signal not in ("text", "mixed") or self.train.tasks.item2id <= 0
        ):
            raise ValueError(
                f"siit.text_holdout ({self.siit.text_holdout}) holds items out of the item2id "
                "task that the text signal reads: it needs siit.signal text or mixed and "
                f"train.tasks.item2id > 0 (signal {self.siit.signal!r}, item2id "
                f"{self.train.tasks.item2id})"
            )
        if self.siit.contexts_from == "held_out" and (
            self.siit.signal not in ("context", "mixed") or self.train.hold_out_last <= 0
        ):
            raise ValueError(
                "siit.contexts_from held_out scores items on the histories before the training "
                "items train.hold_out_last keeps out of training: it needs siit.signal context "
                f"or mixed and train.hold_out_last > 0 (signal {self.siit.signal!r}, "
                f"hold_out_last {self.train.hold_out_last})"
            )
        if self.siit.fixed_levels >= self.tokenize.levels:
            raise ValueError(
                f"siit.fixed_levels ({self.siit.fixed_levels}) must be below tokenize.levels "
                f"({self.tokenize.levels}): at least one level must be free to change"
            )
        if self.train.band_min > self.data.max_history:
            raise ValueError(
                f"train.band_min ({self.train.band_min}) must be at most data.max_history "
                f"({self.data.max_history})"
            )
        if self.model.code_softmax and self.train.tasks.id2item > 0:
            raise ValueError(
                "model.code_softmax normalises over identifier tokens only; the id2item task "
                f"(train.tasks.id2item {self.train.tasks.id2item}) has text targets: set it to 0"
            )
        if self.train.window_stride > self.data.max_history and not self.train.banded:
            raise ValueError(
                f"train.window_stride ({self.train.window_stride}) must be at most "
                f"data.max_history ({self.data.max_history}): no target may see more history "
                "than evaluation gives it, nor be skipped (train.banded windows may be longer)"
            )
        return self

    def round_epochs(self) -> list[int]:
        """Epochs trained in each round (round 0 uses the initial map)."""
        if self.siit.refine_after:
            bounds = [0, *self.siit.refine_after, self.train.epochs]
            return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return [self.train.epochs // (self.siit.rounds + 1)] * (self.siit.rounds + 1)

    def warm_round_epochs(self) -> list[int]:
        """Epochs of each round of a champion start (`train.warm`)."""
        bounds = [0, *self.train.warm.refine_after, self.train.warm.epochs]
        return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class ConfigError(ValueError):
    """A parameter file that does not match the schema."""


def load_params(path: str | Path = "params.yaml") -> Params:
    """Parse and check a parameter file; any problem is a ConfigError naming each bad key,
    the value given and what is allowed."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        with path.open(encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: invalid parameters"]
        lines += [f"  {describe_error(err)}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    outside = _local_path_outside_project(params.tracking.uri)
    if outside is not None:
        raise ConfigError(
            f"{path}: invalid parameters\n  tracking.uri: {params.tracking.uri!r} writes outside "
            f"the project ({outside}); allowed: a path inside {Path.cwd()}, or a server URL "
            "(http://...); set MLFLOW_TRACKING_URI to write elsewhere on purpose"
        )
    return params


def _local_path_outside_project(uri: str) -> Path | None:
    """The file a local tracking URI (sqlite:///, file:, a bare path) writes, if it lies
    outside the project (the working directory, where every stage writes); else None."""
    scheme, _, rest = uri.partition(":")
    if not rest or len(scheme) == 1:  # a bare path (or a Windows drive letter)
        local = uri
    elif scheme == "sqlite":
        local = rest.removeprefix("///")
        if local in ("", ":memory:"):
            return None
    elif scheme == "file":
        local = rest.removeprefix("//")
    else:
        return None  # a server: http(s), databricks, ...
    root = Path.cwd().resolve()
    target = (root / Path(local).expanduser()).resolve()
    return None if target.is_relative_to(root) else target


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (safe_load
    silently keeps the last one: a second `train:` section would replace the first)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in the same mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def describe_error(err: dict) -> str:
    """'<key>: <value> is not allowed: <pydantic's reason>; allowed: <type and range>'."""
    loc = [p for p in err["loc"] if isinstance(p, str)]
    key = ".".join(str(p) for p in err["loc"]) or "(parameters)"
    message = str(err["msg"]).removeprefix("Value error, ")
    owner, field = _locate(loc)
    if err["type"] == "extra_forbidden" and owner is not None:
        allowed = list(owner.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{key}: unknown key; {hint}allowed keys here: {', '.join(allowed)}"
    nested = field is not None and (
        isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    )
    if field is None or (nested and err["type"] == "value_error"):
        return f"{key}: {message}"  # a rule across keys: the message names them
    given = err.get("input")
    shown = repr(given) if not isinstance(given, dict | list) else type(given).__name__
    return f"{key}: {shown} is not allowed: {message}; allowed: {_allowed(field)}"


def _locate(loc: list[str]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """(the model holding the last key of `loc`, that key's field), as far as they exist."""
    model: type[BaseModel] | None = Params
    field: FieldInfo | None = None
    for i, part in enumerate(loc):
        if model is None or part not in model.model_fields:
            return (model if i == len(loc) - 1 else None), None
        field = model.model_fields[part]
        annotation = field.annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return None, field


def _allowed(field: FieldInfo) -> str:
    """A field's type and range in words: 'an integer >= 3', 'one of greedy, exact', ..."""
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(v) for v in get_args(annotation))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is list:
        inner = names.get(args[0], "values") if args else "values"
        kind = f"a list of {inner.removeprefix('an ').removeprefix('a ')}s"
    elif args and type(None) in get_args(annotation):
        kind = f"{names.get(args[0], str(args[0]))} or null"
    else:
        kind = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = []
    for meta in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sign} {getattr(meta, attr)}")
    return f"{kind} {' and '.join(bounds)}".strip()
