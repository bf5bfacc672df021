"""Building one shard of a sharded index, on whichever worker holds the shard's rows.

    shards/NNNNN/scann/...        the shard's own ScaNN searcher (relative paths)
    shards/NNNNN/ids.parquet      row, id, url, sha256, width, height, metadata (no vectors), in row
                                  groups of BATCH_ROWS: one neighbours part's rows
    shards/NNNNN/vectors.npy      float32 (count, dim), in row order
    shards/NNNNN/filters.parquet, ranges.parquet   its metadata's dictionaries (imgsim.index.filters)

A new shard's rows are ordered by id, so its content does not depend on the
order in which its rows arrived; a grown shard keeps its rows and appends
(imgsim.index.growth). Shards re-order with float32 vectors (or score by
brute force): their scores are exact dot products, so a query's answers from
different shards compare and merge by score. While the searcher is in memory
the shard also answers the recall queries, exactly and through the searcher
at every step of the tuning ladder (imgsim.index.tuning.RecallPartial), so
recall over the whole index, and its tuning, need no step that holds every
vector.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgsim.index import artifact, filters
from imgsim.index.artifact import IDS, VECTORS, shard_dir
from imgsim.index.searcher import IndexOptions
from imgsim.index.shard_neighbors import BATCH_ROWS
from imgsim.index.tuning import RecallPartial, RecallQueries, ladder, recall_partial
from imgsim.runs.outputs import vectors as table_vectors
from imgsim.storage import sha256_file


class ShardingRefused(ValueError):
    """The index cannot be sharded as configured (a one-line reason)."""


def check_shardable(options: IndexOptions) -> None:
    """Shards merge by score, so their scores must be exact: float32 re-ordering (or brute force)."""
    if options.mode != "brute_force" and options.reorder_type != "float32":
        raise ShardingRefused(f"--index-reorder-type {options.reorder_type} cannot be used with a sharded index: "
                              "shards merge by exact scores, so they re-order in float32 (or set --index-shards 1)")


@dataclasses.dataclass(frozen=True)
class StagedShard:
    number: int
    count: int
    config: dict  # the shard's ScaNN configuration
    files: dict  # artifact path -> {"sha256", "bytes"}
    recall: RecallPartial
    filters: dict  # the shard's filterable columns (imgsim.index.filters)


def stage_shard(table: pa.Table, number: int, options: IndexOptions, queries: RecallQueries, recall_k: int,
                staging: str) -> StagedShard:
    """Build shard `number` from its rows (an embeddings table) into staging/shards/NNNNN."""
    table = table.take(id_order(table))
    return build_shard(table.drop_columns(["embedding"]), table_vectors(table), number, options, queries, recall_k,
                       staging)


def id_order(table: pa.Table) -> pa.Array:
    """The row order of a new shard: by id."""
    return pc.sort_indices(table, sort_keys=[("id", "ascending")])


def build_shard(table: pa.Table, data: np.ndarray, number: int, options: IndexOptions, queries: RecallQueries,
                recall_k: int, staging: str, steps: Optional[Sequence[tuple[int, int]]] = None) -> StagedShard:
    """A new searcher over data (rows in the order given; table without vectors), staged."""
    check_shardable(options)
    config = options.resolve(len(data), k=recall_k, shard=True)
    return write_shard(table, data, config.build(data), config.to_dict(), number, options, queries, recall_k,
                       staging, steps)


def write_shard(table: pa.Table, data: np.ndarray, searcher, config: dict, number: int, options: IndexOptions,
                queries: RecallQueries, recall_k: int, staging: str,
                steps: Optional[Sequence[tuple[int, int]]] = None) -> StagedShard:
    """Stage a shard whose searcher holds `data` (row i = table's row i; table without vectors) into
    staging/shards/NNNNN, answering the recall queries at the ladder's steps (or those given): a
    new shard's or a grown one's (imgsim.index.growth)."""
    count = len(data)
    rel = shard_dir(number)
    directory = os.path.join(staging, *rel.split("/"))
    os.makedirs(os.path.join(directory, artifact.SCANN_DIR), exist_ok=True)
    searcher.serialize(os.path.join(directory, artifact.SCANN_DIR), relative_path=True)
    np.save(os.path.join(directory, VECTORS), np.ascontiguousarray(data), allow_pickle=False)
    artifact.write_table(table.add_column(0, "row", pa.array(np.arange(count, dtype=np.int64))),
                         os.path.join(directory, IDS), row_group_rows=BATCH_ROWS)  # a neighbours part's ids
    filterable = filters.write(table, directory)
    recall = recall_partial(number, searcher, data, table.column("id").to_numpy(zero_copy_only=False),
                            queries, recall_k, config, list(steps) if steps else tuning_steps(options))
    files = {}
    for name in artifact.local_files(directory):
        path = os.path.join(directory, *name.split("/"))
        files[f"{rel}/{name}"] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    config = {key: value for key, value in config.items() if key != "count"}
    return StagedShard(number, count, {**config, "count": count}, files, recall, filterable)


def tuning_steps(options: IndexOptions) -> list[tuple[int, int]]:
    """The ladder steps a searcher built from these options answers (the user's settings stay)."""
    return ladder(options.leaves_to_search is not None, options.reorder is not None)


