"""Where every stage reads and writes, relative to the project root (one place, used by dvc.yaml too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# A model folder (artifacts/models/<name>/, a registered or served model): its layout.
MODEL_DIR = "model"  # the weights and tokenizer
TOKEN_MAP_FILE = "token_map.parquet"  # the identifiers the model was trained with
RECORD_FILE = "warm_start.json"  # what a later champion start checks compatibility against
ITEM_ENCODER_DIR = "item_encoder"  # the fitted initial tokenizer, for items that come later


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def embeddings_cache(self) -> Path:
        return self.root / "data" / "embeddings"

    @property
    def token_maps(self) -> Path:
        return self.root / "artifacts" / "token_maps"

    @property
    def initial_token_map(self) -> Path:
        return self.root / "artifacts" / "tokenize" / "token_map.parquet"

    @property
    def item_encoder(self) -> Path:
        """The fitted initial tokenizer (encodes items that arrive later)."""
        return self.root / "artifacts" / "tokenize" / "item_encoder"

    @property
    def champion(self) -> Path:
        """Where a champion start downloads the registry's champion."""
        return self.root / "artifacts" / "champion"

    @property
    def siit_token_maps(self) -> Path:
        """round_000.parquet (the initial map) ... round_R.parquet of the SIIT run."""
        return self.token_maps

    @property
    def models(self) -> Path:
        return self.root / "artifacts" / "models"

    @property
    def checkpoints(self) -> Path:
        return self.root / "artifacts" / "checkpoints"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def model_dir(self, name: str) -> Path:
        return self.models / name

    def model_report(self, name: str) -> Path:
        """Per-model evaluation written by its training stage."""
        return self.reports / "models" / f"{name}.json"

    def rounds_csv(self, name: str) -> Path:
        return (
            self.reports / "rounds.csv"
            if name == "siit"
            else self.reports / "models" / f"{name}_rounds.csv"
        )

    def model_recommendations(self, name: str) -> Path:
        return self.reports / "models" / f"{name}_recommendations_test.parquet"

    def model_valid_ranks(self, name: str) -> Path:
        """Each validation user's target rank for every candidate of the best-epoch choice."""
        return self.reports / "models" / f"{name}_valid_ranks.parquet"
