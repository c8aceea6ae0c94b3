"""The fitted initial tokenizer, kept so that items that arrive later get identifiers from the
very same codebooks (no refit): RQ-VAE (encoder MLP + residual codebooks), residual k-means
(the centroids of each level) or random codes (a per-item draw, as the random baseline).

Saved as `item_encoder.json` (method, sizes, shapes) + `item_encoder.safetensors` (tensors).
Co-occurrence identifiers (`cid`) have no encoder: a new item has no co-occurrences yet.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from components.config import TokenizeConfig
from components.io import atomic_dir

CONFIG_FILE = "item_encoder.json"
WEIGHTS_FILE = "item_encoder.safetensors"
ENCODER_METHODS = ("rqvae", "rqkmeans", "random")


@dataclass(frozen=True, eq=False)
class ItemEncoder:
    """Encodes item embeddings (rqvae, rqkmeans) or item ids (random) into codes [m, levels]."""

    method: str
    codebook_sizes: tuple[int, ...]
    text_encoder: str
    seed: int
    config: dict = field(default_factory=dict)  # rqvae: in_dim, hidden, latent_dim
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def needs_embeddings(self) -> bool:
        return self.method in ("rqvae", "rqkmeans")

    # construction -----------------------------------------------------------------------
    @classmethod
    def from_rqvae(cls, model: torch.nn.Module, in_dim: int, cfg: TokenizeConfig) -> ItemEncoder:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return cls(
            "rqvae",
            (cfg.codebook_size,) * cfg.levels,
            cfg.encoder,
            cfg.seed,
            {
                "in_dim": in_dim,
                "hidden": list(cfg.rqvae_hidden),
                "latent_dim": cfg.rqvae_latent_dim,
            },
            state,
        )

    @classmethod
    def from_rqkmeans(cls, codebooks: list[np.ndarray], cfg: TokenizeConfig) -> ItemEncoder:
        tensors = {
            f"codebook.{lvl}": torch.from_numpy(np.ascontiguousarray(c))
            for lvl, c in enumerate(codebooks)
        }
        return cls(
            "rqkmeans", (cfg.codebook_size,) * cfg.levels, cfg.encoder, cfg.seed, {}, tensors
        )

    @classmethod
    def random(cls, cfg: TokenizeConfig) -> ItemEncoder:
        return cls("random", (cfg.codebook_size,) * cfg.levels, cfg.encoder, cfg.seed)

    # encoding -----------------------------------------------------------------------------
    def encode(
        self, item_ids: list[str], embeddings: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(codes [m, levels], last-level costs [m, codebook_sizes[-1]] or None); lower cost =
        nearer codeword, the order in which colliding items try other last-level codes."""
        if self.method == "random":
            codes = (
                np.stack(
                    [
                        np.random.default_rng([self.seed, _id_number(i)]).integers(
                            0, self.codebook_sizes, size=self.levels
                        )
                        for i in item_ids
                    ]
                )
                if item_ids
                else np.zeros((0, self.levels), dtype=np.int64)
            )
            return codes.astype(np.int64), None
        if embeddings is None or len(embeddings) != len(item_ids):
            got = "none" if embeddings is None else len(embeddings)
            raise ValueError(
                f"{self.method} encoder needs one embedding per item ({len(item_ids)}); got {got}"
            )
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if self.method == "rqvae":
            return self._encode_rqvae(x)
        return self._encode_rqkmeans(x)

    def _encode_rqvae(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from components.tokenizers.rqkmeans import squared_distances
        from components.tokenizers.rqvae import RQVAE

        cfg = self.config
        if x.shape[1] != cfg["in_dim"]:
            raise ValueError(
                f"embeddings have {x.shape[1]} dimensions, the RQ-VAE was fitted on {cfg['in_dim']} "
                f"(text encoder {self.text_encoder!r})"
            )
        model = RQVAE(
            cfg["in_dim"], cfg["hidden"], cfg["latent_dim"], self.levels, self.codebook_sizes[0]
        )
        model.load_state_dict(self.tensors)
        model.eval()
        with torch.no_grad():
            _, codes, _, residuals = model.quantize(model.encoder(torch.from_numpy(x)), 0.0)
            last = residuals[-1].numpy()
        distances = squared_distances(
            last, model.codebooks[-1].detach().numpy(), self.codebook_sizes[-1]
        )
        return codes.numpy().astype(np.int64), distances

    def _encode_rqkmeans(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from components.tokenizers.rqkmeans import squared_distances

        residual = x.copy()
        codes = np.zeros((len(x), self.levels), dtype=np.int64)
        distances = np.zeros((len(x), self.codebook_sizes[-1]), dtype=np.float32)
        for level in range(self.levels):
            centers = self.tensors[f"codebook.{level}"].numpy()
            if centers.shape[1] != x.shape[1]:
                raise ValueError(
                    f"embeddings have {x.shape[1]} dimensions, the codebooks {centers.shape[1]} "
                    f"(text encoder {self.text_encoder!r})"
                )
            d = squared_distances(residual, centers, self.codebook_sizes[level])
            codes[:, level] = d.argmin(axis=1)
            if level == self.levels - 1:
                distances = d
            residual -= centers[codes[:, level]]
        return codes, distances

    # persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        with atomic_dir(Path(path)) as tmp:
            meta = {
                "method": self.method,
                "codebook_sizes": list(self.codebook_sizes),
                "text_encoder": self.text_encoder,
                "seed": self.seed,
                "config": self.config,
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
            if self.tensors:
                save_file(dict(self.tensors), str(tmp / WEIGHTS_FILE))

    @classmethod
    def load(cls, path: str | Path) -> ItemEncoder:
        path = Path(path)
        config_file = path / CONFIG_FILE
        if not config_file.exists():
            raise FileNotFoundError(f"{path}: not a saved item encoder ({CONFIG_FILE} missing)")
        meta = json.loads(config_file.read_text())
        weights = path / WEIGHTS_FILE
        tensors = load_file(str(weights)) if weights.exists() else {}
        if meta["method"] != "random" and not tensors:
            raise FileNotFoundError(f"{path}: {WEIGHTS_FILE} missing for method {meta['method']!r}")
        return cls(
            meta["method"],
            tuple(meta["codebook_sizes"]),
            meta["text_encoder"],
            int(meta["seed"]),
            meta.get("config", {}),
            tensors,
        )


def _id_number(item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(str(item_id).encode()).digest()[:8], "little")
