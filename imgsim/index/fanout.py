"""Fan-out over shards and merging what they answer: candidate lists and their top-k merge.

A query goes to the shards whose centroids are nearest to it (`route`); each
shard answers with its own best k, scored exactly (the shards re-order with
float32 vectors, or score by brute force), so answers from different shards
compare and the merge keeps the k best by score, ties to the lower row. The
same merge is the combiner that assembles neighbour lists from partial lists
computed on different workers. numpy only.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import numpy as np

from imgsim.index.kmeans import nearest


@dataclasses.dataclass(frozen=True)
class Candidates:
    """For m queries, up to k candidates each, best first: global rows (-1 where there is none),
    exact scores (-inf where there is none) and, optionally, the candidates' ids."""

    rows: np.ndarray  # int64 (m, k)
    scores: np.ndarray  # float32 (m, k)
    ids: Optional[np.ndarray] = None  # object (m, k); None where there is no candidate

    @classmethod
    def empty(cls, m: int, k: int, with_ids: bool = False) -> "Candidates":
        return cls(np.full((m, k), -1, np.int64), np.full((m, k), -np.inf, np.float32),
                   np.full((m, k), None, object) if with_ids else None)

    @property
    def valid(self) -> np.ndarray:
        return self.rows >= 0

    def __len__(self) -> int:
        return len(self.rows)


def merge(parts: Iterable[Candidates], k: int) -> Candidates:
    """The k best candidates of each query over all parts (the same queries in the same order, and
    disjoint candidates: shards never share an item), by score, ties to the lower row."""
    parts = list(parts)
    with_ids = all(p.ids is not None for p in parts)
    width = sum(p.rows.shape[1] for p in parts)
    if width < k:
        parts.append(Candidates.empty(len(parts[0]), k - width, with_ids))
    rows = np.concatenate([p.rows for p in parts], axis=1)
    scores = np.where(rows >= 0, np.concatenate([p.scores for p in parts], axis=1), -np.inf)
    # lexsort sorts by its last key first: score (descending), then row; padding sorts last
    order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -scores), axis=1)[:, :k]
    ids = np.take_along_axis(np.concatenate([p.ids for p in parts], axis=1), order, 1) if with_ids else None
    return Candidates(np.take_along_axis(rows, order, 1),
                      np.take_along_axis(scores, order, 1).astype(np.float32), ids)


def route(queries: np.ndarray, centroids: np.ndarray, shards_to_search: int) -> np.ndarray:
    """(n, s): the shards each query is sent to, nearest centroid first."""
    return nearest(queries, centroids, shards_to_search)


def without_own(found: np.ndarray, scores: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A searcher's answers (its rows, -1 where none; their scores) with each query's own row
    (own: -1 or outside where the query is no row of it) left out: the kept answers first, in
    score order, then -1 and -inf."""
    keep = (found >= 0) & (found != own[:, None])
    order = np.argsort(~keep, axis=1, kind="stable")
    kept = np.take_along_axis(keep, order, 1)
    return (np.where(kept, np.take_along_axis(found, order, 1), -1),
            np.where(kept, np.take_along_axis(scores, order, 1), -np.inf).astype(np.float32))


def scatter(found_rows: np.ndarray, found_scores: np.ndarray, offset: int, k: int,
            found_ids: Optional[np.ndarray] = None) -> Candidates:
    """A shard's answers (its own row numbers, -1 or missing columns where it had fewer) as
    Candidates with global rows (shard offset + row), k wide."""
    found_rows = np.asarray(found_rows, np.int64).reshape(len(found_rows), -1)
    found_scores = np.asarray(found_scores, np.float32).reshape(len(found_scores), -1)
    out = Candidates.empty(len(found_rows), k, found_ids is not None)
    width = min(k, found_rows.shape[1])
    local = found_rows[:, :width]
    valid = local >= 0
    out.rows[:, :width] = np.where(valid, local + offset, -1)
    out.scores[:, :width] = np.where(valid, found_scores[:, :width], -np.inf)
    if found_ids is not None:
        out.ids[:, :width] = np.where(valid, found_ids[np.where(valid, local, 0)], None)
    return out
