"""Growing a published sharded index instead of rebuilding it.

When a build's input differs from LATEST's sharded index by at most
GROWTH_MAX_SHARE of its items (new, changed and deleted ids, by id and sha256),
the same settings and the same model, the new index is the published one grown:

- shards: each keeps its searcher (its tree and codebooks); removed rows are
  deleted (ScaNN moves the last row into the gap) and new rows, assigned to the
  nearest shard centroid, appended; a shard past the memory bound splits in two
  (2-means, both halves built afresh). A changed item is removed and added.
- neighbours: a list can change only if it held a removed item (recomputed
  whole: "dirty" rows, with the new items' own) or if a new item enters it;
  every other row's list is the published one merged with the new items that
  beat its k-th: exactly (every row against the new items) where the table is
  exact, else from each new item's 2k nearest as the shards answer it.
In the exact regime the result equals a full rebuild's lists; the recall gate,
groups and outliers are computed as in a full build. numpy and Arrow only.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgsim.index import artifact
from imgsim.index.artifact import IDS, VECTORS, load_vectors
from imgsim.index.exact import exact_candidates
from imgsim.index.fanout import Candidates, route, scatter, without_own
from imgsim.index.kmeans import assign, normalised, train_centroids
from imgsim.index.searcher import IndexOptions
from imgsim.index.shard_build import StagedShard, build_shard, id_order, tuning_steps, write_shard
from imgsim.index.shard_neighbors import BATCH_ROWS, Offer, ShardData, part_names
from imgsim.index.tuning import RecallQueries
from imgsim.storage import ObjectStore, join

GROWTH_MAX_SHARE = 0.10
UPSERT_BATCH = 1024
CHECKED_ROWS = 64  # moved and appended rows self-queried after a shard is grown


class GrowthError(ValueError):
    """The published index cannot be grown as planned (a one-line reason)."""


@dataclasses.dataclass(frozen=True)
class Growth:
    """How the published index grows into this build's: what changed, where the old shards are."""

    base_run: str
    base_dir: str  # the published index's directory (local or gs://)
    base: artifact.Manifest  # its manifest (format 2)
    added: frozenset  # (file number, row) of the input rows that are new or changed
    removed: dict  # base shard number -> sorted rows of that shard to remove (deleted or changed)
    removed_ids: frozenset  # ids whose published version goes (deleted or changed)
    new: int
    changed: int
    deleted: int
    count: int  # items after growing
    queries: RecallQueries  # recall queries, drawn among the items that stay
    steps: tuple  # the tuning ladder's steps the shards answer: up to one past the published index's
    centroids: np.ndarray  # float32, row = published shard number (zero where a number is unused)

    @property
    def entries(self) -> tuple:
        return self.base.shards

    @property
    def next_number(self) -> int:
        return max(e.shard for e in self.entries) + 1

    def split_number(self, source: int) -> int:
        """The number of the second half of a published shard that splits (after every published one)."""
        return self.next_number + source

    def source_of(self, number: int) -> int:
        """The published shard a grown shard's rows come from."""
        return number if number < self.next_number else number - self.next_number

    def report(self) -> dict:
        return {"grown_from": self.base_run, "new": self.new, "changed": self.changed, "deleted": self.deleted,
                "share": round((self.new + self.changed + self.deleted) / max(1, self.base.count), 5)}


