"""Exact neighbours, near-duplicate groups and recall, with numpy only.

All of it works on unit-length float32 rows, so a matrix product gives
cosine similarities. The all-pairs pass goes block by block (bounded memory)
and yields both the top-k table and the pairs above the duplicate threshold.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np

from imgsim.index.fanout import Candidates

_BLOCK_ELEMENTS = 1 << 25  # similarity values per block: 128 MiB of float32
_SELECT_ELEMENTS = 1 << 20  # entries selected over at a time (12 bytes each, transient)


@dataclasses.dataclass(frozen=True)
class Neighbors:
    rows: np.ndarray  # int64 (n, k): row numbers of each row's nearest other rows, best first
    scores: np.ndarray  # float32 (n, k)


def similarity_blocks(vectors: np.ndarray, queries: Optional[np.ndarray] = None
                      ) -> Iterator[tuple[int, np.ndarray]]:
    """(first query row, block of query x vector similarities), a few thousand queries at a time."""
    queries = vectors if queries is None else queries
    n = max(1, vectors.shape[0])
    step = max(1, min(len(queries), _BLOCK_ELEMENTS // n))
    for start in range(0, len(queries), step):
        yield start, queries[start:start + step] @ vectors.T


def top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of each row's k largest entries, best first (ties: lower index first).

    Wide rows are first cut down to candidates: each row's k-th largest chunk maximum is a lower
    bound of its k-th largest entry (k chunks hold an entry at least that large), so only entries
    at or above it can be among the k best. One pass for the chunk maxima and one for the
    comparison cost far less than selecting over the whole row (argpartition). Rows of nearly
    equal entries (a large near-duplicate group) have many candidates: they are taken a few rows
    at a time, so the candidates held stay within a budget whatever the data's shape."""
    m, n = sims.shape
    k = min(k, n)
    if k == 0:
        return np.zeros((m, 0), np.int64), np.zeros((m, 0), np.float32)
    chunks = min(n, max(4 * k, 256))
    if n < 8 * chunks or m == 0:
        return _selected(sims, k)
    maxima = np.maximum.reduceat(sims, np.linspace(0, n, chunks, endpoint=False).astype(np.int64), axis=1)
    floor = np.partition(maxima, chunks - k, axis=1)[:, chunks - k]
    above = sims >= floor[:, None]
    counts = above.sum(axis=1)
    budget = max(4 * k * m, 1 << 16)  # candidates at a time: ordinary rows all in one go
    if counts.sum() <= budget:
        return _best_candidates(sims, above, k)
    rows = np.empty((m, k), np.int64)
    vals = np.empty((m, k), sims.dtype)
    ends = np.cumsum(counts)
    start = 0
    while start < m:
        end = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + budget, side="right")))
        if counts[start] > budget:  # one row with more candidates than the budget: select over it
            rows[start:start + 1], vals[start:start + 1] = _selected(sims[start:start + 1], k)
            end = start + 1
        else:
            rows[start:end], vals[start:end] = _best_candidates(sims[start:end], above[start:end], k)
        start = end
    return rows, vals


