"""How an index is sharded, and how many shards a query searches.

- How many shards: `--index-shards N`, or as many as it takes for each shard's
  build to fit `--index-memory-mb` on one worker (the bytes a build holds per
  vector were measured: BENCHMARKS.md). One shard means today's single
  searcher and artifact format 1.
- How many shards a query searches (`shards_to_search`): the recall queries
  are answered by every shard while it is built; merging those answers for
  1, 2, ... nearest shards gives recall@k as a function of the shards
  searched (the recall curve), against the exact answer over all vectors.
  The fewest within ROUTING_SLACK of searching every shard (and at least
  --min-recall) is chosen, unless --index-shards-to-search says
  (imgsim.index.tuning raises the search parameters too, when needed).
numpy only.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

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