def plan_growth(store: ObjectStore, plan, settings, output: str, latest) -> tuple[Optional[Growth], str]:
    """The growth from LATEST's index to the files of `plan` (an IndexPlan), or None and why the
    index is built whole."""
    if settings.full_rebuild:
        return None, "--full-rebuild"
    if not plan.sharded:
        return None, "one searcher: built whole"
    if latest is None:
        return None, "nothing published yet"
    base_dir = join(output, latest.index)
    _, base = artifact.read_manifest(store, base_dir, latest.manifest_sha256)
    if not base.sharded:
        return None, "the published index is one searcher"
    if base.section("build").get("settings") != settings.growth_key():
        return None, "the published index was built with other index settings"
    if not base.signature.matches(plan.signature):
        return None, "the published index holds another model's vectors"
    diff = _diff(_input_keys(store, plan.files), _published_keys(store, base_dir, base))
    in_new, in_old = diff.column("number").is_valid(), diff.column("shard").is_valid()
    same = pc.fill_null(pc.and_(pc.and_(in_new, in_old), pc.equal(diff.column("sha256"), diff.column("old_sha256"))),
                        False)
    new = pc.sum(pc.and_not(in_new, in_old)).as_py() or 0
    changed = pc.sum(pc.and_not(pc.and_(in_new, in_old), same)).as_py() or 0
    deleted = pc.sum(pc.and_not(in_old, in_new)).as_py() or 0
    count, published = pc.sum(in_new).as_py() or 0, pc.sum(in_old).as_py() or 0
    share = (new + changed + deleted) / max(1, published)
    if share > GROWTH_MAX_SHARE:
        return None, (f"{new + changed + deleted:,} of {published:,} items are new, changed or deleted "
                      f"(more than {GROWTH_MAX_SHARE:.0%})")
    goes = diff.filter(pc.and_not(in_old, same))  # deleted, or changed: the published version goes
    added = diff.filter(pc.and_not(in_new, same))  # new, or changed: the input's version comes
    removed = {}
    for shard, row in zip(goes.column("shard").to_pylist(), goes.column("old_row").to_pylist()):
        removed.setdefault(shard, []).append(row)
    removed_ids = frozenset(goes.column("id").to_pylist())
    added = frozenset(zip(added.column("number").to_pylist(), added.column("row").to_pylist()))
    exact_before = base.section("neighbors").get("exact")
    if exact_before != (count <= settings.exact_neighbors_max):
        return None, "the neighbours table crosses --exact-neighbors-max"
    removed = {number: tuple(sorted(rows)) for number, rows in removed.items()}
    queries = _recall_queries(store, base_dir, base, removed, settings.recall_queries)
    growth = Growth(latest.run_id, base_dir, base, added, removed, removed_ids, new, changed, deleted, count, queries,
                    growth_steps(settings.options, base.section("recall")), _base_centroids(store, base_dir, base))
    return growth, f"grown from {latest.run_id}"


def growth_steps(options: IndexOptions, recall: dict) -> tuple:
    """The ladder up to one step past the one the published index was tuned to: a grown index
    keeps its recall or needs a little more (a full rebuild measures every step; measuring them
    all cost a third of a grown build's CPU at 1M x 512)."""
    steps = tuning_steps(options)
    chosen = (recall.get("leaves_factor", 1), recall.get("reorder_factor", 1))
    at = steps.index(chosen) if chosen in steps else len(steps) - 1
    return tuple(steps[:at + 2])


def _input_keys(store: ObjectStore, files) -> pa.Table:
    """id, sha256, number, row: each id's first row in the input (file number, then row)."""
    tables = []
    for info in sorted(files, key=lambda i: i.number):
        with store.open_read(info.path) as f:
            table = pq.read_table(f, columns=["id", "sha256"])
        tables.append(table.append_column("number", pa.array(np.full(table.num_rows, info.number, np.int64)))
                      .append_column("row", pa.array(np.arange(table.num_rows, dtype=np.int64))))
    table = pa.concat_tables(tables) if tables else pa.table({"id": pa.array([], pa.string())})
    keep_nulls = pc.ScalarAggregateOptions(skip_nulls=False)
    first = table.group_by("id", use_threads=False).aggregate(  # in input order: the first row of each id
        [(name, "first", keep_nulls) for name in ("sha256", "number", "row")])
    return first.rename_columns(["id", "sha256", "number", "row"])


