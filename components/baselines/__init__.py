"""Non-generative peers for side-by-side comparison (same split, metrics and setting)."""

from components.baselines.sasrec import (
    SASRec,
    SASRecConfig,
    SASRecRun,
    recommend_sasrec,
    train_sasrec,
)

__all__ = ["SASRec", "SASRecConfig", "SASRecRun", "recommend_sasrec", "train_sasrec"]
