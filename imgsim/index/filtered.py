"""Searching within the rows a filter allows, on a searcher that knows nothing of filters.

ScaNN has no filtering, and post-filtering its top k loses most answers under a selective
filter. So: when few rows are allowed (up to EXACT_MAX), they are scored exactly (their vectors
gathered a block at a time); otherwise the searcher is asked for enough candidates that k allowed
ones are expected among them (k / selectivity, twice over), re-ordering all of them exactly and
searching 1 / selectivity times the leaves (and, sharded, the shards), and a query that still
comes back short is scored exactly. Rows to leave out (the query items
themselves) are never returned. numpy only; the reader is imgsim.index.readers'.
"""
from __future__ import annotations

import collections
import hashlib
import math
import threading
from typing import Optional, Sequence

import numpy as np

from imgsim.index.exact import similarity_blocks, top_k
from imgsim.index.fanout import Candidates, merge

ORDERS = ("most", "least")  # the most similar first, or the least
EXACT_MAX = 50_000
LEAST_WIDEN = 16
OVERFETCH = 2.0
_GATHER_ROWS = 65_536


def search(reader, queries: np.ndarray, k: int, shards_to_search: Optional[int] = None,
           allowed: Optional[np.ndarray] = None, exclude: Sequence[int] = (), exact_max: int = EXACT_MAX,
           order: str = "most", gathered: Optional[Gathered] = None) -> Candidates:
    """Each query's k best rows among the allowed ones (all, when allowed is None), none of exclude.

    order="least": the k least similar, which are the most similar to -q; but -q lies where the
    collection is not, so the searcher's routing and tuning, made for queries like its items, do
    not hold: up to exact_max allowed rows are scored exactly, above that LEAST_WIDEN times the
    leaves and shards are searched."""
    n = reader.count
    exclude = np.unique(np.asarray(list(exclude), np.int64))
    if order == "least":
        queries = -queries
        if allowed is None and n <= exact_max:
            allowed = np.ones(n, bool)
    if allowed is None:
        widen = LEAST_WIDEN if order == "least" else 1
        if not len(exclude):
            return reader.search(queries, max(1, min(k, n)), shards_to_search, widen=widen)
        found = reader.search(queries, max(1, min(n, k + len(exclude))), shards_to_search, widen=widen)
        return _kept(found, ~np.isin(found.rows, exclude), k)
    allowed = np.array(allowed, bool)
    if np.count_nonzero(allowed) <= exact_max:  # exclusions after scoring: the gathered rows stay reusable
        rows = np.flatnonzero(allowed)
        if not len(rows):
            return Candidates.empty(len(queries), max(1, k))
        found = exact(reader, queries, rows, k + len(exclude), gathered)
        return _kept(found, found.valid & ~np.isin(found.rows, exclude), k) if len(exclude) else found
    allowed[exclude] = False
    rows = np.flatnonzero(allowed)
    want = min(n, math.ceil(k * n / len(rows) * OVERFETCH) + k + len(exclude))
    widen = max(math.ceil(n / len(rows)), LEAST_WIDEN if order == "least" else 1)
    found = reader.search(queries, want, shards_to_search, widen=widen)
    out = _kept(found, found.valid & allowed[np.maximum(found.rows, 0)], k)
    short = np.flatnonzero(out.valid.sum(axis=1) < min(k, len(rows)))
    if len(short):  # rare: the neighbourhood held fewer allowed rows than expected
        again = exact(reader, queries[short], rows, k)
        out.rows[short], out.scores[short] = again.rows, again.scores
    return out


class Gathered:
    """The vectors of the last few sets of allowed rows, so that a filter asked again (a facet of
    an explorer, a shop's category) is scored without gathering its rows again: at most max_bytes
    held, the least recently used set first to go. Thread-safe; one per open index."""

    def __init__(self, max_bytes: int = 256 << 20, entries: int = 8):
        self._max_bytes = max_bytes
        self._entries = entries
        self._held: "collections.OrderedDict[bytes, np.ndarray]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def vectors(self, reader, rows: np.ndarray) -> Optional[np.ndarray]:
        """rows' vectors, gathered now or earlier; None when they alone exceed the bound."""
        if not len(rows) or len(rows) * reader.vector(int(rows[0])).nbytes > self._max_bytes:
            return None
        key = hashlib.blake2b(np.ascontiguousarray(rows).view(np.uint8), digest_size=16).digest()
        with self._lock:
            if key in self._held:
                self._held.move_to_end(key)
                return self._held[key]
        vectors = reader.vectors_of(rows)
        with self._lock:
            self._held[key] = vectors
            while len(self._held) > self._entries or sum(v.nbytes for v in self._held.values()) > self._max_bytes:
                self._held.popitem(last=False)
        return vectors


def exact(reader, queries: np.ndarray, rows: np.ndarray, k: int, gathered: Optional[Gathered] = None
          ) -> Candidates:
    """Each query's k best of `rows` (global, sorted), exactly: over their vectors gathered once
    (and kept in gathered, when given and small enough), else a block of rows at a time."""
    held = gathered.vectors(reader, rows) if gathered is not None else None
    if held is not None:
        return _best_of(held, rows, queries, k)
    best = Candidates.empty(len(queries), k)
    for start in range(0, len(rows), _GATHER_ROWS):
        block = rows[start:start + _GATHER_ROWS]
        best = merge([best, _best_of(reader.vectors_of(block), block, queries, k)], k)
    return best


def _best_of(vectors: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int) -> Candidates:
    """Each query's k best of `rows`, whose vectors these are, scored exactly."""
    found = Candidates.empty(len(queries), k)
    for first, sims in similarity_blocks(vectors, queries):
        idx, vals = top_k(sims, k)
        width = idx.shape[1]
        found.rows[first:first + len(sims), :width] = rows[idx]
        found.scores[first:first + len(sims), :width] = vals
    return found


def _kept(found: Candidates, keep: np.ndarray, k: int) -> Candidates:
    """The first k candidates of each query where keep is true, in their order."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, order, 1)
    out = Candidates.empty(len(found), k)
    width = order.shape[1]
    out.rows[:, :width] = np.where(kept, np.take_along_axis(found.rows, order, 1), -1)
    out.scores[:, :width] = np.where(kept, np.take_along_axis(found.scores, order, 1), -np.inf)
    return out