def _published_keys(store: ObjectStore, base_dir: str, base: artifact.Manifest) -> pa.Table:
    """id, old_sha256, shard, old_row of every published item."""
    tables = []
    for entry in base.shards:
        with store.open_read(join(base_dir, entry.path(IDS))) as f:
            table = pq.read_table(f, columns=["id", "sha256"])
        tables.append(pa.table({"id": table.column("id"), "old_sha256": table.column("sha256"),
                                "shard": pa.array(np.full(table.num_rows, entry.shard, np.int64)),
                                "old_row": pa.array(np.arange(table.num_rows, dtype=np.int64))}))
    return pa.concat_tables(tables)


def _diff(new: pa.Table, old: pa.Table) -> pa.Table:
    """Every id of either side, with the other's columns null where it is missing (a hash join:
    Arrow strings, not a Python object per id)."""
    return new.join(old, keys="id", join_type="full outer", use_threads=False)


def _base_centroids(store: ObjectStore, base_dir: str, base: artifact.Manifest) -> np.ndarray:
    import io

    data = np.load(io.BytesIO(store.read_bytes(join(base_dir, artifact.CENTROIDS))), allow_pickle=False)
    dim = base.signature.dim
    if data.dtype != np.float32 or data.shape != (len(base.shards), dim):
        raise GrowthError(f"the published {artifact.CENTROIDS} holds {data.dtype} {data.shape}; rebuild with "
                          "--full-rebuild")
    out = np.zeros((max(e.shard for e in base.shards) + 1, dim), np.float32)
    for entry in base.shards:
        out[entry.shard] = data[entry.centroid]
    return out


def _recall_queries(store: ObjectStore, base_dir: str, base: artifact.Manifest, removed: dict, wanted: int,
                    seed: int = 0) -> RecallQueries:
    """Recall queries drawn (seeded) among the published items that stay, read row by row."""
    rng = np.random.default_rng(seed)
    entries = base.shards
    kept = np.concatenate([np.setdiff1d(np.arange(e.count), removed.get(e.shard, ())) + e.offset
                           for e in entries])
    picked = np.sort(rng.choice(kept, size=min(wanted, len(kept)), replace=False))
    dim = base.signature.dim
    ids, vectors = [], []
    for entry in entries:
        rows = picked[(picked >= entry.offset) & (picked < entry.offset + entry.count)] - entry.offset
        if not len(rows):
            continue
        with store.open_read(join(base_dir, entry.path(IDS))) as f:
            shard_ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
        ids += [shard_ids[r] for r in rows.tolist()]
        vectors.append(_read_rows(store, join(base_dir, entry.path(VECTORS)), rows, entry.count, dim))
    return RecallQueries.drawn(ids, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32), seed)


def _read_rows(store: ObjectStore, path: str, rows: np.ndarray, count: int, dim: int) -> np.ndarray:
    """Rows of a shard's vectors.npy, each read where it lies (no whole copy)."""
    with store.open_read(path) as f:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if dtype != np.float32 or shape != (count, dim) or fortran:
            raise GrowthError(f"{path} holds {dtype} {shape}, not float32 ({count}, {dim}); rebuild with "
                              "--full-rebuild")
        start, out = f.tell(), np.empty((len(rows), dim), np.float32)
        for i, row in enumerate(rows.tolist()):
            f.seek(start + row * dim * 4)
            out[i] = np.frombuffer(f.read(dim * 4), np.float32)
    return out


# shards -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GrownShard:
    """A shard of the grown index as staged, with where its rows came from."""

    staged: StagedShard
    source: int  # the published shard its earlier rows come from
    kept: np.ndarray  # int64, per row: its row in the source shard, -1 for an added row
    dirty: np.ndarray  # bool, per row: its list is computed afresh (added, or its list held a removed item)
    centroid: Optional[np.ndarray]  # a split half's new centroid; None: the source's
    how: str  # "kept" (no change), "grown", "split"


def dirty_rows(old_lists: pa.Table, removed_ids: frozenset) -> np.ndarray:
    """bool per published row: its neighbour list holds a removed item."""
    if not removed_ids or not old_lists.num_rows:
        return np.zeros(old_lists.num_rows, bool)
    lists = old_lists.column("neighbor_ids").combine_chunks()
    hit = pc.is_in(pc.list_flatten(lists), value_set=pa.array(sorted(removed_ids), pa.string()))
    owner = pc.list_parent_indices(lists).to_numpy()
    out = np.zeros(old_lists.num_rows, bool)
    out[owner[hit.to_numpy(zero_copy_only=False)]] = True
    return out


