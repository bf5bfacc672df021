"""Coarse partitions for a sharded index: spherical k-means on a sample, and nearest centroids.

The vectors are unit length and the index scores by dot product, so the
partitions are made the same way: a point belongs to the centroid with the
largest dot product, and a centroid is the normalised mean of its points
(spherical k-means). Centroids are trained on a sample on one worker;
assigning every vector is then a matrix product per batch, anywhere. A
partition whose share of the sample says it would exceed the size a worker
can build is split in two (2-means on its own points) until none does, so
shards stay within the memory budget whatever the data's clusters look like.
numpy only.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

_BLOCK_ELEMENTS = 1 << 24  # dot products per block in assignment: 64 MiB of float32


def normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def nearest(vectors: np.ndarray, centroids: np.ndarray, count: int = 1) -> np.ndarray:
    """(n, count) int32: each vector's `count` nearest centroids by dot product, nearest first
    (ties to the lower centroid number), computed block by block."""
    n, k = len(vectors), len(centroids)
    count = min(count, k)
    out = np.empty((n, count), np.int32)
    step = max(1, _BLOCK_ELEMENTS // max(1, k))
    for start in range(0, n, step):
        sims = vectors[start:start + step] @ centroids.T
        if count == 1:
            out[start:start + step, 0] = np.argmax(sims, axis=1)
        else:
            out[start:start + step] = np.argsort(-sims, axis=1, kind="stable")[:, :count]
    return out


def assign(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) int32: each vector's nearest centroid."""
    return nearest(vectors, centroids, 1)[:, 0]


def train_centroids(sample: np.ndarray, k: int, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """k unit centroids (k-means++ seeding, then Lloyd iterations) for unit-length sample rows.

    A centroid left without points is moved to the point its centroid serves worst, so none
    stays empty while there are at least k distinct points."""
    sample = np.asarray(sample, np.float32)
    k = max(1, min(k, len(sample)))
    rng = np.random.default_rng(seed)
    centroids = _seed(sample, k, rng)
    for _ in range(iterations):
        labels = assign(sample, centroids)
        moved = _update(sample, labels, centroids)
        if not moved:
            break
    return centroids


def _seed(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ on the cosine distance 1 - dot."""
    chosen = [int(rng.integers(len(sample)))]
    best = 1.0 - sample @ sample[chosen[0]]
    for _ in range(1, k):
        weights = np.clip(best, 0, None) ** 2
        total = float(weights.sum())
        pick = int(rng.choice(len(sample), p=weights / total)) if total > 0 else int(rng.integers(len(sample)))
        chosen.append(pick)
        best = np.minimum(best, 1.0 - sample @ sample[pick])
    return sample[chosen].copy()


def _update(sample: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> bool:
    """One Lloyd step in place; True when any centroid moved."""
    k, dim = centroids.shape
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(labels, kind="stable")
    sums = np.zeros((k, dim), np.float32)
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[present]
    sums[present] = np.add.reduceat(sample[order], starts, axis=0)
    fresh = normalised(sums)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        served = np.einsum("ij,ij->i", sample, fresh[labels])
        worst = np.argsort(served, kind="stable")[:len(empty)]
        fresh[empty] = sample[worst]
    moved = not np.allclose(fresh, centroids, atol=1e-6)
    centroids[:] = fresh
    return moved


def split_oversized(sample: np.ndarray, centroids: np.ndarray, max_share: float, seed: int = 0,
                    max_centroids: Optional[int] = None) -> np.ndarray:
    """Centroids whose share of the sample exceeds max_share are replaced by two (2-means on their
    own points), repeatedly, until none does or a partition cannot be split further. Centroids
    that serve no sample point are dropped (they would be empty shards)."""
    centroids = np.array(centroids, np.float32)
    limit = max_centroids or 4 * len(centroids) + 64
    while True:
        labels = assign(sample, centroids)
        counts = np.bincount(labels, minlength=len(centroids))
        keep = counts > 0
        centroids, counts = centroids[keep], counts[keep]
        labels = assign(sample, centroids)
        over = [c for c in np.argsort(-counts, kind="stable") if counts[c] > max_share * len(sample)]
        if not over or len(centroids) >= limit:
            return centroids
        split = False
        for c in over:
            members = sample[labels == c]
            if not np.any(members != members[0]):
                continue  # identical points cannot be told apart
            pair = train_centroids(members, 2, seed=seed + int(c))
            centroids = np.concatenate([centroids[:c], pair[:1], centroids[c + 1:], pair[1:]])
            split = True
            break  # labels changed: recount
        if not split:
            return centroids