def _selected(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Selection over whole rows, a few at a time: argpartition's index array is 8 bytes an entry,
    twice the block, so it is never made for the whole block at once."""
    m, n = sims.shape
    rows = np.empty((m, k), np.int64)
    vals = np.empty((m, k), sims.dtype)
    step = max(1, _SELECT_ELEMENTS // max(1, n))
    for start in range(0, m, step):
        block = sims[start:start + step]
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        found = np.take_along_axis(block, part, axis=1)
        order = np.lexsort((part, -found), axis=1)
        rows[start:start + step] = np.take_along_axis(part, order, axis=1)
        vals[start:start + step] = np.take_along_axis(found, order, axis=1)
    return rows, vals


def _best_candidates(sims: np.ndarray, above: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best among its candidates (every row has at least k)."""
    row, col = np.nonzero(above)
    vals = sims[row, col]
    order = np.lexsort((col, -vals, row))  # by row, then best first, ties to the lower index
    row, col, vals = row[order], col[order], vals[order]
    first = np.searchsorted(row, np.arange(len(sims)))
    take = first[:, None] + np.arange(k)
    return col[take].astype(np.int64), vals[take]


def exact_neighbors_and_pairs(vectors: np.ndarray, k: int, pair_threshold: Optional[float] = None
                              ) -> tuple[Neighbors, np.ndarray]:
    """Each row's k nearest other rows, and every pair (i < j, score) with score >= pair_threshold."""
    n = len(vectors)
    rows = np.zeros((n, min(k, max(n - 1, 0))), np.int64)
    scores = np.zeros(rows.shape, np.float32)
    pairs = []
    for start, sims in similarity_blocks(vectors):
        own = np.arange(start, start + len(sims))
        sims[np.arange(len(sims)), own] = -np.inf  # an item is not its own neighbour
        idx, vals = top_k(sims, rows.shape[1])
        rows[start:start + len(sims)], scores[start:start + len(sims)] = idx, vals
        if pair_threshold is not None:
            qi, vj = np.nonzero(sims >= pair_threshold)
            keep = own[qi] < vj
            pairs.append(np.stack([own[qi][keep], vj[keep], sims[qi[keep], vj[keep]]], axis=1))
    found = np.concatenate(pairs) if pairs else np.zeros((0, 3))
    return Neighbors(rows, scores), found


def pairs_from_neighbors(neighbors: Neighbors, threshold: float) -> np.ndarray:
    """Pairs above threshold among each row's listed neighbours (the approximate path for huge n)."""
    i, col = np.nonzero(neighbors.scores >= threshold)
    j = neighbors.rows[i, col]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    unique = np.unique(np.stack([lo, hi], axis=1), axis=0) if len(lo) else np.zeros((0, 2), np.int64)
    return unique


def connected_groups(pairs: np.ndarray) -> list[list[int]]:
    """Rows joined by pairs (rows a, b in the first two columns) into groups, largest first, then
    by first row. The union-find holds only the rows that appear in pairs, never the collection."""
    if not len(pairs):
        return []
    ends = np.asarray(pairs)[:, :2].astype(np.int64)
    nodes, compact = np.unique(ends, return_inverse=True)
    compact = compact.reshape(ends.shape)
    parent = np.arange(len(nodes))

    def find(x):
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in compact:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i, row in enumerate(nodes):
        members.setdefault(find(i), []).append(int(row))
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))


def exact_candidates(queries: np.ndarray, query_rows: np.ndarray, targets: np.ndarray, target_offset: int,
                     k: int, pair_threshold: Optional[float] = None) -> tuple[Candidates, np.ndarray]:
    """Each query's k nearest targets, exactly, block by block: global rows (target_offset + row),
    scores; a query never finds its own row. With pair_threshold, also every pair (a < b, score)
    of a query row and a target row scoring at least that."""
    out = Candidates.empty(len(queries), k)
    pairs = []
    target_rows = target_offset + np.arange(len(targets))
    for start, sims in similarity_blocks(targets, queries):
        own = query_rows[start:start + len(sims)]
        mine = (own >= target_offset) & (own < target_offset + len(targets))
        sims[np.flatnonzero(mine), own[mine] - target_offset] = -np.inf  # an item is not its own neighbour
        idx, vals = top_k(sims, k)
        width = idx.shape[1]
        out.rows[start:start + len(sims), :width] = np.where(np.isfinite(vals), target_offset + idx, -1)
        out.scores[start:start + len(sims), :width] = vals
        if pair_threshold is not None:
            qi, tj = np.nonzero(sims >= pair_threshold)
            keep = own[qi] < target_rows[tj]
            pairs.append(np.stack([own[qi][keep], target_rows[tj][keep], sims[qi[keep], tj[keep]]], axis=1))
    return out, (np.concatenate(pairs) if pairs else np.zeros((0, 3)))


def recall_hits(true_scores: np.ndarray, kth: np.ndarray, valid: np.ndarray, tolerance: float = 1e-3) -> int:
    """How many approximate neighbours count (ann-benchmarks): a neighbour counts when its true
    score is within `tolerance` of the k-th exact score of its query (ties are not errors)."""
    return int(np.sum(valid & (true_scores >= kth.reshape(-1, 1) - tolerance)))


def recall_at_k(vectors: np.ndarray, queries: np.ndarray, approx_rows: np.ndarray, k: int,
                exclude_self: Optional[np.ndarray] = None, tolerance: float = 1e-3) -> float:
    """ann-benchmarks recall: an approximate neighbour counts when its true score is within
    `tolerance` of the k-th exact score (ties are not errors).

    exclude_self: for queries taken from the data, their own row numbers (left out of both lists).
    """
    hits = 0
    for start, sims in similarity_blocks(vectors, queries):
        stop = start + len(sims)
        if exclude_self is not None:
            sims[np.arange(len(sims)), exclude_self[start:stop]] = -np.inf
        _, exact = top_k(sims, k)
        kth = exact[:, -1:]
        approx = approx_rows[start:stop, :k]
        valid = approx >= 0
        true = np.take_along_axis(sims, np.where(valid, approx, 0), axis=1)
        hits += recall_hits(true, kth, valid, tolerance)
    return hits / (len(queries) * k) if len(queries) else 1.0