def grow_shard(root: str, entry: artifact.ShardEntry, dim: int, removed_rows: Sequence[int], added: Optional[pa.Table],
               added_vectors: np.ndarray, old_dirty: np.ndarray, options: IndexOptions, queries: RecallQueries,
               recall_k: int, staging: str, max_items: int, split_number: int,
               steps: Optional[Sequence[tuple[int, int]]] = None) -> list[GrownShard]:
    """The published shard `entry` (its files under root, verified) with removed_rows deleted and
    the added rows (a table without vectors, and their vectors) appended; two shards when it
    outgrows max_items. Empty list: every row went."""
    table = pq.read_table(os.path.join(root, *entry.path(IDS).split("/"))).drop_columns(["row"])
    data = load_vectors(os.path.join(root, *entry.path(VECTORS).split("/")), entry.count, dim)
    kept, deletes = _swap_removed(entry.count, removed_rows)
    m = 0 if added is None else added.num_rows
    rows = table.take(pa.array(kept, pa.int64()))
    if m:
        rows = pa.concat_tables([rows, added.select(rows.column_names)], promote_options="default")
    vectors = np.concatenate([data[kept], added_vectors]) if m else data[kept]
    kept = np.concatenate([kept, np.full(m, -1, np.int64)])
    dirty = (kept < 0) | old_dirty[np.maximum(kept, 0)]
    if not len(kept):
        return []
    if len(kept) > max_items and len(kept) >= 4:
        return _split(rows, vectors, kept, dirty, entry.shard, split_number, options, queries, recall_k, staging,
                      steps)
    searcher = artifact.load_searcher(root, entry.scann_dir)
    if deletes or m:
        for position in deletes:  # one at a time: each moves the last row into the gap
            searcher.searcher.delete([position])
        if m:
            searcher.searcher.upsert([None] * m, np.ascontiguousarray(added_vectors, np.float32), UPSERT_BATCH)
        moved = sorted(set(deletes) & set(range(len(kept) - m)))[:CHECKED_ROWS]
        appended = list(range(len(kept) - min(m, CHECKED_ROWS), len(kept)))
        try:  # the rows a growth moved or appended must come back as themselves
            artifact.self_query(searcher, vectors, where=f" (shard {entry.shard}, grown)", rows=moved + appended)
        except artifact.ArtifactError as e:
            raise GrowthError(f"{e}; rebuild with --full-rebuild") from None
    config = {key: value for key, value in entry.scann.items() if key != "count"}
    staged = write_shard(rows, vectors, searcher, config, entry.shard, options, queries, recall_k, staging, steps)
    return [GrownShard(staged, entry.shard, kept, dirty, None, "grown" if deletes or m else "kept")]


