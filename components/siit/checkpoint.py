"""Resumable run state: everything needed to continue at the next round, in one folder.

Written atomically after every round (model, optimizer/scheduler, current codes, the best
round's model and map, the history so far). A fingerprint of the inputs and parameters
guards against resuming a run that was started with something else.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from components.io import atomic_dir, atomic_write_bytes
from components.model.recommender import GenerativeRecommender

STATE_FILE = "state.json"
logger = logging.getLogger(__name__)


@dataclass
class RunState:
    fingerprint: str
    next_round: int = 0
    best_round: int = -1
    best_epoch: int = -1
    best_score: float = -1.0
    converged: bool = False
    mlflow_run_id: str | None = None
    history: list[dict] = field(default_factory=list)
    parts: dict[str, str] = field(default_factory=dict)  # data / params / code fingerprints
    # every candidate the best model was chosen from, in order: {epoch, map_round, ranks},
    # ranks the per-user validation target ranks (1-based, 0 = not in the top-k)
    valid_ranks: list[dict] = field(default_factory=list)
    # siit.retrain: the round of the map the fresh model trains on, once its training started
    retrain_map: int = -1


class RunCheckpoint:
    """Folder layout: state.json, model/, trainer.pt, codes.npy, best/ (model + codes.npy), maps/."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load_state(self, fingerprint: str, parts: dict[str, str] | None = None) -> RunState | None:
        """The saved state when it belongs to this exact run (same data, parameters and code),
        else None: the run starts over, and the log says which of them changed."""
        state_file = self.path / STATE_FILE
        if not state_file.exists():
            return None
        state = RunState(**json.loads(state_file.read_text()))
        if state.fingerprint == fingerprint:
            return state
        changed = sorted(k for k in (parts or {}) if state.parts.get(k) != parts[k])
        logger.warning(
            "not resuming from %s: it was written with other %s; starting over",
            self.path,
            " and ".join(changed) if changed else "inputs (data, parameters or code)",
        )
        return None

    def save(
        self,
        state: RunState,
        rec: GenerativeRecommender,
        trainer_state: dict,
        codes: np.ndarray,
        maps: dict[str, bytes],
        best: tuple[GenerativeRecommender, np.ndarray] | None,
    ) -> None:
        """Atomically replace the checkpoint; `best` is None when the best round is unchanged."""
        previous_best = self.path / "best"
        with atomic_dir(self.path) as tmp:
            rec.save(tmp / "model")
            buf = _torch_bytes(trainer_state)
            atomic_write_bytes(tmp / "trainer.pt", buf)
            np.save(tmp / "codes.npy", codes)
            (tmp / "maps").mkdir()
            for name, data in maps.items():
                (tmp / "maps" / name).write_bytes(data)
            if best is not None:
                best[0].save(tmp / "best" / "model")
                np.save(tmp / "best" / "codes.npy", best[1])
            elif previous_best.exists():
                shutil.copytree(previous_best, tmp / "best")
            (tmp / STATE_FILE).write_text(json.dumps(state.__dict__, indent=2))

    def model_dir(self) -> Path:
        return self.path / "model"

    def trainer_state(self) -> dict:
        return torch.load(self.path / "trainer.pt", weights_only=True, map_location="cpu")

    def codes(self) -> np.ndarray:
        return np.load(self.path / "codes.npy")

    def maps(self) -> dict[str, bytes]:
        folder = self.path / "maps"
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*"))} if folder.exists() else {}

    def best(self) -> tuple[Path, np.ndarray]:
        return self.path / "best" / "model", np.load(self.path / "best" / "codes.npy")

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _torch_bytes(obj: dict) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
