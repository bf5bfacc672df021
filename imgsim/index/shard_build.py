"""Building one shard of a sharded index, on whichever worker holds the shard's rows.

    shards/NNNNN/scann/...        the shard's own ScaNN searcher (relative paths)
    shards/NNNNN/ids.parquet      row, id, url, sha256, width, height, metadata (no vectors), in row
                                  groups of BATCH_ROWS: one neighbours part's rows
    shards/NNNNN/vectors.npy      float32 (count, dim), in row order
    shards/NNNNN/filters.parquet, ranges.parquet   its metadata's dictionaries (imgsim.index.filters)

Rows are ordered by id, so a shard's content does not depend on the order in
which its rows arrived. Shards re-order with float32 vectors (or score by
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

import numpy as np
import pyarrow as pa

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
    check_shardable(options)
    table = table.sort_by("id")
    data = table_vectors(table)
    table = table.drop_columns(["embedding"])
    count = len(data)
    config = options.resolve(count, k=recall_k, shard=True)
    searcher = config.build(data)
    rel = shard_dir(number)
    directory = os.path.join(staging, *rel.split("/"))
    os.makedirs(os.path.join(directory, artifact.SCANN_DIR), exist_ok=True)
    searcher.serialize(os.path.join(directory, artifact.SCANN_DIR), relative_path=True)
    np.save(os.path.join(directory, VECTORS), np.ascontiguousarray(data), allow_pickle=False)
    artifact.write_table(table.add_column(0, "row", pa.array(np.arange(count, dtype=np.int64))),
                         os.path.join(directory, IDS), row_group_rows=BATCH_ROWS)  # a neighbours part's ids
    filterable = filters.write(table, directory)
    recall = recall_partial(number, searcher, data, table.column("id").to_numpy(zero_copy_only=False),
                            queries, recall_k, config.to_dict(), tuning_steps(options))
    files = {}
    for name in artifact.local_files(directory):
        path = os.path.join(directory, *name.split("/"))
        files[f"{rel}/{name}"] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    return StagedShard(number, count, {**config.to_dict(), "count": count}, files, recall, filterable)


def tuning_steps(options: IndexOptions) -> list[tuple[int, int]]:
    """The ladder steps a searcher built from these options answers (the user's settings stay)."""
    return ladder(options.leaves_to_search is not None, options.reorder is not None)