def _swap_removed(count: int, removed_rows: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """ScaNN's deletion, mirrored: (the published row at each remaining position, the position
    passed to each delete call)."""
    kept = np.arange(count, dtype=np.int64)
    position = np.arange(count, dtype=np.int64)
    size, deletes = count, []
    for row in removed_rows:
        at = int(position[row])
        deletes.append(at)
        last = size - 1
        if at != last:
            moved = kept[last]
            kept[at] = moved
            position[moved] = at
        size = last
    return kept[:size].copy(), deletes


def _split(rows: pa.Table, vectors: np.ndarray, kept: np.ndarray, dirty: np.ndarray, number: int,
           split_number: int, options: IndexOptions, queries: RecallQueries, recall_k: int,
           staging: str, steps) -> list[GrownShard]:
    centroids = train_centroids(vectors, 2, seed=number)
    labels = assign(vectors, centroids)
    if len(np.unique(labels)) < 2:  # nothing to split along: halves by row
        labels = (np.arange(len(vectors)) >= len(vectors) // 2).astype(np.int32)
        centroids = normalised(np.stack([vectors[labels == half].mean(axis=0) for half in (0, 1)]))
    out = []
    for half, new_number in enumerate((number, split_number)):
        at = np.flatnonzero(labels == half)
        at = pa.array(at, pa.int64())
        order = pc.take(at, id_order(rows.take(at))).to_numpy()
        staged = build_shard(rows.take(pa.array(order, pa.int64())), vectors[order], new_number, options, queries,
                             recall_k, staging, steps)
        out.append(GrownShard(staged, number, kept[order], dirty[order], centroids[half], "split"))
    return out


# neighbours -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Dirty:
    """Every row whose list is computed afresh, over all shards: global row, shard, row in shard,
    whether it is an added item, and its vector."""

    rows: np.ndarray  # int64
    shard: np.ndarray  # int64
    position: np.ndarray  # int64
    added: np.ndarray  # bool
    vectors: np.ndarray  # float32 (n, dim)

    @classmethod
    def of(cls, parts: Sequence[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]], dim: int) -> "Dirty":
        """parts: (shard, offset, positions, added, vectors) of each shard."""
        parts = [p for p in parts if len(p[2])]
        if not parts:
            return cls(*(np.zeros(0, np.int64),) * 3, np.zeros(0, bool), np.zeros((0, dim), np.float32))
        return cls(np.concatenate([offset + positions for _, offset, positions, _, _ in parts]),
                   np.concatenate([np.full(len(p[2]), p[0], np.int64) for p in parts]),
                   np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]),
                   np.concatenate([p[4] for p in parts]).astype(np.float32))


def grow_offers(outcome, k: int, target: ShardData, dirty: Dirty, exact: bool,
                searcher=None) -> dict[int, list[tuple[int, Offer]]]:
    """What target offers each query shard's batches: the dirty rows their candidates in target
    (all of target exactly, or by its searcher for the rows routed to it, as consumers search), and
    target's other rows the added items that may enter their lists."""
    offers = []  # (query shard, positions, Candidates)
    mine = dirty.shard == target.number
    others = np.ones(target.count, bool)
    others[dirty.position[mine]] = False
    others = np.flatnonzero(others)
    added = np.flatnonzero(dirty.added)
    if exact:
        if len(dirty.rows):
            found, _ = exact_candidates(dirty.vectors, dirty.rows, target.vectors, target.offset, k)
            offers.append((dirty.shard, dirty.position, found))
        if len(others) and len(added):
            found, _ = exact_candidates(target.vectors[others], np.full(len(others), -1, np.int64),
                                        dirty.vectors[added], 0, k)
            rows = np.where(found.valid, dirty.rows[added][np.maximum(found.rows, 0)], -1)
            offers.append((np.full(len(others), target.number), others, Candidates(rows, found.scores)))
    elif len(dirty.rows):
        slot = outcome.slot(target.number)
        routed = np.flatnonzero(np.any(route(dirty.vectors, outcome.centroids, outcome.shards_to_search) == slot,
                                       axis=1))
        if len(routed):
            params = outcome.entry(target.number).params
            found, scores = searcher.search_batched(dirty.vectors[routed],
                                                    final_num_neighbors=min(2 * k + 1, target.count),
                                                    **params.kwargs())
            local, scores = without_own(np.asarray(found, np.int64), np.asarray(scores, np.float32),
                                        dirty.rows[routed] - target.offset)
            offers.append((dirty.shard[routed], dirty.position[routed],
                           scatter(local[:, :k], scores[:, :k], target.offset, k)))
            entering = _entering(local, scores, dirty.rows[routed], dirty.added[routed], others, k)
            if entering is not None:
                offers.append((np.full(len(entering[0]), target.number), *entering))
    return _by_batch(offers, outcome)


