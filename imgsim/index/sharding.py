"""How an index is sharded, and how many shards a query searches.

- How many shards: `--index-shards N`, or as many as it takes for each shard's
  build to fit `--index-memory-mb` on one worker (the bytes a build holds per
  vector were measured: BENCHMARKS.md). One shard means today's single
  searcher and artifact format 1.
- How many shards a query searches (`shards_to_search`): the recall queries
  are answered by every shard while it is built; merging those answers for
  1, 2, ... nearest shards gives recall@k as a function of the shards
  searched (the recall curve), against the exact answer over all vectors.
  The smallest number within ROUTING_SLACK of searching every shard (and at
  least --min-recall) is chosen, unless --index-shards-to-search says.
numpy only.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from imgsim.index.exact import recall_hits
from imgsim.index.fanout import route

DEFAULT_MEMORY_MB = 8192
# bytes a worker holds per vector component while it builds a shard: the rows as they arrive, the
# float32 matrix, ScaNN's own copies (dataset and re-ordering data) and the partition's training
# sample. Measured with benchmarks/sharded_speed.py (BENCHMARKS.md); rounded up.
BUILD_BYTES_PER_VALUE = 16
MIN_SHARD_ITEMS = 50  # fewer items per shard would not be worth a searcher
TARGET_FILL = 0.8  # shards planned by memory aim at this share of the budget
ROUTING_SLACK = 0.005
SAMPLE_PER_SHARD = 256  # k-means sample points per centroid (at least MIN_SAMPLE in all)
MIN_SAMPLE = 2048
MAX_SAMPLE = 200_000
MAX_SAMPLE_BLOCKS = 100_000  # the pipeline samples row groups' Bernoulli samples: at most this many
SHARD_KEY_BITS = 32  # recall candidates are told apart by (shard << 32 | row) before offsets exist


@dataclasses.dataclass(frozen=True)
class ShardingOptions:
    """What the user asked for: --index-shards, --index-memory-mb, --index-shards-to-search."""

    shards: Optional[int] = None
    memory_mb: Optional[int] = None
    shards_to_search: Optional[int] = None

    def __post_init__(self):
        for name in ("shards", "memory_mb", "shards_to_search"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--index-{name.replace('_', '-')} must be at least 1")

    @property
    def requested(self) -> bool:
        """Whether the user asked for anything about sharding (a local run then plans for it)."""
        return self.shards is not None or self.memory_mb is not None

    @property
    def budget_bytes(self) -> int:
        return (self.memory_mb or DEFAULT_MEMORY_MB) * 2 ** 20

    def max_shard_items(self, dim: int) -> int:
        """The most vectors one worker may build into one shard within the budget."""
        return max(1, self.budget_bytes // (BUILD_BYTES_PER_VALUE * dim))

    def plan(self, count: int, dim: int) -> "ShardPlan":
        most = self.max_shard_items(dim)
        by_memory = math.ceil(count / (TARGET_FILL * most))  # room for partitions of uneven size
        shards = self.shards if self.shards is not None else by_memory
        shards = max(1, min(shards, count // MIN_SHARD_ITEMS))
        sample = 0
        if shards > 1:  # the training worker holds a few copies of the sample: an eighth of the budget each
            cap = max(4 * shards, min(MAX_SAMPLE, self.budget_bytes // (32 * dim)))
            sample = min(count, max(MIN_SAMPLE, SAMPLE_PER_SHARD * shards), cap)
        return ShardPlan(count=count, dim=dim, shards=shards, sample_size=sample, max_shard_items=most)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    count: int
    dim: int
    shards: int  # the target number of shards; 1 = one searcher (format 1)
    sample_size: int  # the k-means training sample (0 when not sharded)
    max_shard_items: int  # partitions are split until the sample says none exceeds this (the budget)

    @property
    def sharded(self) -> bool:
        return self.shards > 1

    @property
    def max_share(self) -> float:
        return self.max_shard_items / max(1, self.count)


@dataclasses.dataclass(frozen=True)
class RecallQueries:
    """The vectors recall is measured with (drawn from the collection) and their ids, so that each
    query's own item can be left out of both the exact and the approximate answer."""

    ids: tuple
    vectors: np.ndarray  # float32 (q, dim)

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class RecallPartial:
    """One shard's answers to the recall queries: the exact top-k scores among its items, and its
    searcher's top-k (keys shard << 32 | row, the searcher's scores, and the exact scores of the
    same items), the query's own item left out; -inf where the shard has fewer."""

    shard: int
    exact: np.ndarray  # float32 (q, k)
    keys: np.ndarray  # int64 (q, k), -1 where none
    scores: np.ndarray  # float32 (q, k)
    true: np.ndarray  # float32 (q, k)


def recall_curve(partials: Sequence[RecallPartial], centroids: np.ndarray, queries: RecallQueries, k: int,
                 tolerance: float = 1e-3) -> list[float]:
    """recall@k when each query searches its 1, 2, ..., all nearest shards (centroids in the order of
    partials), against the exact top k over every shard; the tie rule of exact.recall_at_k."""
    if not len(queries):
        return [1.0] * len(partials)
    exact = np.concatenate([p.exact for p in partials], axis=1)
    kth = -np.sort(-exact, axis=1)[:, k - 1]
    order = route(queries.vectors, centroids, len(partials))
    keys = np.stack([p.keys for p in partials])
    scores = np.stack([p.scores for p in partials])
    true = np.stack([p.true for p in partials])
    q = np.arange(len(queries))[:, None]
    curve = []
    for searched in range(1, len(partials) + 1):
        slots = order[:, :searched]
        got_keys = keys[slots, q].reshape(len(queries), -1)
        got_scores = scores[slots, q].reshape(len(queries), -1)
        got_true = true[slots, q].reshape(len(queries), -1)
        best = np.lexsort((np.where(got_keys >= 0, got_keys, np.iinfo(np.int64).max), -got_scores), axis=1)[:, :k]
        valid = np.take_along_axis(got_keys, best, 1) >= 0
        hits = recall_hits(np.take_along_axis(got_true, best, 1), kth, valid, tolerance)
        curve.append(hits / (len(queries) * k))
    return curve


def choose_shards_to_search(curve: Sequence[float], min_recall: float, requested: Optional[int] = None) -> int:
    """The shards a query searches: `requested` (at most all), else the fewest whose recall is within
    ROUTING_SLACK of searching all of them and at least min_recall (all, if none is)."""
    if requested is not None:
        return min(requested, len(curve))
    target = max(min_recall, curve[-1] - ROUTING_SLACK)
    return next((s for s, value in enumerate(curve, 1) if value >= target - 1e-12), len(curve))
