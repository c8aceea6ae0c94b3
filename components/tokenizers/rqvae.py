"""RQ-VAE item tokenizer, as in TIGER (Rajput et al., 2023) and LC-Rec (Zheng et al., 2024).

An MLP encodes an item's text embedding to a small latent; L residual codebooks quantise it
(level l quantises what levels < l left over); an MLP decoder reconstructs the embedding.
Codebooks start from (size-constrained) k-means of the initial residuals (random init
leaves most codes dead), the encoder gets gradients through the straight-through
estimator, a commitment loss (beta) keeps latents near their codewords, and codes nobody
uses are periodically re-seeded from random residuals so the code space stays used.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from components.config import TokenizeConfig
from components.progress import progress
from components.tokenizers.rqkmeans import balanced_kmeans, squared_distances

# Training is capped at this many item presentations (epochs x items): a 100k-item catalogue
# then trains for 20 epochs instead of 200, and has still seen far more optimiser steps.
MAX_TRAINING_SAMPLES = 2_000_000
RESTART_EVERY = 10  # epochs between dead-code restarts ...
RESTART_UNTIL = 0.8  # ... during the first 80% of training, so the final codes can settle
INIT_SAMPLE = 20_000  # latents used for the k-means codebook initialisation
ENCODE_CHUNK = 8192


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(
        self, in_dim: int, hidden: list[int], latent_dim: int, levels: int, codebook_size: int
    ) -> None:
        super().__init__()
        self.encoder = _mlp([in_dim, *hidden, latent_dim])
        self.decoder = _mlp([latent_dim, *reversed(hidden), in_dim])
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, latent_dim) * 0.01)

    def quantize(
        self, z: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(straight-through quantised z, codes [n, L], VQ loss, residual entering each level)."""
        residual, quantized = z, torch.zeros_like(z)
        codes, residuals, loss = [], [], z.new_zeros(())
        for codebook in self.codebooks:
            residuals.append(residual)
            idx = torch.cdist(residual.detach(), codebook.detach()).argmin(dim=1)
            q = codebook[idx]
            # codebook loss moves codewords; commitment loss (beta) moves the encoder.
            loss = loss + ((residual.detach() - q) ** 2).sum(1).mean()
            loss = loss + beta * ((residual - q.detach()) ** 2).sum(1).mean()
            quantized = quantized + q
            residual = residual - q.detach()
            codes.append(idx)
        z_q = z + (quantized - z).detach()
        return z_q, torch.stack(codes, dim=1), loss, residuals

    def forward(self, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
        z_q, codes, vq_loss, _ = self.quantize(self.encoder(x), beta)
        recon = ((self.decoder(z_q) - x) ** 2).sum(1).mean()
        return recon + vq_loss, codes, {"recon": recon.item(), "vq": vq_loss.item()}


@torch.no_grad()
def _residuals(model: RQVAE, x: torch.Tensor) -> list[torch.Tensor]:
    return model.quantize(model.encoder(x), 0.0)[3]


@torch.no_grad()
def _init_codebooks(model: RQVAE, x: torch.Tensor, seed: int) -> None:
    """k-means on each level's residuals of (a sample of) the initial latents."""
    residual = model.encoder(x).numpy()
    for level, codebook in enumerate(model.codebooks):
        centers, labels = balanced_kmeans(residual, codebook.shape[0], seed + level)
        # Fewer points than codes: the spare codes start as copies and restarts re-seed them.
        rows = np.resize(np.arange(len(centers)), codebook.shape[0])
        codebook.copy_(torch.from_numpy(centers[rows]))
        residual = residual - centers[labels]


@torch.no_grad()
def _restart_dead_codes(
    model: RQVAE, usage: torch.Tensor, x: torch.Tensor, generator: torch.Generator
) -> int:
    """Re-seed codes unused since the last restart with random residuals of their level."""
    sample = x[torch.randperm(len(x), generator=generator)[:ENCODE_CHUNK]]
    restarted = 0
    for level, residual in enumerate(_residuals(model, sample)):
        dead = torch.nonzero(usage[level] == 0).flatten()
        if len(dead) == 0:
            continue
        pick = torch.randint(len(residual), (len(dead),), generator=generator)
        model.codebooks[level, dead] = residual[pick]
        restarted += len(dead)
    return restarted


def rqvae_codes(embeddings: np.ndarray, cfg: TokenizeConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train an RQ-VAE on the embeddings; return (codes [n, L], last-level distances [n, K], info).

    Deterministic under cfg.seed (CPU; the caller's torch thread count is kept).
    """
    codes, distances, info, _ = fit_rqvae(embeddings, cfg)
    return codes, distances, info


def fit_rqvae(
    embeddings: np.ndarray, cfg: TokenizeConfig
) -> tuple[np.ndarray, np.ndarray, dict, RQVAE]:
    """`rqvae_codes` plus the trained RQ-VAE (its encoder and codebooks encode new items)."""
    n = len(embeddings)
    epochs = min(cfg.rqvae_epochs, max(1, math.ceil(MAX_TRAINING_SAMPLES / n)))
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    generator = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = RQVAE(
            x.shape[1], cfg.rqvae_hidden, cfg.rqvae_latent_dim, cfg.levels, cfg.codebook_size
        )
    _init_codebooks(model, x[torch.randperm(n, generator=generator)[:INIT_SAMPLE]], cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.rqvae_lr)
    usage = torch.zeros(cfg.levels, cfg.codebook_size, dtype=torch.long)
    restarted, losses = 0, {"recon": math.nan, "vq": math.nan}
    for epoch in progress(range(1, epochs + 1), desc="rq-vae", unit="epoch"):
        totals, batches = {"recon": 0.0, "vq": 0.0}, 0
        for batch in torch.randperm(n, generator=generator).split(cfg.rqvae_batch_size):
            loss, codes, parts = model(x[batch], cfg.rqvae_beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for level in range(cfg.levels):
                usage[level] += torch.bincount(codes[:, level], minlength=cfg.codebook_size)
            totals = {k: totals[k] + parts[k] for k in totals}
            batches += 1
        losses = {k: v / batches for k, v in totals.items()}
        if epoch % RESTART_EVERY == 0 and epoch <= RESTART_UNTIL * epochs:
            restarted += _restart_dead_codes(model, usage, x, generator)
            usage.zero_()

    model.eval()
    codes, distances = [], []
    with torch.no_grad():
        last_codebook = model.codebooks[-1].numpy()
        for chunk in x.split(ENCODE_CHUNK):
            _, chunk_codes, _, residuals = model.quantize(model.encoder(chunk), 0.0)
            codes.append(chunk_codes.numpy())
            distances.append(
                squared_distances(residuals[-1].numpy(), last_codebook, cfg.codebook_size)
            )
    info = {
        "epochs_run": epochs,
        "final_recon_loss": losses["recon"],
        "final_vq_loss": losses["vq"],
        "dead_codes_restarted": restarted,
    }
    return np.concatenate(codes).astype(np.int64), np.concatenate(distances), info, model