def _entering(local: np.ndarray, scores: np.ndarray, rows: np.ndarray, added: np.ndarray, others: np.ndarray,
              k: int) -> Optional[tuple[np.ndarray, Candidates]]:
    """The reverse of the added items' answers: each row of target (not dirty) that an added item
    found, with the k best such items."""
    a, j = np.nonzero((local >= 0) & added[:, None])
    if not len(a):
        return None
    ys, xs, ss = local[a, j], rows[a], scores[a, j]
    keep = np.isin(ys, others)
    ys, xs, ss = ys[keep], xs[keep], ss[keep]
    if not len(ys):
        return None
    order = np.lexsort((xs, -ss, ys))
    ys, xs, ss = ys[order], xs[order], ss[order]
    unique, first = np.unique(ys, return_index=True)
    rank = np.arange(len(ys)) - np.repeat(first, np.diff(np.append(first, len(ys))))
    take = rank < k
    out = Candidates.empty(len(unique), k)
    slot = np.searchsorted(unique, ys[take])
    out.rows[slot, rank[take]] = xs[take]
    out.scores[slot, rank[take]] = ss[take]
    return unique.astype(np.int64), out


def _by_batch(offers, outcome) -> dict[int, list[tuple[int, Offer]]]:
    out: dict[int, list] = {}
    for shards, positions, found in offers:
        for q in np.unique(shards).tolist():
            count = outcome.entry(q).count
            at = np.flatnonzero(shards == q)
            batches = positions[at] // BATCH_ROWS
            for b in np.unique(batches).tolist():
                sel = at[batches == b]
                size = min(BATCH_ROWS, count - b * BATCH_ROWS)
                out.setdefault(q, []).append(
                    (b, Offer(size, positions[sel] - b * BATCH_ROWS, Candidates(found.rows[sel], found.scores[sel]))))
    return out


def old_candidates(old_lists: pa.Table, kept: np.ndarray, dirty: np.ndarray, ids_in_row_order: pa.Array,
                   k: int) -> Candidates:
    """Each row's published list (rows by the grown index's numbering), for rows whose list stays
    valid (kept, not dirty); the others get none."""
    out = Candidates.empty(len(kept), k)
    use = np.flatnonzero((kept >= 0) & ~dirty)
    if not len(use):
        return out
    lists = old_lists.take(pa.array(kept[use], pa.int64()))
    names = lists.column("neighbor_ids").combine_chunks()
    flat = pc.list_flatten(names)
    rows = pc.index_in(flat, value_set=ids_in_row_order).fill_null(-1).to_numpy(zero_copy_only=False)
    if (rows < 0).any():
        raise GrowthError("a published neighbour list names an item the grown index lacks; rebuild with "
                          "--full-rebuild")
    scores = pc.list_flatten(lists.column("scores").combine_chunks()).to_numpy(zero_copy_only=False)
    owner = pc.list_parent_indices(names).to_numpy()
    lengths = np.bincount(owner, minlength=len(use))
    column = np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    fits = column < k
    out.rows[use[owner[fits]], column[fits]] = rows[fits]
    out.scores[use[owner[fits]], column[fits]] = scores[fits]
    return out


def read_old_lists(read: Callable[[str], pa.Table], entry: artifact.ShardEntry) -> pa.Table:
    """A published shard's neighbour lists, in its row order (its parts one after another)."""
    tables = [read(rel) for rel in part_names([(entry.shard, entry.count)])]
    return pa.concat_tables(tables).select(["id", "neighbor_ids", "scores"]) if tables else pa.table(
        {"id": pa.array([], pa.string()), "neighbor_ids": pa.array([], pa.list_(pa.string())),
         "scores": pa.array([], pa.list_(pa.float32()))})


def with_growth(plan, store: ObjectStore, settings, output: str):
    """plan (an IndexPlan) with its growth from LATEST's index under output, or why it is built whole."""
    from imgsim.index.latest import read_latest

    if plan.error is not None:
        return plan
    growth, why = plan_growth(store, plan, settings, output, read_latest(store, output))
    return dataclasses.replace(plan, growth=growth, built_whole="" if growth else why)
