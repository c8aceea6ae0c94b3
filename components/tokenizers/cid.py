"""Collaborative identifiers (CID, Hua et al., 2023): hierarchical spectral clustering of the
item co-occurrence graph, so items consumed together share identifier prefixes.

The graph comes from training sequences only (adjacent items co-occur), so validation and
test targets never leak into identifiers. Each node of the hierarchy splits its items into
`codebook_size` clusters: regularised spectral embedding (Amini et al., 2013; it keeps a
graph of many small components well conditioned) + size-constrained k-means (plain k-means
leaves a few giant clusters whose leaves overflow into an extra level). Items isolated in
a subgraph (cold items among them) carry no signal, so they fill the smallest clusters,
which keeps the tree balanced instead of piling them into one colliding leaf.
"""

from __future__ import annotations

import heapq

import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigh
from scipy.sparse.linalg import LinearOperator, eigsh

from components.tokenizers.rqkmeans import balanced_kmeans

SPECTRAL_DIM = 32  # at most this many eigenvectors per split (k for a k-way split below it)
DENSE_BELOW = 1500  # subgraphs smaller than this use a dense eigensolver


def cooccurrence_graph(train_sequences: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Symmetric [n_items, n_items] counts of adjacent pairs in the training sequences."""
    pairs = [
        np.stack([s[:-1], s[1:]], axis=1) for s in map(np.asarray, train_sequences) if len(s) > 1
    ]
    if not pairs:
        return sp.csr_matrix((n_items, n_items))
    edges = np.concatenate(pairs).astype(np.int64)
    edges = edges[edges[:, 0] != edges[:, 1]]  # a repeated item is no evidence of similarity
    ones = np.ones(len(edges))
    graph = sp.coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(n_items, n_items))
    return (graph + graph.T).tocsr()


def _spectral_embedding(graph: sp.csr_matrix, dim: int, seed: int) -> np.ndarray:
    """Row-normalised top eigenvectors of the regularised normalised adjacency
    D_t^-1/2 (A + t/n 11^T) D_t^-1/2, t = mean degree (Ng-Jordan-Weiss embedding)."""
    n = graph.shape[0]
    degree = np.asarray(graph.sum(axis=1)).ravel()
    tau = degree.mean()
    scale = 1.0 / np.sqrt(degree + tau)
    dim = min(dim, n - 1)
    if n < DENSE_BELOW:
        matrix = scale[:, None] * (graph.toarray() + tau / n) * scale[None, :]
        vectors = eigh(matrix, subset_by_index=[n - dim, n - 1])[1]
    else:

        def matvec(v: np.ndarray) -> np.ndarray:
            v = v.reshape(-1)
            sv = scale * v
            return scale * (graph @ sv + tau / n * sv.sum())

        operator = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(seed).uniform(0.5, 1.0, n)
        vectors = eigsh(operator, k=dim, which="LA", v0=v0)[1]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _fill_smallest(labels: np.ndarray, n_isolated: int, k: int) -> np.ndarray:
    """Clusters for `n_isolated` signal-free items: each goes to the currently smallest one."""
    heap = [(count, c) for c, count in enumerate(np.bincount(labels, minlength=k))]
    heapq.heapify(heap)
    out = np.empty(n_isolated, dtype=np.int64)
    for i in range(n_isolated):
        count, c = heapq.heappop(heap)
        out[i] = c
        heapq.heappush(heap, (count + 1, c))
    return out


def _split(graph: sp.csr_matrix, k: int, seed: int) -> np.ndarray:
    """Cluster labels in [0, k) for the nodes of `graph` (more than k of them)."""
    n = graph.shape[0]
    connected = np.asarray((graph != 0).sum(axis=1)).ravel() > 0
    labels = np.empty(n, dtype=np.int64)
    warm = np.flatnonzero(connected)
    warm_labels = np.zeros(0, dtype=np.int64)
    if len(warm) > k:
        sub = graph[warm][:, warm]
        warm_labels = balanced_kmeans(
            _spectral_embedding(sub, min(k, SPECTRAL_DIM), seed), k, seed
        )[1]
    elif len(warm):
        warm_labels = np.arange(len(warm), dtype=np.int64)
    labels[warm] = warm_labels
    labels[~connected] = _fill_smallest(warm_labels, int((~connected).sum()), k)
    return labels


def cid_codes(
    train_sequences: list[np.ndarray], n_items: int, levels: int, codebook_size: int, seed: int
) -> np.ndarray:
    """Codes [n_items, levels]: level l splits each level-(l-1) cluster into codebook_size parts.

    A cluster small enough to give each item its own code stops splitting (deeper codes 0).
    """
    graph = cooccurrence_graph(train_sequences, n_items)
    codes = np.zeros((n_items, levels), dtype=np.int64)
    groups = [np.arange(n_items)]
    for level in range(levels):
        next_groups = []
        for members in groups:
            if len(members) <= codebook_size:
                codes[members, level] = np.arange(len(members))
                continue
            labels = _split(graph[members][:, members], codebook_size, seed + level)
            codes[members, level] = labels
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(codebook_size + 1))
            next_groups += [
                members[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a
            ]
        groups = next_groups
    return codes
