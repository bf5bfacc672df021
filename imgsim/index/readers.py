"""Reading an artifact's items and searching it: one searcher (format 1) or shards (format 2).

ImageIndex (imgsim.index.consumer) talks to one of these; both number rows
the same way (format 2: shard after shard) and answer with global rows.

A sharded artifact is read lazily: opening reads only the manifest; the
centroids, a shard's ids, vectors or searcher, a neighbours part and the
groups are copied into the cache and checked against the manifest when they
are first needed (`fetch`), and each shard's searcher is loaded once. A
query goes to its shards_to_search nearest shards (imgsim.index.fanout) and
their exact scores are merged.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgsim.index import artifact
from imgsim.index.fanout import Candidates, merge, route, scatter
from imgsim.index.filters import RANGES_FILE, VALUES_FILE, Allowed, FilterError
from imgsim.index.outliers import OUTLIERS
from imgsim.index.artifact import IDS, VECTORS, load_vectors
from imgsim.index.shard_neighbors import BATCH_ROWS, part_name
from imgsim.index.tuning import SearchParams
from imgsim.runs.outputs import vectors as table_vectors

NOT_METADATA = ("row", "embedding")
BUILT_BEFORE_FILTERS = "this index was built before imgsim recorded filters: rebuild it (imgsim index) to filter"
Fetch = Callable[[dict], None]  # copy and check these artifact files (path -> entry) into the local copy


class SingleReader:
    """Format 1: one searcher, ids.parquet with every item's vector and metadata."""

    def __init__(self, local_dir: str, manifest: artifact.Manifest):
        self.local_dir = local_dir
        self._searcher = artifact.load_searcher(local_dir)
        self._config = manifest.section("scann")
        self._params = SearchParams.from_dict(self._config.get("search"))  # chosen when it was built
        self._files = manifest.files
        path = os.path.join(local_dir, artifact.IDS)
        columns = [c for c in pq.read_schema(path).names if c not in NOT_METADATA]
        self._info = pq.read_table(path, columns=columns)
        self._ids = self._info.column("id").to_pylist()
        self._row_of = {item: row for row, item in enumerate(self._ids)}
        self._vectors: Optional[np.ndarray] = None
        self._lock = threading.Lock()
        self._allowed: Optional[Allowed] = None
        self._has_filters = VALUES_FILE in manifest.files
        self._neighbors: Optional[RowGroups] = None

    @property
    def count(self) -> int:
        return len(self._ids)

    def allowed(self, spec, described: dict) -> np.ndarray:
        """The rows a filter allows (imgsim.index.filters)."""
        with self._lock:
            if self._allowed is None:
                if not self._has_filters:
                    raise FilterError(BUILT_BEFORE_FILTERS)
                self._allowed = Allowed.read(os.path.join(self.local_dir, VALUES_FILE),
                                             os.path.join(self.local_dir, RANGES_FILE), self.count)
        return self._allowed.mask(spec, described)

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        return self.vectors()[rows]

    def outliers(self) -> pa.Table:
        if OUTLIERS not in self._files:
            raise FilterError(BUILT_BEFORE_FILTERS.replace("filters", "outlier scores"))
        return pq.read_table(os.path.join(self.local_dir, OUTLIERS))

    def ids(self) -> list[str]:
        return list(self._ids)

    def columns(self) -> list[str]:
        return [c for c in self._info.column_names if c != "id"]

    def row_of(self, item_id: str) -> int:
        return self._row_of[item_id]

    def vector(self, row: int) -> np.ndarray:
        return self.vectors()[row]

    def vectors(self) -> np.ndarray:
        with self._lock:
            if self._vectors is None:
                table = pq.read_table(os.path.join(self.local_dir, artifact.IDS), columns=["embedding"])
                self._vectors = table_vectors(table)
            return self._vectors

    def search(self, queries: np.ndarray, k: int, shards_to_search: Optional[int] = None, widen: int = 1
               ) -> Candidates:
        """widen: search this many times the leaves (a filter's over-fetch)."""
        params = self._params.widened(k, self._config, widen)
        rows, scores = self._searcher.search_batched(queries, final_num_neighbors=min(k, self.count),
                                                     **params.kwargs())
        return scatter(np.asarray(rows), np.asarray(scores), 0, k)

    def info(self, row: int) -> tuple[str, dict]:
        info = self._info.slice(row, 1).to_pylist()[0]
        return info.pop("id"), info

    def neighbors(self, item_id: str, row: int) -> Optional[dict]:
        with self._lock:
            if self._neighbors is None:
                self._neighbors = RowGroups(os.path.join(self.local_dir, artifact.NEIGHBORS))
        return self._neighbors.row(item_id, row)

    def groups(self) -> pa.Table:
        return pq.read_table(os.path.join(self.local_dir, artifact.GROUPS))

    def batches(self, columns: Optional[list] = None) -> Iterator[tuple[pa.Table, np.ndarray]]:
        source = pq.ParquetFile(os.path.join(self.local_dir, artifact.IDS))
        wanted = ["id", "embedding"] + [c for c in (columns or []) if c not in ("id", "embedding")]
        for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            table = pa.Table.from_batches([batch])
            yield table.drop_columns(["embedding"]), table_vectors(table)


