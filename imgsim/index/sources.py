"""The embeddings files an index is built from, as their footers describe them, and the plan.

Reading only footers (row counts, row groups, the model signature) says how
many vectors there are, of what dimension and model, before any vector is
read: enough to refuse mixed models or stray files, and to decide whether the
index is one searcher or shards (imgsim.index.sharding). Files are numbered in
path order, and a row is known by (file number, row in file): with repeated
ids, the first such row wins, as in build.combine_embeddings.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import pyarrow.parquet as pq

from imgsim.embed.signature import ModelSignature
from imgsim.index.shard_build import ShardingRefused, check_shardable
from imgsim.index.sharding import ShardPlan
from imgsim.runs.outputs import signature_of
from imgsim.storage import ObjectStore


class IndexInputError(ValueError):
    """The embeddings cannot form one index (mixed model signatures, nothing to index)."""


@dataclasses.dataclass(frozen=True)
class FileInfo:
    number: int  # the file's position in path order
    path: str
    rows: int
    row_groups: tuple  # (first row, rows) of each row group
    signature: Optional[str]  # the model signature's JSON; None when the file has none
    problem: Optional[str] = None  # why it cannot be read as embeddings


def file_info(store: ObjectStore, path: str, number: int) -> FileInfo:
    """One file's footer."""
    try:
        with store.open_read(path) as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
    except (OSError, ValueError) as e:
        return FileInfo(number, path, 0, (), None, f"{path} is not a Parquet file ({e})")
    groups, first = [], 0
    for i in range(meta.num_row_groups):
        groups.append((first, meta.row_group(i).num_rows))
        first += meta.row_group(i).num_rows
    try:
        signature = signature_of(schema).to_json()
    except ValueError as e:
        return FileInfo(number, path, meta.num_rows, tuple(groups), None, f"{path}: {e}")
    return FileInfo(number, path, meta.num_rows, tuple(groups), signature)


def file_infos(store: ObjectStore, paths: Sequence[str], threads: int = 16) -> list[FileInfo]:
    """Every file's footer, read in parallel, numbered in path order."""
    paths = sorted(paths)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(lambda item: file_info(store, item[1], item[0]), enumerate(paths)))


@dataclasses.dataclass(frozen=True)
class IndexPlan:
    """What the footers say: the vectors' count and model, and how to build their index."""

    files: tuple  # FileInfo, in number order
    count: int
    signature: Optional[ModelSignature]
    shards: Optional[ShardPlan]
    error: Optional[str] = None  # why no index can be built from these files
    growth: Optional[object] = None  # imgsim.index.growth.Growth: the published index grows into this one
    built_whole: str = ""  # else why the index is built whole (imgsim.index.growth.plan_growth)

    @property
    def sharded(self) -> bool:
        return self.error is None and self.shards is not None and self.shards.sharded

    def check(self) -> "IndexPlan":
        if self.error:
            raise IndexInputError(self.error)
        return self


def plan_index(infos: Sequence[FileInfo], settings) -> IndexPlan:
    """The plan for files (their footers) under IndexSettings."""
    infos = tuple(sorted(infos, key=lambda i: i.number))
    count = sum(i.rows for i in infos)

    def refused(why: str) -> IndexPlan:
        return IndexPlan(infos, count, None, None, why)

    problem = next((i.problem for i in infos if i.problem), None)
    if problem:
        return refused(problem)
    signatures = [ModelSignature.from_json(i.signature) for i in infos if i.rows]
    if not signatures:
        return refused("there are no embeddings to index")
    first = signatures[0]
    for other in signatures[1:]:
        if not other.matches(first):
            return refused("embeddings of different models cannot share an index: "
                           + "; ".join(first.differences(other)))
    shards = settings.sharding.plan(count, first.dim)
    if shards.sharded:
        try:
            check_shardable(settings.options)
        except ShardingRefused as e:
            return refused(str(e))
    return IndexPlan(infos, count, first, shards)
