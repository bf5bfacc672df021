"""What the explorer is built from: a published index artifact, verified, and its run's thumbnails.

The explorer reads the artifact the way every consumer does (imgsim.index):
through LATEST or a run id, copied into the local cache and checked against
its manifest before anything is read, without loading ScaNN; a sharded one
through the consumer's own reader, file by file as each is needed. Thumbnails come
from the packs of the run that built the index (runs/RUN_ID/thumbnails/),
paired with index rows by (id, sha256): a thumbnail made from other bytes
than the indexed ones is never shown.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgsim.index import artifact
from imgsim.index.consumer import local_copy_dir, locate_index
from imgsim.index.readers import ShardedReader
from imgsim.records import EMBEDDING_COLUMNS
from imgsim.storage import ObjectStore, is_gcs, join
from imgsim.thumbnails.make import Thumbnail
from imgsim.thumbnails.packs import THUMBNAILS_DIR, pack_files, read_packs

# Columns of ids.parquet that are not the input's metadata.
NOT_METADATA = ("row", *EMBEDDING_COLUMNS)


@dataclasses.dataclass
class IndexContents:
    """The parts of one index artifact the explorer shows."""

    manifest: artifact.Manifest
    local_dir: str
    index_dir: str
    info: pa.Table  # ids.parquet without the embedding column: id, url, sha256, width, height, metadata
    store: ObjectStore
    shards: Optional[ShardedReader] = None  # a sharded artifact's reader (None: one searcher)

    @classmethod
    def open(cls, location: str, run_id: Optional[str] = None, cache_dir: Optional[str] = None,
             store: Optional[ObjectStore] = None) -> "IndexContents":
        """The artifact at an output root (LATEST, or run_id) or an index directory, local or gs://,
        verified against its manifest; ArtifactError otherwise."""
        store = store or ObjectStore()
        found = locate_index(store, location, run_id)
        if not is_gcs(found.index_dir) and not os.path.isdir(found.index_dir):
            raise artifact.ArtifactError(f"no index at {found.index_dir}")
        local = local_copy_dir(found.index_dir, cache_dir)
        manifest = artifact.fetch_artifact(store, found.index_dir, local, found.manifest_sha256)
        if manifest.sharded:
            def fetch(files: dict) -> None:
                artifact.fetch_files(store, found.index_dir, local, files)

            reader = ShardedReader(local, manifest, fetch)
            return cls(manifest, local, found.index_dir, reader.info_table(), store, reader)
        path = os.path.join(local, artifact.IDS)
        columns = [c for c in pq.read_schema(path).names if c != "embedding"]
        return cls(manifest, local, found.index_dir, pq.read_table(path, columns=columns), store)

    @property
    def count(self) -> int:
        return self.info.num_rows

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def ids(self) -> list[str]:
        return self.info.column("id").to_pylist()

    def metadata_columns(self) -> list[str]:
        return [c for c in self.info.column_names if c not in NOT_METADATA]

    def vector_batches(self, rows: int = 16384) -> Iterator[np.ndarray]:
        """The unit vectors in index row order, a batch at a time (never all at full width at once)."""
        if self.shards is not None:
            for _, vectors in self.shards.batches():
                yield vectors
            return
        reader = pq.ParquetFile(os.path.join(self.local_dir, artifact.IDS))
        for batch in reader.iter_batches(batch_size=rows, columns=["embedding"]):
            column = batch.column(0)
            dim = column.type.list_size
            yield column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), dim).astype(np.float32)

    def neighbors(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores): (n, k) index rows of each item's neighbours, best first (-1: none), and cosines."""
        table = pa.concat_tables(self.shards.neighbor_tables()) if self.shards is not None else \
            pq.read_table(os.path.join(self.local_dir, artifact.NEIGHBORS))
        ids = self.info.column("id")
        position = pc.index_in(table.column("id"), value_set=ids).to_numpy(zero_copy_only=False)
        lists = table.column("neighbor_ids").combine_chunks()
        k = int(pc.max(pc.list_value_length(lists)).as_py() or 0) if len(lists) else 0
        rows = np.full((self.count, k), -1, dtype=np.int64)
        scores = np.zeros((self.count, k), dtype=np.float32)
        if not k:
            return rows, scores
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
        flat = pc.index_in(lists.flatten(), value_set=ids).fill_null(-1).to_numpy(zero_copy_only=False)
        flat_scores = table.column("scores").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        owner = np.repeat(position, lengths)
        rank = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows[owner, rank] = flat
        scores[owner, rank] = flat_scores
        return rows, scores

    def groups(self) -> list[np.ndarray]:
        """Near-duplicate groups, largest first, each the index rows of its members."""
        table = self.shards.groups() if self.shards is not None else \
            pq.read_table(os.path.join(self.local_dir, artifact.GROUPS))
        if not table.num_rows:
            return []
        number = table.column("group").to_numpy()
        member = pc.index_in(table.column("id"), value_set=self.info.column("id")).to_numpy(zero_copy_only=False)
        order = np.argsort(number, kind="stable")
        number, member = number[order], member[order]
        starts = np.flatnonzero(np.r_[True, number[1:] != number[:-1]])
        groups = np.split(member, starts[1:])
        return sorted(groups, key=len, reverse=True)

    def thumbnail_packs(self) -> list[str]:
        """The thumbnail packs of the run that built this index (none for `imgsim index` runs)."""
        run_dir = self.index_dir.rstrip("/").rsplit("/", 1)[0] if is_gcs(self.index_dir) else \
            os.path.dirname(os.path.normpath(self.index_dir))
        return pack_files(self.store, join(run_dir, THUMBNAILS_DIR))

    def thumbnails(self) -> Iterator[tuple[int, Thumbnail]]:
        """(index row, thumbnail) for the rows whose thumbnail was made from the indexed bytes."""
        row_of = {item: row for row, item in enumerate(self.ids)}
        sha = self.info.column("sha256").to_pylist()
        seen = set()
        for item_id, sha256, thumbnail in read_packs(self.store, self.thumbnail_packs()):
            row = row_of.get(item_id)
            if row is not None and row not in seen and sha[row] == sha256:
                seen.add(row)
                yield row, thumbnail
