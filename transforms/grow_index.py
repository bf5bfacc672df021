"""Growing the published sharded index on the workers (imgsim.index.growth says what changes).

    FileInfo ─► ReadRowGroups (only when the plan grows) ─► the new and changed rows ─► nearest published
                 centroid ─► their rows to index-work files ─► (shard, file name)
    every published shard ─► (shard, nothing) ───────────────────────────────────────┐
                                                     GroupByKey(shard) ◄──────────────┘
    ─► GrowShard (fetch the published shard and check it, delete removed rows, append added ones to its
                  searcher, or split it; stage, land; its rows' sources and dirty rows to index-work)
    ─► Finish (offsets, recall curve, shards_to_search, --min-recall, as for a new index)
    ─► one unit per target shard: the dirty rows' candidates in it and the added items entering its other rows
                  ─► .npz offers per query shard ─► GroupByKey(query shard: file names)
    ─► GrowParts (the published lists, renumbered, merged with the offers) ─► PublishShards (groups,
                  outliers, centroids, manifest with `build`, compare-and-swap LATEST)

Every step passes nothing when the plan does not grow, so `imgsim run`'s graph
can hold it beside BuildShardedIndex.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from typing import Any, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.index import artifact
from imgsim.index.artifact import VECTORS
from imgsim.index.fanout import Candidates, merge
from imgsim.index.growth import Dirty, dirty_rows, grow_offers, grow_shard, old_candidates, read_old_lists
from imgsim.index.kmeans import assign
from imgsim.index.publish import land_files
from imgsim.index.shard_neighbors import RowIds, merged_batches, pack_offers, part_names
from imgsim.index.sharded import Partitions, finish_shards, neighbors_k, recall_k, uses_exact_neighbors
from imgsim.runs.outputs import vectors as table_vectors
from imgsim.storage import ObjectStore, is_gcs, join
from imgsim.transforms.read_embeddings import ReadRowGroups
from imgsim.transforms.sharded_index import (HITS, ISOLATED, PAIRS, SCORES, PublishShards, ShardReader, emit_part,
                                             id_reader, parts_outputs, read_rows, report_memory, report_times,
                                             targets, write_rows)


class GrowShardedIndex(beam.PTransform):
    """{"infos": FileInfo, "plan": IndexPlan (one), "counts"} -> the index report, when the plan grows."""

    def __init__(self, layout, settings, input_description: dict, expected_latest_generation: int,
                 model: Optional[dict] = None, model_dir: Optional[str] = None):
        super().__init__()
        self._layout, self._settings = layout, settings
        self._input_description, self._generation = input_description, expected_latest_generation
        self._model, self._model_dir = model, model_dir

    def expand(self, pcolls):
        infos, plan_pc = pcolls["infos"], pcolls["plan"]
        p = plan_pc.pipeline
        plan = beam.pvalue.AsSingleton(plan_pc)
        layout, settings = self._layout, self._settings
        added = (infos
                 | "ReadRows" >> ReadRowGroups(plan_pc, growing=True)
                 | "AssignAdded" >> beam.ParDo(_AssignAdded(layout.index_work_dir), plan=plan))
        published = p | "OnceShards" >> beam.Create([None]) | "PublishedShards" >> beam.FlatMap(_published, plan=plan)
        grown = ((added, published)
                 | "Together" >> beam.Flatten()
                 | "ByShard" >> beam.GroupByKey()
                 | "GrowShard" >> beam.ParDo(_GrowShard(layout, settings), plan=plan).with_output_types(Any))
        finished = (grown
                    | "AllShards" >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
                    | "Finish" >> beam.Map(_finish, plan=plan, settings=settings).with_output_types(Any))
        outcome = beam.pvalue.AsSingleton(finished | "Outcome" >> beam.Map(lambda f: f[0]), default_value=None)
        partitions = beam.pvalue.AsSingleton(finished | "Partitions" >> beam.Map(lambda f: f[1]), default_value=None)
        built = beam.pvalue.AsSingleton(finished | "Built" >> beam.Map(lambda f: f[2]), default_value=None)
        written = (p
                   | "OnceNeighbors" >> beam.Create([None])
                   | "Targets" >> beam.FlatMap(targets, outcome=outcome)
                   | "SpreadTargets" >> beam.Reshuffle()
                   | "Answer" >> beam.ParDo(_AnswerGrowth(layout, settings), outcome=outcome)
                   | "OffersByShard" >> beam.GroupByKey()
                   | "GrowParts" >> beam.ParDo(_GrowParts(layout, settings), outcome=outcome, plan=plan).with_outputs(
                       PAIRS, HITS, ISOLATED, SCORES, main="files"))
        repeated = beam.pvalue.AsSingleton(plan_pc | "Repeated" >> beam.Map(
            lambda plan: plan.count - plan.growth.count if plan.growth else 0))
        return ({**parts_outputs(written), "counts": pcolls["counts"]}
                | "PublishShards" >> PublishShards(layout, settings, self._input_description, self._generation,
                                                   plan, partitions, outcome, repeated, self._model, self._model_dir,
                                                   built=built))


def _work(layout_work_dir: str, *parts: str) -> str:
    return join(layout_work_dir, "grow", *parts)


class _AssignAdded(beam.DoFn):
    """The row group's new and changed rows to their nearest published shard, through files."""

    def __init__(self, work_dir: str):
        self._work_dir = work_dir

    def setup(self):
        self._store = ObjectStore()

    def process(self, element, plan):
        growth = plan.growth
        number, first, table = element
        keep = [i for i in range(table.num_rows) if (number, first + i) in growth.added]
        if not keep:
            return
        table = table.take(pa.array(keep, pa.int64()))
        numbers = np.array([e.shard for e in growth.entries])
        labels = numbers[assign(table_vectors(table), growth.centroids[numbers])]
        for shard in np.unique(labels).tolist():
            path = _work(self._work_dir, f"added-{shard:05d}", f"{number:06d}-{first:012d}.arrow")
            write_rows(self._store, path, table.take(np.flatnonzero(labels == shard)))
            yield shard, path


