"""The collection's 2-D map: PCA, then a UMAP-style layout of the index's own neighbour graph; clusters.

Why not umap-learn or openTSNE: both compute a k-nearest-neighbour graph of
their own (approximately) before laying it out, and umap-learn brings numba,
llvmlite, pynndescent and scikit-learn, whose JIT compilation alone costs tens
of seconds in every fresh process. The index artifact already holds the exact
top-k neighbours of every item (neighbors.parquet, in the full embedding
space), which is the expensive half of UMAP. What is left is UMAP's layout
optimisation (attraction along graph edges, repulsion from random points,
with UMAP's curve a, b for min_dist 0.1), which vectorises in numpy: a pass
over all edges costs a few numpy operations, so the whole layout is linear in
the number of items. BENCHMARKS.md compares it with PCA, umap-learn and
openTSNE (time, and how many of each item's 10 nearest neighbours stay among
its 10 nearest on the map).

- `Pca`: principal components of the unit vectors, fitted by streaming the
  covariance (a 4096x4096 matrix at most; the vectors are never all in memory
  at full width), projecting to 50 dimensions.
- `layout`: the map, initialised from the first two components (so it is
  deterministic for a seed and starts from the global shape).
- `clusters`: k-means in the 50-d space, for colouring the map.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import numpy as np

PCA_DIMS = 50
GRAPH_K = 10
# UMAP's curve 1 / (1 + a d^(2b)) for min_dist=0.1, spread=1 (umap.umap_.find_ab_params).
_A, _B = 1.577, 0.8951
_NEGATIVE_SAMPLES = 3


@dataclasses.dataclass
class Pca:
    """Principal components fitted from batches of vectors (streamed: rows never all held)."""

    mean: np.ndarray
    components: np.ndarray  # (dims, d)

    @classmethod
    def fit(cls, batches: Iterable[np.ndarray], dims: int = PCA_DIMS) -> "Pca":
        total, count, scatter = None, 0, None
        for batch in batches:
            x = np.asarray(batch, dtype=np.float64)
            if total is None:
                total, scatter = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
            total += x.sum(axis=0)
            scatter += x.T @ x
            count += len(x)
        if not count:
            raise ValueError("no vectors to project")
        mean = total / count
        covariance = scatter / count - np.outer(mean, mean)
        values, vectors = np.linalg.eigh(covariance)
        order = np.argsort(values)[::-1][:min(dims, len(values))]
        return cls(mean.astype(np.float32), vectors[:, order].T.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) @ self.components.T


def layout(projected: np.ndarray, neighbors: np.ndarray, epochs: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """(n, 2) float32 map positions from PCA-projected vectors and the (n, k) neighbour rows (-1: none)."""
    n = len(projected)
    y = _initial(projected, seed).astype(np.float32)
    if n < 3:
        return y
    k = min(GRAPH_K, neighbors.shape[1]) if neighbors.ndim == 2 and neighbors.shape[1] else 0
    if not k:
        return y
    heads = np.repeat(np.arange(n, dtype=np.int64), k)
    tails = neighbors[:, :k].astype(np.int64).ravel()
    keep = (tails >= 0) & (tails != heads)
    heads, tails = heads[keep], tails[keep]
    if not len(heads):
        return y
    epochs = epochs or (200 if n <= 20_000 else 100 if n <= 200_000 else 50)
    rng = np.random.default_rng(seed)
    degree = np.bincount(heads, minlength=n) + np.bincount(tails, minlength=n)
    scale = (1.0 / np.maximum(degree, 1)[:, None]).astype(np.float32)
    for epoch in range(epochs):
        rate = 1.0 - epoch / epochs
        push = np.zeros_like(y)
        # attraction along the graph's edges, both ends
        d = y[heads] - y[tails]
        d2 = np.einsum("ij,ij->i", d, d)
        d2b = np.power(np.maximum(d2, np.float32(1e-12)), np.float32(_B))
        coef = np.float32(-2.0 * _A * _B) * d2b / np.maximum(d2, np.float32(1e-12)) / (1.0 + np.float32(_A) * d2b)
        g = np.clip(coef[:, None] * d, -4.0, 4.0)
        _accumulate(push, heads, g)
        _accumulate(push, tails, -g)
        # repulsion from random points
        sources = np.repeat(heads, _NEGATIVE_SAMPLES) if _NEGATIVE_SAMPLES > 1 else heads
        others = rng.integers(0, n, size=len(sources))
        d = y[sources] - y[others]
        d2 = np.einsum("ij,ij->i", d, d)
        coef = np.float32(2.0 * _B) / ((np.float32(0.001) + d2) * (1.0 + np.float32(_A) * np.power(d2, np.float32(_B))))
        g = np.clip(coef[:, None] * d, -4.0, 4.0)
        _accumulate(push, sources, g)
        y += np.float32(rate * 4.0) * push * scale
    return y.astype(np.float32)


def clusters(projected: np.ndarray, count: int, seed: int = 0, iterations: int = 20,
             sample: int = 50_000) -> np.ndarray:
    """k-means cluster numbers (0..count-1), fitted on a sample, assigned to every row."""
    n = len(projected)
    count = max(1, min(count, n))
    rng = np.random.default_rng(seed)
    x = np.asarray(projected, dtype=np.float32)
    fit = x[rng.choice(n, size=min(n, sample), replace=False)] if n > sample else x
    centres = fit[rng.choice(len(fit), size=count, replace=False)].copy()
    for _ in range(iterations):
        labels = _nearest(fit, centres)
        for c in range(count):
            members = fit[labels == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    return np.concatenate([_nearest(x[i:i + 65536], centres) for i in range(0, n, 65536)]).astype(np.int32)


def neighbourhood_kept(positions: np.ndarray, neighbors: np.ndarray, k: int = 10, sample: int = 1000,
                       seed: int = 0) -> float:
    """The share of each sampled item's k nearest neighbours (neighbour rows, best first) that are
    among its k nearest on the map: how faithful the map is locally (1.0 = perfectly)."""
    n = len(positions)
    k = min(k, neighbors.shape[1], n - 1)
    if k < 1:
        return 1.0
    rows = np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False)
    kept = total = 0
    for row in rows:
        true = neighbors[row, :k]
        true = set(true[true >= 0].tolist())
        d = np.sum((positions - positions[row]) ** 2, axis=1)
        d[row] = np.inf
        near = set(np.argpartition(d, k)[:k].tolist())
        kept += len(true & near)
        total += len(true)
    return kept / max(total, 1)


def _initial(projected: np.ndarray, seed: int) -> np.ndarray:
    n = len(projected)
    if projected.ndim == 2 and projected.shape[1] >= 2:
        y = np.array(projected[:, :2], dtype=np.float64)
    else:
        y = np.zeros((n, 2))
    spread = y.std(axis=0)
    y = (y - y.mean(axis=0)) / np.where(spread > 0, spread, 1.0) * 3.0
    jitter = np.random.default_rng(seed).normal(scale=1e-3, size=y.shape)
    return y + jitter


def _accumulate(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    n = len(out)
    out[:, 0] += np.bincount(index, weights=values[:, 0], minlength=n).astype(np.float32)
    out[:, 1] += np.bincount(index, weights=values[:, 1], minlength=n).astype(np.float32)


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (x * x).sum(axis=1)[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(axis=1)[None, :]
    return np.argmin(d, axis=1)
