"""Choosing a ScaNN configuration from the collection size.

Vectors are unit length, so the index scores by dot product (= cosine).
- Small collections (< 20k): brute force. Exact, and fast enough.
- Mid-size (< 100k): asymmetric hashing (2 dimensions per block, anisotropic
  loss), re-ordering the best candidates with the exact vectors.
- Large: a partitioning tree with about sqrt(n) leaves in front of the same
  scoring, searching a fixed share of the leaves.
- A shard of a sharded index takes the tree from BRUTE_FORCE_BELOW on: a
  k-means shard's rows share a direction, and asymmetric hashing of the raw
  vectors loses what a tree's residuals keep (one 49k-row shard of 200k
  clustered 512-d vectors: recall@10 0.969 with `ah`, 0.994 with the tree,
  7x faster; a random 49k rows: 0.998 either way).
imgsim.index.tuning raises leaves searched and re-ordering at query time when
the measured recall needs it.
Every choice can be overridden (`--index-mode`, `--index-leaves`, ...); the
chosen configuration is recorded in the artifact's manifest.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

MODES = ("auto", "brute_force", "ah", "tree_ah")
BRUTE_FORCE_BELOW = 20_000
TREE_FROM = 100_000
REORDER_TYPES = ("float32", "bfloat16", "int8")


@dataclasses.dataclass(frozen=True)
class IndexOptions:
    """What the user asked for; `resolve` turns it into a concrete IndexConfig for n vectors."""

    mode: str = "auto"
    num_leaves: Optional[int] = None
    leaves_to_search: Optional[int] = None
    reorder: Optional[int] = None
    reorder_type: str = "float32"
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    training_sample_size: int = 250_000

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--index-mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.reorder_type not in REORDER_TYPES:
            raise ValueError(f"--index-reorder-type must be one of {', '.join(REORDER_TYPES)}")
        for name in ("num_leaves", "leaves_to_search", "reorder"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--index-{name.replace('_', '-')} must be at least 1")

    def resolve(self, n: int, k: int, shard: bool = False) -> "IndexConfig":
        """The configuration for n vectors; shard: they are one k-means shard of a sharded index."""
        mode = self.mode
        if mode == "auto":
            tree_from = BRUTE_FORCE_BELOW if shard else TREE_FROM
            mode = "brute_force" if n < BRUTE_FORCE_BELOW else ("ah" if n < tree_from else "tree_ah")
        if mode == "brute_force":
            return IndexConfig(mode=mode, k=k)
        reorder = self.reorder or max(100, 10 * k)
        if mode == "ah":
            return IndexConfig(mode=mode, k=k, reorder=reorder, reorder_type=self.reorder_type,
                               dims_per_block=self.dims_per_block,
                               anisotropic_threshold=self.anisotropic_threshold)
        leaves = self.num_leaves or max(2, min(n // 20, round(math.sqrt(n))))
        search = self.leaves_to_search or max(1, min(leaves, math.ceil(leaves * 0.05)))
        return IndexConfig(mode=mode, k=k, reorder=reorder, reorder_type=self.reorder_type,
                           dims_per_block=self.dims_per_block,
                           anisotropic_threshold=self.anisotropic_threshold, num_leaves=leaves,
                           leaves_to_search=min(search, leaves),
                           training_sample_size=min(n, self.training_sample_size), spherical=shard or None)


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    mode: str
    k: int
    reorder: Optional[int] = None
    reorder_type: str = "float32"
    dims_per_block: Optional[int] = None
    anisotropic_threshold: Optional[float] = None
    num_leaves: Optional[int] = None
    leaves_to_search: Optional[int] = None
    training_sample_size: Optional[int] = None
    # Spherical partitions (unit centroids) for a shard's tree: a k-means shard's rows lie in one cone,
    # where centroids of unequal norms rank leaves by norm as much as by direction, so a query from
    # outside the cone searched the wrong leaves (recall@10 over 8 k-means shards of 1M x 512
    # vectors: 0.886, spherical 0.992). A whole collection keeps ScaNN's default: at 2M x 512,
    # spherical lost recall (0.977 against 0.990) and speed (BENCHMARKS.md).
    spherical: Optional[bool] = None

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def build(self, vectors, training_threads: int = 0):
        """A ScaNN searcher over vectors (float32, unit rows)."""
        from imgsim.index.scann_import import reorder_types, scann_ops_pybind

        builder = scann_ops_pybind().builder(vectors, self.k, "dot_product")
        builder.set_n_training_threads(training_threads)
        if self.mode == "brute_force":
            return builder.score_brute_force().build()
        if self.mode == "tree_ah":
            builder = builder.tree(num_leaves=self.num_leaves, num_leaves_to_search=self.leaves_to_search,
                                   training_sample_size=self.training_sample_size, spherical=bool(self.spherical))
        quantize = reorder_types()[self.reorder_type]
        return (builder.score_ah(self.dims_per_block, anisotropic_quantization_threshold=self.anisotropic_threshold)
                .reorder(self.reorder, quantize=quantize).build())