def _published(_, plan):
    if plan.growth is None:
        return
    for entry in plan.growth.entries:
        yield entry.shard, None


def _verified_root(store, growth, rels: list, scratch: str) -> str:
    """A local directory holding the published files rels, each checked against the manifest."""
    files = growth.base.all_files()
    wanted = {rel: files[rel] for rel in rels}
    if is_gcs(growth.base_dir):
        artifact.fetch_files(store, growth.base_dir, scratch, wanted)
        return scratch
    for rel, meta in wanted.items():
        problem = artifact.file_problem(growth.base_dir, rel, meta)
        if problem:
            raise artifact.ArtifactError(f"{problem} (the published index being grown; grow from another run "
                                         "with --full-rebuild)")
    return growth.base_dir


def _old_lists(store, growth, entry: artifact.ShardEntry, scratch: str) -> pa.Table:
    rels = part_names([(entry.shard, entry.count)])
    root = _verified_root(store, growth, rels, scratch)
    return read_old_lists(lambda rel: pq.read_table(os.path.join(root, *rel.split("/"))), entry)


class _GrowShard(beam.DoFn):
    def __init__(self, layout, settings):
        self._layout, self._settings = layout, settings

    def setup(self):
        self._store = ObjectStore()

    def process(self, element, plan):
        started, cpu = time.monotonic(), time.thread_time()
        number, paths = element
        growth = plan.growth
        entry = growth.base.entry(number)
        scratch = tempfile.mkdtemp(prefix="imgsim-grow-")
        staging = tempfile.mkdtemp(prefix="imgsim-shard-")
        try:
            root = _verified_root(self._store, growth, list(entry.files), scratch)
            old_dirty = dirty_rows(_old_lists(self._store, growth, entry, scratch), growth.removed_ids)
            added = read_rows(self._store, paths) if any(paths) else None
            added_vectors = table_vectors(added) if added is not None else None
            shards = grow_shard(root, entry, plan.signature.dim, growth.removed.get(number, ()),
                                added.drop_columns(["embedding"]) if added is not None else None, added_vectors,
                                old_dirty, self._settings.options, growth.queries,
                                recall_k(self._settings, growth.count), staging, plan.shards.max_shard_items,
                                growth.split_number(number), growth.steps)
            for shard in shards:
                staged = shard.staged
                land_files(self._store, staging, self._layout.index_dir, staged.files,
                           then=lambda local: artifact.self_query_shard(local, staged.number, staged.count,
                                                                        plan.signature.dim))
                vectors = artifact.load_vectors(
                    os.path.join(staging, *artifact.shard_dir(staged.number).split("/"), VECTORS), staged.count,
                    plan.signature.dim, mmap=True)
                dirty = np.flatnonzero(shard.dirty)
                sink = io.BytesIO()
                np.savez(sink, kept=shard.kept, dirty=shard.dirty, positions=dirty, added=shard.kept[dirty] < 0,
                         vectors=np.asarray(vectors[dirty], np.float32))
                self._store.write_bytes(_work(self._layout.index_work_dir, f"shard-{staged.number:05d}.npz"),
                                        sink.getvalue())
                yield staged, shard.source, shard.centroid, shard.how
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
        report_times("index_shard_build", started, cpu)
        report_memory()


