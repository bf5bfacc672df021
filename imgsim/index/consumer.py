"""Using a published index downstream, without Beam.

    from imgsim import ImageIndex
    index = ImageIndex.open("gs://bucket/imgsim")       # follows LATEST; or run_id=...
    index.similar("1915.534", k=10)                      # the 10 most like it (itself left out)
    index.search(vectors, k=10)                          # your own unit or raw vectors
    index.search_image("photo.jpg", k=10)                # embeds with the index's own model

`open` copies the artifact into a local cache (ScaNN loads from a local
directory), reusing files whose checksum still matches, and verifies every
file against the manifest, and the manifest against LATEST's pin, before
loading anything (imgsim.index.artifact says what is trusted). A sharded
index (format 2) is copied and verified file by file as its shards are
first needed, and a query searches the shards nearest to it
(imgsim.index.readers). `search_image`
builds the model the manifest names and refuses weights whose checksum differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from imgsim.embed.decode import decode_image
from imgsim.embed.reproduce import check_reproducible, embedder_for  # TensorFlow only when a model is built
from imgsim.index import artifact
from imgsim.index.artifact import ArtifactError
from imgsim.index.filtered import EXACT_MAX, ORDERS, Gathered
from imgsim.index.filtered import search as search_filtered
from imgsim.index.filters import Filter, check
from imgsim.index.latest import read_latest
from imgsim.index.strength import strength
from imgsim.index.readers import ShardedReader, SingleReader
from imgsim.runs.layout import RunLayout
from imgsim.storage import ObjectStore, is_gcs, join
from imgsim.storage import cache_dir as imgsim_cache_dir

Filters = Optional[Mapping[str, Union[str, Sequence]]]
Ranges = Optional[Mapping[str, tuple]]


@dataclasses.dataclass(frozen=True)
class Match:
    """One result: the item's id, its score (the cosine similarity to the query; for outliers, how
    isolated it is), its rank (1 = the best other item; 0 = the query item itself, only where asked
    for), and the item's metadata (url, sha256, width, height and the input's columns) under a key
    of its own."""

    id: str
    score: float
    rank: int
    metadata: dict
    strength: Optional[dict] = None  # {"percentile", "label"} (imgsim.index.strength); None for outliers

    def to_dict(self) -> dict:
        out = {"id": self.id, "score": round(float(self.score), 6), "rank": self.rank, "metadata": self.metadata}
        if self.strength is not None:
            out["strength"] = self.strength
        return out


@dataclasses.dataclass(frozen=True)
class IndexLocation:
    index_dir: str
    manifest_sha256: Optional[str] = None  # LATEST's pin on the manifest, when found through LATEST


def locate_index(store: ObjectStore, location: str, run_id: Optional[str] = None) -> IndexLocation:
    """The index directory for an output root (via LATEST or run_id) or an index directory itself."""
    if run_id:
        index_dir = RunLayout(location, run_id).index_dir
        if not is_gcs(location):
            artifact.check_no_links(location, os.path.relpath(index_dir, location).replace(os.sep, "/"))
        return IndexLocation(index_dir)
    if store.exists(join(location, artifact.MANIFEST)):
        return IndexLocation(location)
    latest = read_latest(store, location)
    if latest is None:
        raise ArtifactError(f"no index at {location}: neither LATEST nor {artifact.MANIFEST} exists")
    if not is_gcs(location):
        artifact.check_no_links(location, latest.index)
    return IndexLocation(join(location, latest.index), latest.manifest_sha256)


def local_copy_dir(index_dir: str, cache_dir: Optional[str] = None) -> str:
    """Where open() copies the artifact at index_dir: one directory per artifact location."""
    key = hashlib.sha256(os.path.abspath(index_dir).encode() if not is_gcs(index_dir)
                         else index_dir.encode()).hexdigest()[:16]
    return os.path.join(cache_dir or imgsim_cache_dir("index"), key)


class ImageIndex:
    def __init__(self, local_dir: str, manifest: artifact.Manifest, source: str, store: ObjectStore,
                 shards_to_search: Optional[int] = None):
        self.local_dir = local_dir
        self._store = store
        self._manifest = manifest
        self.source = source
        self.signature = manifest.signature
        if manifest.sharded:
            def fetch(files: dict) -> None:
                artifact.fetch_files(store, source, local_dir, files)

            self._reader = ShardedReader(local_dir, manifest, fetch, shards_to_search)
        else:
            self._reader = SingleReader(local_dir, manifest)
        self._embedder = None
        self._lock = threading.Lock()
        self._gathered = Gathered()  # the vectors of filters asked recently, scored exactly
        self.exact_filtered_max = EXACT_MAX  # a filter allowing at most this many rows scores them exactly

    @classmethod
    def open(cls, location: str, run_id: Optional[str] = None, cache_dir: Optional[str] = None,
             store: Optional[ObjectStore] = None, shards_to_search: Optional[int] = None,
             manifest_sha256: Optional[str] = None) -> "ImageIndex":
        """Open the index at an output root (LATEST, or run_id) or an index directory, local or gs://.

        shards_to_search: for a sharded index, how many of the nearest shards a query searches
        (default: the number chosen when it was built, from its recall). manifest_sha256: refuse
        a manifest with another digest (LATEST's pin, read earlier)."""
        store = store or ObjectStore()
        found = locate_index(store, location, run_id)
        if not is_gcs(found.index_dir) and not os.path.isdir(found.index_dir):
            raise ArtifactError(f"no index at {found.index_dir}")
        local = local_copy_dir(found.index_dir, cache_dir)
        manifest = artifact.fetch_artifact(store, found.index_dir, local, manifest_sha256 or found.manifest_sha256)
        return cls(local, manifest, found.index_dir, store, shards_to_search)

    def warm(self) -> None:
        """A probe query, so that no request pays for loading a searcher: one that searches every
        shard of a sharded index (each is loaded on first use otherwise)."""
        if len(self):
            every = len(self._manifest.shards) if self.sharded else None
            self.search(self._reader.vector(0)[None, :], k=1, shards_to_search=every)

    def close(self) -> None:
        """Let go of the searchers, vectors and model (the index cannot be asked afterwards)."""
        with self._lock:
            self._reader = None
            self._embedder = None
            self._gathered = Gathered()

    def __len__(self) -> int:
        return self._reader.count

    @property
    def manifest(self) -> dict:
        """The manifest as written (docs/index.md lists its fields)."""
        return self._manifest.document

    @property
    def run_id(self) -> str:
        return self._manifest.run_id

    @property
    def manifest_sha256(self) -> str:
        """The sha256 of the manifest's bytes: the artifact's identity (two output roots can hold
        runs of the same id; LATEST pins this)."""
        with open(os.path.join(self.local_dir, artifact.MANIFEST), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @property
    def sharded(self) -> bool:
        return self._manifest.sharded

    @property
    def shards_to_search(self) -> Optional[int]:
        """How many shards a query searches (None: the index has one searcher)."""
        return getattr(self._reader, "shards_to_search", None)

    @property
    def ids(self) -> list[str]:
        """Every item's id, in the index's row order (the order of `vectors()`)."""
        return self._reader.ids()

    @property
    def metadata_columns(self) -> list[str]:
        """The names under which each Match's metadata holds an item's url, sha256, ... and columns."""
        return self._reader.columns()

    def vectors(self) -> np.ndarray:
        """Every item's unit vector, (count, dim) float32, in row order."""
        return self._reader.vectors()

    def vector(self, item_id: str) -> np.ndarray:
        return self._reader.vector(self._row(item_id))

    @property
    def filterable(self) -> dict:
        """The metadata columns results can be filtered on, and how (imgsim.index.filters)."""
        return dict(self._manifest.section("filters"))

    def similar(self, item_id: str, k: int = 10, include_self: bool = False, filters: Filters = None,
                ranges: Ranges = None, order: str = "most") -> list[Match]:
        """The k items most like item_id (order="least": least like it), best first as rank 1, the
        item itself left out; with include_self it comes first, as rank 0.
        filters={"column": [values]} (a column's values OR-ed, columns AND-ed) and
        ranges={"column": (low, high)} (numbers or ISO dates, None for an open end) keep only the
        items that satisfy them (FilterError for a column that cannot be filtered)."""
        row = self._row(item_id)
        vector = self._reader.vector(row)
        out = self._matches(self._query(vector[None, :], k, None, Filter.of(filters, ranges), order, [row]), order)[0]
        if include_self:
            out.insert(0, self._match(row, float(np.dot(vector, vector)), 0))
        return out

    def search(self, vectors, k: int = 10, shards_to_search: Optional[int] = None, filters: Filters = None,
               ranges: Ranges = None, order: str = "most") -> list[list[Match]]:
        """The k nearest items for each query vector (normalised here, so raw vectors work too);
        filters, ranges and order as for `similar`. shards_to_search overrides the index's own for a
        sharded index."""
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if queries.shape[1] != self.signature.dim:
            raise ValueError(f"query vectors have {queries.shape[1]} dimensions; the index has {self.signature.dim}")
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = queries / np.where(norms > 0, norms, 1.0)
        return self._matches(self._query(queries, k, shards_to_search, Filter.of(filters, ranges), order), order)

    def recommend(self, positive: Sequence[str], negative: Sequence[str] = (), k: int = 10,
                  filters: Filters = None, ranges: Ranges = None) -> list[Match]:
        """More like the positive examples and less like the negative ones: the query is the mean of
        the positives moved away from the mean of the negatives (mean(pos) + (mean(pos) - mean(neg)),
        Qdrant's average_vector); the examples themselves are never in the results."""
        if not positive:
            raise ValueError("recommend needs at least one positive example")
        rows = [self._row(i) for i in positive]
        query = self._reader.vectors_of(np.asarray(rows, np.int64)).mean(axis=0)
        avoid = [self._row(i) for i in negative]
        if avoid:
            query = 2 * query - self._reader.vectors_of(np.asarray(avoid, np.int64)).mean(axis=0)
        norm = float(np.linalg.norm(query))
        if norm == 0:
            raise ValueError("the positive and negative examples cancel out: there is nothing to look for")
        found = self._query((query / norm)[None, :].astype(np.float32), k, None, Filter.of(filters, ranges), "most",
                            rows + avoid)
        return self._matches(found, "most")[0]

    def outliers(self, k: int = 50, filters: Filters = None, ranges: Ranges = None) -> list[Match]:
        """The k items least like any other, most isolated first: score = 1 - the mean cosine of an
        item's 10 nearest neighbours (recorded when the index was built); filters as for `similar`."""
        table = self._reader.outliers()
        rows = table.column("row").to_numpy()
        scores = table.column("score").to_numpy()
        where = Filter.of(filters, ranges)
        if where:
            keep = self._allowed(where)[rows]
            rows, scores = rows[keep], scores[keep]
        return [self._match(int(r), float(s), rank, similarity=False)
                for rank, (r, s) in enumerate(zip(rows[:k], scores[:k]), 1)]

    def check_filters(self, filters: Filters = None, ranges: Ranges = None) -> None:
        """FilterError (one line) unless every column can be filtered so and every value parses."""
        check(Filter.of(filters, ranges), self.filterable)

    def _allowed(self, where: Filter) -> np.ndarray:
        described = self.filterable
        check(where, described)
        return self._reader.allowed(where, described)

    def _query(self, queries: np.ndarray, k: int, shards_to_search: Optional[int], where: Filter, order: str,
               exclude: Sequence[int] = ()):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
        allowed = self._allowed(where) if where else None
        return search_filtered(self._reader, queries, k, shards_to_search, allowed, exclude, self.exact_filtered_max,
                               order, self._gathered)

    def _matches(self, found, order: str) -> list[list[Match]]:
        sign = -1.0 if order == "least" else 1.0
        return [[self._match(int(r), sign * float(s), rank) for rank, (r, s) in enumerate(zip(rr, ss), 1) if r >= 0]
                for rr, ss in zip(found.rows, found.scores)]

    def search_image(self, image: Union[str, bytes], k: int = 10, weights: Optional[str] = None,
                     backend: Optional[str] = None, max_pixels: Optional[int] = None, filters: Filters = None,
                     ranges: Ranges = None, order: str = "most", decode_budget=None) -> list[Match]:
        """Embed an image (path, gs:// URI or bytes) with the index's model, then search (filters,
        ranges and order as for `similar`).

        backend: refuse unless it is the backend the index was embedded through (default: that one);
        an int8 index embeds with the quantised model it carries.
        max_pixels: refuse larger images (StageError decompression_bomb) before decoding them.
        decode_budget: an imgsim.embed.memory.DecodeBudget the decode reserves its memory from (a
        service's, shared by its searches, as a pipeline worker's is)."""
        data = image if isinstance(image, (bytes, bytearray)) else self._store.read_bytes(image)
        embedder, decode_config = self._model(weights, backend)
        if max_pixels is not None:
            decode_config = dataclasses.replace(decode_config, max_pixels=min(max_pixels, decode_config.max_pixels))
        vectors, valid = embedder(decode_image(bytes(data), decode_config, decode_budget).pixels[None])
        if not valid[0]:
            raise ValueError("the image gives an all-zero embedding; it cannot be searched")
        return self.search(vectors, k, filters=filters, ranges=ranges, order=order)[0]

    def load_model(self, weights: Optional[str] = None, backend: Optional[str] = None) -> None:
        """Build the model search_image uses now rather than on the first search (ModelMismatch when
        the index's vectors cannot be reproduced, or backend is not the index's)."""
        self._model(weights, backend)

    def check_model(self, backend: Optional[str] = None) -> None:
        """ModelMismatch unless search_image could embed for this index, as far as that can be told
        without building the model (load_model builds it)."""
        check_reproducible(self.signature, backend)

    def metadata(self, item_id: str) -> dict:
        """An item's metadata (url, sha256, width, height and the input's columns); KeyError if unknown."""
        return self._match(self._row(item_id), 1.0, 1).metadata

    def neighbors(self, item_id: str) -> list[Match]:
        """The precomputed neighbours of item_id (neighbors.parquet; exact unless the manifest's
        `neighbors.exact` says otherwise), itself excluded."""
        row = self._reader.neighbors(item_id, self._row(item_id))
        if row is None:
            raise KeyError(item_id)
        return [self._match(self._row(i), s, rank)
                for rank, (i, s) in enumerate(zip(row["neighbor_ids"], row["scores"]), 1)]

    def groups(self) -> pa.Table:
        return self._reader.groups()

    def batches(self, columns: Optional[list] = None) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """Every item in row order, a few thousand at a time: (table of id and the metadata columns
        asked for, their unit vectors), holding one batch (and, sharded, one shard's ids) at a time."""
        return self._reader.batches(columns)

    # internals
    def _row(self, item_id: str) -> int:
        try:
            return self._reader.row_of(item_id)
        except KeyError:
            raise KeyError(f"id {item_id!r} is not in the index") from None

    def _match(self, row: int, score: float, rank: int, similarity: bool = True) -> Match:
        item_id, info = self._reader.info(row)
        told = strength(score, self._manifest.section("neighbors").get("score_quantiles") or [],
                        self._manifest.section("groups").get("threshold")) if similarity else None
        return Match(item_id, score, rank, info, told)

    def _model(self, weights: Optional[str], backend: Optional[str] = None):
        with self._lock:
            if self._embedder is None or backend not in (None, self.signature.backend):
                if self.sharded:  # an int8 run's model is fetched, like shards, when first needed
                    model_files = {rel: meta for rel, meta in self._manifest.files.items()
                                   if rel.startswith(artifact.MODEL_DIR + "/")}
                    artifact.fetch_files(self._store, self.source, self.local_dir, model_files)
                self._embedder = embedder_for(self.signature, self._store, weights,
                                              os.path.join(self.local_dir, artifact.MODEL_DIR), backend)
            return self._embedder