class RowGroups:
    """Rows of a neighbours table by position (its rows are in the index's row order), a row group
    at a time, the last few kept: an item's list without reading the table or scanning it. An
    older table whose row there is another id is searched for the id instead."""

    def __init__(self, path: str, keep: int = 8):
        self._file = pq.ParquetFile(path)
        sizes = [self._file.metadata.row_group(g).num_rows for g in range(self._file.metadata.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._keep = keep
        self._groups: dict = {}
        self._lock = threading.Lock()

    def row(self, item_id: str, position: int) -> Optional[dict]:
        if 0 <= position < self._starts[-1]:
            group = int(np.searchsorted(self._starts, position, side="right") - 1)
            table = self._group(group)
            found = table.slice(position - int(self._starts[group]), 1).to_pylist()[0]
            if found["id"] == item_id:
                return found
        table = self._file.read()
        matches = table.filter(pc.equal(table.column("id"), item_id))
        return matches.to_pylist()[0] if matches.num_rows else None

    def _group(self, group: int) -> pa.Table:
        with self._lock:
            if group not in self._groups:
                if len(self._groups) >= self._keep:
                    self._groups.pop(next(iter(self._groups)))
                self._groups[group] = self._file.read_row_group(group)
            return self._groups[group]


class _Shard:
    """One shard as far as it has been needed: ids and metadata, vectors, searcher."""

    def __init__(self, entry: artifact.ShardEntry):
        self.entry = entry
        self.params = entry.params  # chosen when it was built
        self.allowed: Optional[Allowed] = None
        self.info: Optional[pa.Table] = None
        self.vectors: Optional[np.ndarray] = None  # memory-mapped from the cache
        self.searcher = None


class ShardedReader:
    """Format 2: shards loaded when first needed; queries fanned out to the nearest shards."""

    def __init__(self, local_dir: str, manifest: artifact.Manifest, fetch: Fetch,
                 shards_to_search: Optional[int] = None):
        self.local_dir = local_dir
        self.manifest = manifest
        self._fetch = fetch
        self._dim = manifest.signature.dim
        self._entries = manifest.shards
        self._shards = [_Shard(e) for e in self._entries]
        self._offsets = np.array([e.offset for e in self._entries], np.int64)
        self._files = manifest.all_files()
        self.shards_to_search = min(len(self._entries), shards_to_search or manifest.shards_to_search)
        self._lock = threading.RLock()
        self._centroids: Optional[np.ndarray] = None
        self._ids: Optional[list] = None
        self._row_of: Optional[dict] = None
        self._parts: dict = {}  # neighbours part -> its RowGroups

    @property
    def count(self) -> int:
        return self.manifest.count

    # shards, loaded once each -------------------------------------------------------------------
    def _need(self, *rels: str) -> None:
        self._fetch({rel: self._files[rel] for rel in rels})

    def _path(self, rel: str) -> str:
        return os.path.join(self.local_dir, *rel.split("/"))

    def centroids(self) -> np.ndarray:
        with self._lock:
            if self._centroids is None:
                self._need(artifact.CENTROIDS)
                data = np.load(self._path(artifact.CENTROIDS), allow_pickle=False)
                if data.dtype != np.float32 or data.shape != (len(self._entries), self._dim):
                    raise artifact.ArtifactError(f"{artifact.CENTROIDS} holds {data.dtype} {data.shape}, not float32 "
                                                 f"({len(self._entries)}, {self._dim}); rebuild the index with imgsim")
                self._centroids = data
            return self._centroids

    def _shard_info(self, slot: int) -> pa.Table:
        shard = self._shards[slot]
        with self._lock:
            if shard.info is None:
                rel = shard.entry.path(IDS)
                self._need(rel)
                path = self._path(rel)
                columns = [c for c in pq.read_schema(path).names if c not in NOT_METADATA]
                info = pq.read_table(path, columns=columns)
                if info.num_rows != shard.entry.count:
                    raise artifact.ArtifactError(f"{rel} has {info.num_rows} rows, the manifest says "
                                                 f"{shard.entry.count}; rebuild the index with imgsim")
                shard.info = info
            return shard.info

    def _shard_vectors(self, slot: int) -> np.ndarray:
        shard = self._shards[slot]
        with self._lock:
            if shard.vectors is None:
                rel = shard.entry.path(VECTORS)
                self._need(rel)
                shard.vectors = load_vectors(self._path(rel), shard.entry.count, self._dim, mmap=True)
            return shard.vectors

    def _searcher(self, slot: int):
        shard = self._shards[slot]
        with self._lock:
            if shard.searcher is None:
                scann_dir = shard.entry.scann_dir
                self._need(*[rel for rel in shard.entry.files if rel.startswith(scann_dir + "/")])
                shard.searcher = artifact.load_searcher(self.local_dir, scann_dir)
            return shard.searcher

    def _slot_of_row(self, row: int) -> int:
        return int(np.searchsorted(self._offsets, row, side="right") - 1)

    # the reader interface -----------------------------------------------------------------------
    def ids(self) -> list[str]:
        with self._lock:
            if self._ids is None:
                self._ids = [i for slot in range(len(self._shards))
                             for i in self._shard_info(slot).column("id").to_pylist()]
            return list(self._ids)

    def columns(self) -> list[str]:
        return [c for c in self._shard_info(0).column_names if c != "id"]

    def row_of(self, item_id: str) -> int:
        with self._lock:
            if self._row_of is None:
                self._row_of = {item: row for row, item in enumerate(self.ids())}
            return self._row_of[item_id]

    def vector(self, row: int) -> np.ndarray:
        slot = self._slot_of_row(row)
        return np.array(self._shard_vectors(slot)[row - self._offsets[slot]])

    def vectors(self) -> np.ndarray:
        return np.concatenate([self._shard_vectors(slot) for slot in range(len(self._shards))])

    def search(self, queries: np.ndarray, k: int, shards_to_search: Optional[int] = None, widen: int = 1
               ) -> Candidates:
        """widen: search this many times the shards and, in each, the leaves (a filter's over-fetch)."""
        searched = min(len(self._shards), (shards_to_search or self.shards_to_search) * widen)
        routes = route(queries, self.centroids(), searched)
        parts = [Candidates.empty(len(queries), k) for _ in range(searched)]
        for slot in np.unique(routes).tolist():
            asked, position = np.nonzero(routes == slot)
            entry = self._entries[slot]
            params = self._shards[slot].params.widened(k, entry.scann, widen)
            found, scores = self._searcher(slot).search_batched(queries[asked],
                                                                final_num_neighbors=min(k, entry.count),
                                                                **params.kwargs())
            answered = scatter(np.asarray(found), np.asarray(scores), entry.offset, k)
            for j in range(searched):
                at = position == j
                parts[j].rows[asked[at]], parts[j].scores[asked[at]] = answered.rows[at], answered.scores[at]
        return merge(parts, k)

    def allowed(self, spec, described: dict) -> np.ndarray:
        """The rows a filter allows, shard after shard (each shard's dictionaries)."""
        masks = []
        for slot, shard in enumerate(self._shards):
            with self._lock:
                if shard.allowed is None:
                    values, ranges = (shard.entry.path(name) for name in (VALUES_FILE, RANGES_FILE))
                    if values not in shard.entry.files:
                        raise FilterError(BUILT_BEFORE_FILTERS)
                    self._need(values, ranges)
                    shard.allowed = Allowed.read(self._path(values), self._path(ranges), shard.entry.count)
            masks.append(shard.allowed.mask(spec, described))
        return np.concatenate(masks)

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self._dim), np.float32)
        slots = np.searchsorted(self._offsets, rows, side="right") - 1
        for slot in np.unique(slots).tolist():
            at = slots == slot
            out[at] = self._shard_vectors(slot)[rows[at] - self._offsets[slot]]
        return out

    def outliers(self) -> pa.Table:
        if OUTLIERS not in self.manifest.files:
            raise FilterError(BUILT_BEFORE_FILTERS.replace("filters", "outlier scores"))
        with self._lock:
            self._need(OUTLIERS)
        return pq.read_table(self._path(OUTLIERS))

    def info(self, row: int) -> tuple[str, dict]:
        slot = self._slot_of_row(row)
        info = self._shard_info(slot).slice(int(row - self._offsets[slot]), 1).to_pylist()[0]
        return info.pop("id"), info

    def neighbors(self, item_id: str, row: int) -> Optional[dict]:
        slot = self._slot_of_row(row)
        local = int(row - self._offsets[slot])
        rel = part_name(self._entries[slot].shard, local // BATCH_ROWS)
        with self._lock:
            self._need(rel)
            parts = self._parts.setdefault(rel, RowGroups(self._path(rel)))
        return parts.row(item_id, local % BATCH_ROWS)

    def groups(self) -> pa.Table:
        with self._lock:
            self._need(artifact.GROUPS)
        return pq.read_table(self._path(artifact.GROUPS))

    def info_table(self) -> pa.Table:
        """Every item's id, url, sha256, size and metadata, in row order (shard after shard)."""
        return pa.concat_tables([self._shard_info(slot) for slot in range(len(self._shards))])

    def neighbor_tables(self) -> Iterator[pa.Table]:
        """The neighbours table's parts (id, neighbor_ids, scores), in row order, one at a time."""
        for entry in self._entries:
            for batch in range(-(-entry.count // BATCH_ROWS)):
                rel = part_name(entry.shard, batch)
                with self._lock:
                    self._need(rel)
                yield pq.read_table(self._path(rel))

    def batches(self, columns: Optional[list] = None) -> Iterator[tuple[pa.Table, np.ndarray]]:
        for slot in range(len(self._shards)):
            info = self._shard_info(slot)
            wanted = ["id"] + [c for c in (columns or []) if c != "id"]
            vectors = self._shard_vectors(slot)
            for start in range(0, info.num_rows, BATCH_ROWS):
                yield info.select(wanted).slice(start, BATCH_ROWS), np.array(vectors[start:start + BATCH_ROWS])