def _finish(shards, plan, settings):
    growth = plan.growth
    if growth is None or not shards:
        return None
    top = max(s[0].number for s in shards) + 1
    centroids = np.zeros((max(top, len(growth.centroids)), growth.centroids.shape[1]), np.float32)
    centroids[:len(growth.centroids)] = growth.centroids
    for staged, _, centroid, _ in shards:
        if centroid is not None:
            centroids[staged.number] = centroid
    partitions = Partitions(centroids, growth.queries, growth.base.section("sharding")["sample"])
    outcome = finish_shards([s[0] for s in shards], partitions, settings)
    hows = [how for _, _, _, how in shards]
    built = {**growth.report(), "shards": {how: hows.count(how) for how in ("kept", "grown", "split")}}
    return outcome, partitions, built


def _read_npz(store, path: str) -> dict:
    with np.load(io.BytesIO(store.read_bytes(path)), allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


class _AnswerGrowth(beam.DoFn):
    """One target shard: the dirty rows' candidates in it, and the added items entering its other rows."""

    def __init__(self, layout, settings):
        self._layout, self._settings = layout, settings

    def setup(self):
        self._store = ObjectStore()

    def process(self, number, outcome):
        started, cpu = time.monotonic(), time.thread_time()
        work = self._layout.index_work_dir
        parts = []
        for entry in outcome.entries:
            saved = _read_npz(self._store, _work(work, f"shard-{entry.shard:05d}.npz"))
            parts.append((entry.shard, entry.offset, saved["positions"], saved["added"], saved["vectors"]))
        dim = outcome.centroids.shape[1]
        dirty = Dirty.of(parts, dim)
        exact = uses_exact_neighbors(self._settings, outcome.count)
        entry = outcome.entry(number)
        reader = ShardReader(self._store, self._layout.index_dir, outcome)
        scratch = tempfile.mkdtemp(prefix="imgsim-answer-")
        try:
            target = reader.shard(entry, exact, scratch)  # its vectors only where scored exactly
            searcher = None
            if not exact:
                root = reader.root(entry, [artifact.SCANN_DIR], scratch)
                searcher = artifact.load_searcher(root, entry.scann_dir)
            offers = grow_offers(outcome, neighbors_k(self._settings, outcome.count), target, dirty, exact, searcher)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        yield number, None  # every shard's parts are written, offered something or not
        for q, batch_offers in offers.items():
            path = _work(work, "offers", f"shard-{q:05d}", f"from-{number:05d}.npz")
            self._store.write_bytes(path, pack_offers(batch_offers))
            yield q, path
        report_times("index_neighbors_unit", started, cpu)
        report_memory()


class _GrowParts(beam.DoFn):
    """One shard's parts: its published lists (renumbered) for rows that keep them, merged with the
    offers (the dirty rows' whole lists, the entering added items)."""

    def __init__(self, layout, settings):
        self._layout, self._settings = layout, settings

    def setup(self):
        self._store = ObjectStore()

    def process(self, element, outcome, plan):
        number, paths = element
        growth = plan.growth
        entry = outcome.entry(number)
        k = neighbors_k(self._settings, outcome.count)
        saved = _read_npz(self._store, _work(self._layout.index_work_dir, f"shard-{number:05d}.npz"))
        read = id_reader(self._store, self._layout.index_dir)
        shard_ids = {e.shard: read(e) for e in outcome.entries}  # every id: the published lists are renumbered
        ids_of = RowIds(outcome.entries, lambda e: shard_ids[e.shard], keep_rows=outcome.count)
        all_ids = pa.concat_arrays([shard_ids[e.shard] for e in outcome.entries])
        scratch = tempfile.mkdtemp(prefix="imgsim-parts-")
        try:
            source = growth.base.entry(growth.source_of(number))
            old = old_candidates(_old_lists(self._store, growth, source, scratch), saved["kept"], saved["dirty"],
                                 all_ids, k)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        packs = [self._store.read_bytes(path) for path in sorted({path for path in paths if path})]
        for batch, rows, found in merged_batches(entry.count, k, packs):
            merged = merge([Candidates(old.rows[rows], old.scores[rows]), found], k)
            yield from emit_part(self._store, self._layout.index_dir, self._settings, outcome, entry, batch, rows,
                                 merged, ids_of)
        report_memory()
