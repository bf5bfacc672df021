"""How isolated each item is, for collection cleaning: mis-scans, blank frames, wrong records.

An item's outlier score is 1 - the mean cosine of its OUTLIER_K nearest other items, read off the
neighbours table as it is built (no extra search). outliers.parquet keeps the KEPT most isolated
(every item of collections up to that size), most isolated first: row, id, score. numpy and
pyarrow only.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

OUTLIERS = "outliers.parquet"
OUTLIER_K = 10
KEPT = 1_000_000


def scores(neighbor_scores: np.ndarray, k: int = OUTLIER_K) -> np.ndarray:
    """Each row's outlier score from its neighbour list's scores (best first; NaN or -inf padding
    ignored; an item with no neighbour scores 2, the most isolated possible)."""
    block = np.asarray(neighbor_scores, np.float32)[:, :k]
    block = np.where(np.isfinite(block), block, np.nan)
    present = ~np.isnan(block)
    total = np.where(present, block, 0).sum(axis=1)
    count = present.sum(axis=1)
    mean = np.where(count > 0, total / np.maximum(count, 1), -1.0)
    return (1.0 - mean).astype(np.float32)


def most_isolated(rows: np.ndarray, values: np.ndarray, keep: int = KEPT) -> tuple[np.ndarray, np.ndarray]:
    """The `keep` highest scores, highest first (ties to the lower row)."""
    rows, values = np.asarray(rows, np.int64), np.asarray(values, np.float32)
    order = np.lexsort((rows, -values))[:keep]
    return rows[order], values[order]


def merge_most_isolated(parts: Sequence[tuple[np.ndarray, np.ndarray]], keep: int = KEPT
                        ) -> tuple[np.ndarray, np.ndarray]:
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return most_isolated(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), keep)


def table(rows: np.ndarray, values: np.ndarray, ids_of: Callable[[np.ndarray], np.ndarray]) -> pa.Table:
    names = ids_of(rows).tolist() if len(rows) else []
    return pa.table({"row": pa.array(rows, pa.int64()), "id": pa.array(names, pa.string()),
                     "score": pa.array(values, pa.float32())})


def report(count: int, kept: int) -> dict:
    """The manifest's `outliers`."""
    return {"k": OUTLIER_K, "kept": kept, "of": count,
            "score": f"1 - mean cosine of the {OUTLIER_K} nearest other items"}
