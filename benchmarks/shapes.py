"""Synthetic collections with the shapes that make nearest-neighbour search hard: Gaussian clusters
around random unit centres, of a chosen tightness (what items of one cluster share).

- dense: ~0.98, so that any two items of a cluster have cosine ~0.96: every cluster one large
  near-duplicate group (product shots on white, blank scans);
- narrow: items of a cluster have cosine ~0.9 with its centre (near-duplicate families);
- isotropic: ~0.5 (a cluster's neighbours are nearly equidistant);
- wide: ~0.2 (clusters overlap; most of a vector is noise).
Also used by the tests (tests/test_served_recall.py), at small sizes.
"""
from __future__ import annotations

import numpy as np

CENTRE_COSINE = {"dense": 0.98, "narrow": 0.9, "isotropic": 0.5, "wide": 0.2}


def shaped(n: int, dim: int, shape: str, clusters: int = 200, seed: int = 0) -> np.ndarray:
    """n unit float32 vectors in `clusters` clusters of the given shape."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cosine = CENTRE_COSINE[shape]
    sigma = np.sqrt((1 / cosine ** 2 - 1) / dim)  # noise of norm tan(angle) around a unit centre
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 65536):  # bounded temporaries at millions of rows
        m = min(n, start + 65536) - start
        v = centres[rng.integers(0, clusters, m)] + sigma * rng.normal(size=(m, dim))
        out[start:start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out
