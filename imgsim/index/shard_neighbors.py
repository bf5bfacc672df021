"""The neighbours table and near-duplicate pairs of a sharded index, in units a worker can hold.

Rows are numbered globally shard after shard (shard offset + row in shard).
neighbors/part-QQQQQ-BBBBB.parquet holds the rows of shard Q from
BBBBB * BATCH_ROWS on, so a consumer finds an item's part from its row. Two
ways to fill them, each unit holding at most two shards' vectors:

- exact (collections up to --exact-neighbors-max): unit (Q, T) scores shard Q
  against shard T block by block and offers each row of Q its best k in T,
  plus every pair at or above the duplicate threshold; the k best over all
  T are the exact neighbours (fanout.merge, a top-k combiner).
- from the index: unit T loads shard T's searcher and answers, for every
  shard Q, the rows of Q that route to T (its shards_to_search nearest
  centroids); merging gives what a consumer's query would; pairs come from
  those lists, as for a single large index.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from imgsim.index.exact import exact_candidates
from imgsim.index.fanout import Candidates, merge, route, scatter

BATCH_ROWS = 8192


def part_name(shard: int, batch: int) -> str:
    return f"neighbors/part-{shard:05d}-{batch:05d}.parquet"


def part_names(counts: Sequence[tuple[int, int]]) -> list[str]:
    """Every part of shards given as (number, count)."""
    return [part_name(number, b) for number, count in counts for b in range(math.ceil(count / BATCH_ROWS))]


@dataclasses.dataclass(frozen=True)
class ShardData:
    """What a unit holds of one shard: its number, global offset, ids (row order) and vectors."""

    number: int
    offset: int
    ids: np.ndarray  # object (count,)
    vectors: np.ndarray  # float32 (count, dim); may be empty when only ids are needed

    def batches(self) -> Iterator[tuple[int, slice]]:
        for b in range(math.ceil(len(self.ids) / BATCH_ROWS)):
            yield b, slice(b * BATCH_ROWS, min(len(self.ids), (b + 1) * BATCH_ROWS))


@dataclasses.dataclass(frozen=True)
class Offer:
    """What one unit offers one batch of query rows: candidates for some of its rows (positions in
    the batch; on the index path only the rows routed to the unit's shard)."""

    size: int  # rows in the batch
    rows: np.ndarray  # int64 (m,): positions in the batch
    found: Candidates  # (m, k), with ids


def merge_offers(offers: Iterable[Offer]) -> Candidates:
    """The top-k combiner: each row's k best over every offer, holding one batch and one offer."""
    best = None
    for offer in offers:
        if best is None:
            best = Candidates.empty(offer.size, offer.found.rows.shape[1], with_ids=True)
        k = best.rows.shape[1]
        mine = Candidates(best.rows[offer.rows], best.scores[offer.rows], best.ids[offer.rows])
        merged = merge([mine, offer.found], k)
        best.rows[offer.rows], best.scores[offer.rows], best.ids[offer.rows] = merged.rows, merged.scores, merged.ids
    return best


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Near-duplicate pairs: global rows (a < b), their cosine, and both ids."""

    rows: np.ndarray  # int64 (p, 2)
    scores: np.ndarray  # float32 (p,)
    ids: np.ndarray  # object (p, 2)

    @classmethod
    def empty(cls) -> "Pairs":
        return cls(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), np.zeros((0, 2), object))

    @classmethod
    def concat(cls, parts: Sequence["Pairs"]) -> "Pairs":
        parts = [p for p in parts if len(p.rows)]
        if not parts:
            return cls.empty()
        rows = np.concatenate([p.rows for p in parts])
        _, first = np.unique(rows, axis=0, return_index=True)
        first = np.sort(first)
        return cls(rows[first], np.concatenate([p.scores for p in parts])[first],
                   np.concatenate([p.ids for p in parts])[first])

    def __len__(self) -> int:
        return len(self.rows)


def exact_unit(query: ShardData, target: ShardData, k: int, threshold: float
               ) -> Iterator[tuple[int, Offer, Pairs]]:
    """For each batch of query rows: their k best rows of target, exactly, and their pairs."""
    for b, rows in query.batches():
        global_rows = query.offset + np.arange(rows.start, rows.stop)
        found, pairs = exact_candidates(query.vectors[rows], global_rows, target.vectors, target.offset, k,
                                        pair_threshold=threshold)
        size = rows.stop - rows.start
        yield b, Offer(size, np.arange(size), with_ids(found, target)), pairs_with_ids(pairs, query, target)


def searcher_unit(searcher, target: ShardData, centroids: np.ndarray, target_slot: int, query: ShardData,
                  shards_to_search: int, k: int) -> Iterator[tuple[int, Offer]]:
    """For each batch of query rows with rows that route to target (centroids in shard order;
    target_slot is target's position there): target's k best for those rows, by its own searcher."""
    for b, rows in query.batches():
        routed = np.any(route(query.vectors[rows], centroids, shards_to_search) == target_slot, axis=1)
        picked = np.flatnonzero(routed)
        if not len(picked):
            continue
        found, scores = searcher.search_batched(query.vectors[rows][picked],
                                                final_num_neighbors=min(k + 1, len(target.ids)))
        found, scores = np.asarray(found, np.int64), np.asarray(scores, np.float32)
        own = query.offset + rows.start + picked - target.offset  # the query's row in target, if it is there
        keep = (found >= 0) & (found != own[:, None])
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept answers first, in score order
        found = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(found, order, 1), -1)
        answered = scatter(found, np.take_along_axis(scores, order, 1), target.offset, k, target.ids)
        yield b, Offer(rows.stop - rows.start, picked.astype(np.int64), answered)


def with_ids(found: Candidates, target: ShardData) -> Candidates:
    local = np.where(found.valid, found.rows - target.offset, 0)
    return Candidates(found.rows, found.scores, np.where(found.valid, target.ids[local], None))


def pairs_with_ids(pairs: np.ndarray, query: ShardData, target: ShardData) -> Pairs:
    if not len(pairs):
        return Pairs.empty()
    rows = pairs[:, :2].astype(np.int64)
    return Pairs(rows, pairs[:, 2].astype(np.float32),
                 np.stack([_id_of(rows[:, 0], query, target), _id_of(rows[:, 1], query, target)], axis=1))


def _id_of(rows: np.ndarray, a: ShardData, b: ShardData) -> np.ndarray:
    in_a = (rows >= a.offset) & (rows < a.offset + len(a.ids))
    return np.where(in_a, a.ids[np.where(in_a, rows - a.offset, 0)],
                    b.ids[np.clip(rows - b.offset, 0, max(0, len(b.ids) - 1))])


def pairs_from_candidates(query: ShardData, batch: slice, found: Candidates, threshold: float) -> Pairs:
    """Pairs at or above threshold among a batch's neighbour lists (the approximate path)."""
    i, col = np.nonzero(found.valid & (found.scores >= threshold))
    if not len(i):
        return Pairs.empty()
    a = query.offset + batch.start + i
    b = found.rows[i, col]
    a_ids, b_ids = query.ids[batch.start + i], found.ids[i, col]
    swap = b < a
    rows = np.stack([np.where(swap, b, a), np.where(swap, a, b)], axis=1)
    ids = np.stack([np.where(swap, b_ids, a_ids), np.where(swap, a_ids, b_ids)], axis=1)
    return Pairs.concat([Pairs(rows, found.scores[i, col].astype(np.float32), ids)])


def part_table(query_ids: np.ndarray, found: Candidates) -> pa.Table:
    """One part of neighbors.parquet's schema: id, neighbor_ids, scores (best first)."""
    valid = found.valid
    neighbor_ids = [list(ids[v]) for ids, v in zip(found.ids, valid)]
    scores = [s[v].astype(np.float32) for s, v in zip(found.scores, valid)]
    return pa.table({"id": pa.array(list(query_ids), pa.string()),
                     "neighbor_ids": pa.array(neighbor_ids, pa.list_(pa.string())),
                     "scores": pa.array(scores, pa.list_(pa.float32()))})


def groups_from_pairs(pairs: Pairs, groups: list[list[int]]) -> pa.Table:
    """groups.parquet (group, id, group_size) from connected groups of global rows."""
    id_of = {}
    for (a, b), (ia, ib) in zip(pairs.rows.tolist(), pairs.ids.tolist()):
        id_of[a], id_of[b] = ia, ib
    group, members, sizes = [], [], []
    for number, rows in enumerate(groups):
        for row in rows:
            group.append(number)
            members.append(id_of[row])
            sizes.append(len(rows))
    return pa.table({"group": pa.array(group, pa.int64()), "id": pa.array(members, pa.string()),
                     "group_size": pa.array(sizes, pa.int64())})
