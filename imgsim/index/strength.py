"""How strong a similarity is, in this collection's own terms: a score a person can read.

Cosine scores mean different things in different collections (between 0.4 and 0.75 for nearly
every neighbour of one museum's paintings), so a score is told as its percentile among every
item's neighbour scores, recorded when the index is built (a histogram, added up part by part,
whatever builds the neighbours table), and as a label: `near-duplicate` at or above the index's
duplicate threshold, else by percentile `very strong` (top 10%), `strong` (top 30%), `moderate`
(top 60%) or `weak`. The explorer and the API answer with both. numpy only.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

BINS = 4000  # over cosine -1..1: a bin is 0.0005 wide
LABELS = ((90.0, "very strong"), (70.0, "strong"), (40.0, "moderate"), (0.0, "weak"))


def histogram(scores: np.ndarray) -> np.ndarray:
    """Counts of the finite scores in BINS bins over [-1, 1] (int64)."""
    values = np.asarray(scores, np.float64).ravel()
    values = values[np.isfinite(values)]
    counts, _ = np.histogram(np.clip(values, -1.0, 1.0), bins=BINS, range=(-1.0, 1.0))
    return counts.astype(np.int64)


def quantiles(counts: Sequence[int], points: int = 101) -> list[float]:
    """The scores at 0, 1, ..., 100 percent of a histogram (the manifest's neighbors.score_quantiles)."""
    counts = np.asarray(counts, np.float64)
    if not counts.sum():
        return []
    cumulative = np.cumsum(counts) / counts.sum()
    edges = np.linspace(-1.0, 1.0, BINS + 1)
    targets = np.linspace(0.0, 1.0, points)
    at = np.searchsorted(cumulative, targets, side="left").clip(0, BINS - 1)
    values = edges[at + 1]
    values[0] = edges[np.flatnonzero(counts)[0]]  # 0%: the lowest score's bin starts, not the first bin's end
    return [round(float(v), 4) for v in values]


def percentile(score: float, score_quantiles: Sequence[float]) -> Optional[float]:
    """score's percentile among the recorded neighbour scores (None when none were recorded)."""
    if not score_quantiles:
        return None
    q = np.asarray(score_quantiles, np.float64)
    return round(float(np.interp(score, q, np.linspace(0.0, 100.0, len(q)), left=0.0, right=100.0)), 1)


def strength(score: float, score_quantiles: Sequence[float], duplicate: Optional[float]) -> Optional[dict]:
    """{"percentile", "label"} of a similarity score, or None for an index built before strengths."""
    share = percentile(score, score_quantiles)
    if share is None:
        return None
    if duplicate is not None and score >= duplicate:
        return {"percentile": share, "label": "near-duplicate"}
    return {"percentile": share, "label": next(label for floor, label in LABELS if share >= floor)}
