"""The neighbours table and near-duplicate pairs of a sharded index, in units a worker can hold.

Rows are numbered globally shard after shard (shard offset + row in shard).
neighbors/part-QQQQQ-BBBBB.parquet holds the rows of shard Q from
BBBBB * BATCH_ROWS on, so a consumer finds an item's part from its row. Two
ways to fill them, each unit holding at most two shards' vectors:

- exact (collections up to --exact-neighbors-max): unit (Q, T) scores shard Q
  against shard T block by block and offers each row of Q its best k in T;
  the k best over all T are the exact neighbours (fanout.merge, a top-k
  combiner).
- from the index: unit T loads shard T's searcher and answers, for every
  shard Q, the rows of Q that route to T (its shards_to_search nearest
  centroids), with the search parameters the consumer uses; merging gives
  what a consumer's query would.

Near-duplicate pairs come from the merged lists on both paths, never from
all pairs: a collection of large near-duplicate groups (a thousand product
shots on white) would otherwise hold every pair of every group.
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from imgsim.index.exact import exact_candidates
from imgsim.index.fanout import Candidates, merge, route, scatter, without_own
from imgsim.index.tuning import SearchParams

BATCH_ROWS = 8192


def part_name(shard: int, batch: int) -> str:
    return f"neighbors/part-{shard:05d}-{batch:05d}.parquet"


def part_names(counts: Sequence[tuple[int, int]]) -> list[str]:
    """Every part of shards given as (number, count)."""
    return [part_name(number, b) for number, count in counts for b in range(math.ceil(count / BATCH_ROWS))]


@dataclasses.dataclass(frozen=True)
class ShardData:
    """What a unit holds of one shard: its number, global offset, row count and vectors."""

    number: int
    offset: int
    count: int
    vectors: np.ndarray  # float32 (count, dim); may be empty when only the shard's searcher is needed

    def batches(self) -> Iterator[tuple[int, slice]]:
        for b in range(math.ceil(self.count / BATCH_ROWS)):
            yield b, slice(b * BATCH_ROWS, min(self.count, (b + 1) * BATCH_ROWS))


@dataclasses.dataclass(frozen=True)
class Offer:
    """What one unit offers one batch of query rows: candidates (global rows and exact scores, no
    ids: they are looked up once, when the batch's part is written) for some of its rows
    (positions in the batch; on the index path only the rows routed to the unit's shard)."""

    size: int  # rows in the batch
    rows: np.ndarray  # int64 (m,): positions in the batch
    found: Candidates  # (m, k)


def merge_offers(offers: Iterable[Offer]) -> Candidates:
    """The top-k combiner: each row's k best over every offer, holding one batch and one offer."""
    best = None
    for offer in offers:
        if best is None:
            best = Candidates.empty(offer.size, offer.found.rows.shape[1])
        k = best.rows.shape[1]
        merged = merge([Candidates(best.rows[offer.rows], best.scores[offer.rows]), offer.found], k)
        best.rows[offer.rows], best.scores[offer.rows] = merged.rows, merged.scores
    return best


def pack_offers(offers: Iterable[tuple[int, Offer]]) -> bytes:
    """One unit's offers to every batch of one query shard, as the bytes of one .npz file (batch,
    position in batch, rows, scores): what travels between the unit and the merge, through the
    work directory, so that no runner's shuffle holds every offer of every shard."""
    offers = list(offers)
    k = offers[0][1].found.rows.shape[1] if offers else 0
    arrays = {
        "batch": np.concatenate([np.full(len(o.rows), b, np.int64) for b, o in offers] or [np.zeros(0, np.int64)]),
        "position": np.concatenate([o.rows for _, o in offers] or [np.zeros(0, np.int64)]).astype(np.int64),
        "rows": np.concatenate([o.found.rows for _, o in offers] or [np.zeros((0, k), np.int64)]),
        "scores": np.concatenate([o.found.scores for _, o in offers] or [np.zeros((0, k), np.float32)]),
    }
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    return sink.getvalue()


def merged_batches(count: int, k: int, packs: Iterable[bytes]) -> Iterator[tuple[int, slice, Candidates]]:
    """Every batch of a query shard of `count` rows with its rows' k best over all packed offers
    (rows no unit answered keep no candidates); holds the packs of one shard, batch order."""
    blocks = []
    for data in packs:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            block = {name: f[name] for name in ("batch", "position", "rows", "scores")}
        if len(block["batch"]):
            order = np.argsort(block["batch"], kind="stable")
            blocks.append({name: value[order] for name, value in block.items()})
    for b in range(math.ceil(count / BATCH_ROWS)):
        rows = slice(b * BATCH_ROWS, min(count, (b + 1) * BATCH_ROWS))
        size = rows.stop - rows.start
        offers = [Offer(size, np.arange(size), Candidates.empty(size, k))]
        for block in blocks:
            lo, hi = np.searchsorted(block["batch"], [b, b + 1])
            if hi > lo:
                offers.append(Offer(size, block["position"][lo:hi],
                                    Candidates(block["rows"][lo:hi], block["scores"][lo:hi])))
        yield b, rows, merge_offers(offers)


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Near-duplicate pairs: global rows (a < b) and their cosine."""

    rows: np.ndarray  # int64 (p, 2)
    scores: np.ndarray  # float32 (p,)

    @classmethod
    def empty(cls) -> "Pairs":
        return cls(np.zeros((0, 2), np.int64), np.zeros(0, np.float32))

    @classmethod
    def concat(cls, parts: Sequence["Pairs"]) -> "Pairs":
        parts = [p for p in parts if len(p.rows)]
        if not parts:
            return cls.empty()
        rows = np.concatenate([p.rows for p in parts])
        _, first = np.unique(rows, axis=0, return_index=True)
        first = np.sort(first)
        return cls(rows[first], np.concatenate([p.scores for p in parts])[first])

    def __len__(self) -> int:
        return len(self.rows)


def exact_unit(query: ShardData, target: ShardData, k: int) -> Iterator[tuple[int, Offer]]:
    """For each batch of query rows: their k best rows of target, exactly."""
    for b, rows in query.batches():
        global_rows = query.offset + np.arange(rows.start, rows.stop)
        found, _ = exact_candidates(query.vectors[rows], global_rows, target.vectors, target.offset, k)
        size = rows.stop - rows.start
        yield b, Offer(size, np.arange(size), found)


def searcher_unit(searcher, target: ShardData, centroids: np.ndarray, target_slot: int, query: ShardData,
                  shards_to_search: int, k: int, params: SearchParams = SearchParams()) -> Iterator[tuple[int, Offer]]:
    """For each batch of query rows with rows that route to target (centroids in shard order;
    target_slot is target's position there): target's k best for those rows, by its own searcher
    with the shard's search parameters."""
    for b, rows in query.batches():
        routed = np.any(route(query.vectors[rows], centroids, shards_to_search) == target_slot, axis=1)
        picked = np.flatnonzero(routed)
        if not len(picked):
            continue
        found, scores = searcher.search_batched(query.vectors[rows][picked],
                                                final_num_neighbors=min(k + 1, target.count), **params.kwargs())
        own = query.offset + rows.start + picked - target.offset  # the query's row in target, if it is there
        found, scores = without_own(np.asarray(found, np.int64), np.asarray(scores, np.float32), own)
        answered = scatter(found[:, :k], scores[:, :k], target.offset, k)
        yield b, Offer(rows.stop - rows.start, picked.astype(np.int64), answered)


def pairs_from_candidates(first_row: int, found: Candidates, threshold: float) -> Pairs:
    """Pairs at or above threshold among a batch's neighbour lists (the approximate path); the
    batch's rows are first_row, first_row + 1, ..."""
    i, col = np.nonzero(found.valid & (found.scores >= threshold))
    if not len(i):
        return Pairs.empty()
    a, b = first_row + i, found.rows[i, col]
    return Pairs.concat([Pairs(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1),
                               found.scores[i, col].astype(np.float32))])


IdsOf = Callable[[np.ndarray], np.ndarray]  # global rows -> their ids (object array)


def part_table(query_ids: Sequence[str], found: Candidates, ids_of: IdsOf) -> pa.Table:
    """One part of neighbors.parquet's schema: id, neighbor_ids, scores (best first)."""
    valid = found.valid
    offsets = pa.array(np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32))
    names = ids_of(found.rows[valid]) if valid.any() else np.zeros(0, object)
    neighbor_ids = pa.ListArray.from_arrays(offsets, pa.array(names, pa.string()))
    scores = pa.ListArray.from_arrays(offsets, pa.array(found.scores[valid].astype(np.float32), pa.float32()))
    return pa.table({"id": pa.array(list(query_ids), pa.string()),
                     "neighbor_ids": neighbor_ids,
                     "scores": scores})


def groups_report(groups: list[list[int]], threshold: float) -> dict:
    """The manifest's `groups`: how many, how many items, the largest sizes."""
    sizes = [len(rows) for rows in groups]
    return {"threshold": threshold, "count": len(groups), "items": int(sum(sizes)), "largest": sizes[:10],
            "from": "pairs at or above the threshold among the neighbour lists"}


def groups_table(groups: list[list[int]], ids_of: IdsOf) -> pa.Table:
    """groups.parquet (group, id, group_size) from connected groups of global rows (largest first)."""
    members = [row for rows in groups for row in rows]
    names = ids_of(np.asarray(members, np.int64)).tolist() if members else []
    group = [number for number, rows in enumerate(groups) for _ in rows]
    sizes = [len(rows) for rows in groups for _ in rows]
    return pa.table({"group": pa.array(group, pa.int64()), "id": pa.array(names, pa.string()),
                     "group_size": pa.array(sizes, pa.int64())})


class RowIds:
    """Global rows -> ids, reading a shard's ids (one column of its ids.parquet, as Arrow strings)
    when first asked and keeping up to `keep_rows` of them: a part's neighbours lie anywhere in
    the collection, and reading them a row group at a time read each group many times."""

    def __init__(self, entries: Sequence, read_ids: Callable[[object], pa.Array], keep_rows: int = 4_000_000):
        """entries: the shards' entries (imgsim.index.artifact.ShardEntry), in row order;
        read_ids(entry): that shard's ids in row order."""
        self._entries = list(entries)
        self._offsets = np.array([e.offset for e in self._entries], np.int64)
        self._read = read_ids
        self._keep_rows = keep_rows
        self._cache: dict = {}

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.empty(len(rows), object)
        slots = np.searchsorted(self._offsets, rows, side="right") - 1
        for slot in np.unique(slots).tolist():
            at = slots == slot
            ids = self._ids(slot)
            out[at] = ids.take(pa.array(rows[at] - self._offsets[slot])).to_numpy(zero_copy_only=False)
        return out

    def _ids(self, slot: int) -> pa.Array:
        if slot not in self._cache:
            held = sum(len(a) for a in self._cache.values())
            while self._cache and held + self._entries[slot].count > self._keep_rows:
                held -= len(self._cache.pop(next(iter(self._cache))))
            self._cache[slot] = self._read(self._entries[slot])
        return self._cache[slot]
