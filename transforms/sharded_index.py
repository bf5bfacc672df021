"""A sharded index built by the workers: no step holds every vector.

    FileInfo ─► ReadRowGroups(id, embedding) ─► Bernoulli sample per row group ─► SampleCombineFn ─► TrainPartitions
                                          └──► ids by hash bucket ─► GroupByKey ─► repeated ids (all but the first row)
    FileInfo ─► ReadRowGroups ─► Assign (nearest centroid; each shard's rows of the row group to an Arrow file
                 in OUT/runs/RUN_ID/index-work) ─► GroupByKey(shard: file names) ─► BuildShard (read its files, stage,
                 upload, check as landed, answer the recall queries)
    shards ─► Finish (offsets, recall curve over all vectors, shards_to_search, --min-recall)
    Finish ─► one unit per target shard: exact blocks, or its searcher; its offers to each query shard to one
                 .npz file in index-work ─► GroupByKey(query shard: file names) ─► top-k merge per batch ─► parts
                 (and each part's agreement with the recall queries' exact answers: neighbors.recall)
    pairs among the parts' lists ─► CombineGlobally ─► groups.parquet (union-find over the pairs only)
    outlier scores of the parts' rows ─► CombineGlobally (the most isolated) ─► outliers.parquet
    Publish: centroids.npy, manifest (format 2), compare-and-swap LATEST

The rows travel to their shard through files, and only their names through
the shuffle (as do the neighbour offers): a worker then receives one shard's
rows when it builds it, never a runner's buffer of several shards (DirectRunner
buffers up to 100 MB per worker and holds all of a shuffle in the launching
process; Dataflow's shuffle would carry them as well, but files keep the two
alike). Everything keys on the plan (imgsim.index.sources.IndexPlan): when it
says one searcher, every step here passes nothing and BuildIndex's one-worker
step builds the index instead. Metrics (namespace imgsim): the workers' peak
resident memory (VmHWM) in the distribution index_worker_peak_rss_mb; each
shard's build time in index_shard_build_ms and each neighbours unit's in
index_neighbors_unit_ms (the CPU time of its thread in ..._cpu_ms); when the
shards were all built and when the index was published (gauges
index_shards_built_at_ms, index_published_at_ms).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import zlib
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from imgsim.index import artifact, outliers, strength
from imgsim.index.build import index_report, model_files
from imgsim.index.kmeans import assign
from imgsim.index.publish import land_files, publish_manifest
from imgsim.index.artifact import IDS, VECTORS
from imgsim.index.shard_build import StagedShard, stage_shard
from imgsim.index.shard_neighbors import Pairs, RowIds, merged_batches, pack_offers
from imgsim.index.shard_neighbors import pairs_from_candidates
from imgsim.index.sharded import (CENTROIDS, finish_shards, groups_result, neighbors_k, offers_by_query_shard,
                                  part_outliers, read_shard, recall_k, sharded_fields, target_answers,
                                  train_partitions, uses_exact_neighbors, write_centroids, write_part)
from imgsim.index.sharding import MAX_SAMPLE_BLOCKS
from imgsim.runs.outputs import vectors as table_vectors
from imgsim.runs.summary import add_counts
from imgsim.storage import ObjectStore, is_gcs, join, sha256_file
from imgsim.transforms.read_embeddings import ReadRowGroups

_LOG = logging.getLogger("imgsim.index")
IDS_TAG = "ids"
PAIRS = "pairs"
HITS = "hits"
ISOLATED = "isolated"
SCORES = "scores"
SAMPLE_OVERSHOOT = 1.2  # the Bernoulli pre-sample aims this much above the plan's sample size
ID_BUCKETS_PER_MILLION = 1
MIN_ID_BUCKETS = 16


def peak_memory_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB; 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def report_times(name: str, started: float, cpu: float) -> None:
    """A unit's wall time (NAME_ms) and the CPU time of its thread (NAME_cpu_ms): the CPU time is
    what a unit costs whatever else shares the machine, the base of a projection to more workers."""
    Metrics.distribution("imgsim", f"{name}_ms").update(int((time.monotonic() - started) * 1000))
    Metrics.distribution("imgsim", f"{name}_cpu_ms").update(int((time.thread_time() - cpu) * 1000))


def _release_arrow_memory():
    """Hand Arrow's freed buffers back to the system: its allocator keeps them for reuse otherwise,
    and a worker streaming many row groups would look as if it held them all."""
    pa.default_memory_pool().release_unused()


def report_memory():
    Metrics.distribution("imgsim", "index_worker_peak_rss_mb").update(int(peak_memory_mb()))


class BuildShardedIndex(beam.PTransform):
    """{"infos": FileInfo, "plan": IndexPlan (one), "counts": (name, count) pairs} -> the index report,
    when sharded."""

    def __init__(self, layout, settings, input_description: dict, expected_latest_generation: int,
                 model: Optional[dict] = None, model_dir: Optional[str] = None):
        super().__init__()
        self._model = model
        self._model_dir = model_dir
        self._layout = layout
        self._settings = settings
        self._input_description = input_description
        self._generation = expected_latest_generation

    def expand(self, pcolls):
        infos, plan_pc = pcolls["infos"], pcolls["plan"]
        p = plan_pc.pipeline
        plan = beam.pvalue.AsSingleton(plan_pc)
        settings, layout = self._settings, self._layout

        light = (infos | "ReadIdsAndVectors" >> ReadRowGroups(plan_pc, ["id", "embedding"])
                 | "SampleAndIds" >> beam.ParDo(_SampleAndBucketIds(), plan=plan).with_outputs(IDS_TAG, main="sample"))
        # BuildShard and Publish declare their output types: Beam would otherwise infer them by reading
        # the bytecode of everything they call, while the graph is built.
        # Global combines go without defaults (or straight to a side input): a default would be
        # injected by a step that reads the whole combined value as a side input, on some worker.
        partitions = (light.sample
                      | "Sample" >> beam.CombineGlobally(
                          beam.combiners.SampleCombineFn(MAX_SAMPLE_BLOCKS)).without_defaults()
                      | "TrainPartitions" >> beam.Map(_train, plan=plan, settings=settings))
        repeats = (light[IDS_TAG]
                   | "IdsByBucket" >> beam.GroupByKey()
                   | "RepeatedRows" >> beam.FlatMap(_repeated_rows)
                   | "AllRepeatedRows" >> beam.CombineGlobally(_RowSet()).as_singleton_view())
        repeated = beam.pvalue.AsSingleton(p
                                           | "OnceRepeated" >> beam.Create([None])
                                           | "CountRepeated" >> beam.Map(lambda _, rows: len(rows), rows=repeats))
        partitions_side = beam.pvalue.AsSingleton(partitions, default_value=None)

        staged = (infos
                  | "ReadRows" >> ReadRowGroups(plan_pc)
                  | "Assign" >> beam.ParDo(_Assign(layout.index_work_dir), partitions=partitions_side,
                                           repeats=repeats)
                  | "ByShard" >> beam.GroupByKey()
                  | "BuildShard" >> beam.ParDo(_BuildShard(layout, settings), plan=plan, partitions=partitions_side
                                               ).with_output_types(StagedShard))
        outcome = (staged
                   | "AllShards" >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
                   | "Finish" >> beam.Map(_finish, partitions=partitions_side, settings=settings))
        outcome_side = beam.pvalue.AsSingleton(outcome, default_value=None)

        answers = (p
                   | "OnceNeighbors" >> beam.Create([None])
                   | "Targets" >> beam.FlatMap(targets, outcome=outcome_side)
                   | "SpreadTargets" >> beam.Reshuffle()
                   | "Answer" >> beam.ParDo(_AnswerTarget(layout, settings), outcome=outcome_side))
        written = (answers
                   | "OffersByShard" >> beam.GroupByKey()  # file names only: the offers wait in index-work
                   | "WriteParts" >> beam.ParDo(_WriteParts(layout, settings), outcome=outcome_side).with_outputs(
                       PAIRS, HITS, ISOLATED, SCORES, main="files"))
        return ({**parts_outputs(written), "counts": pcolls["counts"]}
                | "PublishShards" >> PublishShards(self._layout, self._settings, self._input_description, self._generation,
                                            plan, partitions_side, outcome_side, repeated, self._model,
                                            self._model_dir))


def parts_outputs(written) -> dict:
    """The parts step's outputs by name, as PublishShards takes them."""
    return {"files": written.files, **{tag: written[tag] for tag in (PAIRS, HITS, ISOLATED, SCORES)}}


class PublishShards(beam.PTransform):
    """{"files", PAIRS, HITS, ISOLATED, SCORES: the parts step's outputs (parts_outputs), "counts"} ->
    groups.parquet, outliers.parquet, centroids, the manifest and LATEST: the last steps of a new
    sharded index and of a grown one (transforms/grow_index.py). The other inputs are side inputs;
    built: how the index was built, for the manifest (None: built whole)."""

    def __init__(self, layout, settings, input_description, generation, plan, partitions, outcome, repeated,
                 model=None, model_dir=None, built=None):
        super().__init__()
        self._publish = _Publish(layout, settings, input_description, generation, model, model_dir)
        self._layout, self._settings = layout, settings
        self._plan, self._partitions, self._outcome, self._repeated = plan, partitions, outcome, repeated
        self._built = built

    def expand(self, pcolls):
        written, layout, settings, outcome_side = pcolls, self._layout, self._settings, self._outcome
        p = pcolls["counts"].pipeline
        pairs = written[PAIRS] | "AllPairs" >> beam.CombineGlobally(_ConcatPairs()).as_singleton_view()
        isolated = (written[ISOLATED]
                    | "MostIsolated" >> beam.CombineGlobally(_MostIsolated()).without_defaults()
                    | "WriteOutliers" >> beam.ParDo(_WriteOutliers(layout), outcome=outcome_side))
        groups = (p
                  | "OnceGroups" >> beam.Create([None])
                  | "WriteGroups" >> beam.ParDo(_WriteGroups(layout, settings), pairs=pairs, outcome=outcome_side))
        built = {} if self._built is None else {"built": self._built}
        return (p
                | "OncePublish" >> beam.Create([None])
                | "Publish" >> beam.ParDo(
                    self._publish, plan=self._plan, partitions=self._partitions, outcome=outcome_side,
                    parts=beam.pvalue.AsList(written["files"]), hits=beam.pvalue.AsList(written[HITS]),
                    groups=beam.pvalue.AsList(groups), isolated=beam.pvalue.AsList(isolated),
                    scores=beam.pvalue.AsList(written[SCORES]),
                    counts=beam.pvalue.AsList(pcolls["counts"]), repeated=self._repeated, **built
                ).with_output_types(dict))


# partitions and repeated ids --------------------------------------------------------------------

class _SampleAndBucketIds(beam.DoFn):
    """A uniform Bernoulli sample of the row group's (id, vector), seeded by the row group, as one
    block (SampleCombineFn, the combine of Sample.FixedSizeGlobally, then draws among blocks, each
    row equally likely); and every id with its row, by hash bucket, to find ids that repeat."""

    def process(self, element, plan):
        number, first, table = element
        report_memory()
        ids = table.column("id").to_pylist()
        share = min(1.0, SAMPLE_OVERSHOOT * plan.shards.sample_size / max(1, plan.count))
        picked = np.flatnonzero(np.random.default_rng([number, first]).random(len(ids)) < share)
        if len(picked):
            yield tuple(ids[row] for row in picked.tolist()), table_vectors(table.select(["embedding"]).take(picked))
        buckets = max(MIN_ID_BUCKETS, ID_BUCKETS_PER_MILLION * plan.count // 1_000_000)
        bucket_of = np.array([zlib.crc32(i.encode("utf-8", "surrogatepass")) % buckets for i in ids])
        for bucket in np.unique(bucket_of).tolist():
            rows = np.flatnonzero(bucket_of == bucket)
            yield beam.pvalue.TaggedOutput(IDS_TAG, (bucket, (number, first + rows, [ids[r] for r in rows])))


def write_rows(store, path: str, rows: pa.Table) -> None:
    """Rows on their way to their shard, as one file in Arrow's own format (no encoding to undo)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as stream:
        stream.write_table(rows)
    store.write_bytes(path, sink.getvalue().to_pybytes())


def read_rows(store, paths) -> pa.Table:
    """The rows of write_rows's files (None and repeated names skipped: a retried bundle writes the
    same name)."""
    tables = [pa.ipc.open_stream(store.read_bytes(path)).read_all() for path in sorted({p for p in paths if p})]
    return pa.concat_tables(tables, promote_options="default")


def _train(blocks, plan, settings):
    if not plan.sharded or plan.growth is not None or not blocks:
        return None
    ids = [item for block_ids, _ in blocks for item in block_ids]
    vectors = np.concatenate([block for _, block in blocks])
    del blocks[:]
    out = train_partitions(ids, vectors, plan.shards, settings.recall_queries)
    report_memory()
    return out


def _repeated_rows(bucket):
    """(file number, row) of every row whose id an earlier row (file number, then row) already has."""
    _, parts = bucket
    parts = list(parts)
    numbers = np.concatenate([np.full(len(rows), number) for number, rows, _ in parts])
    rows = np.concatenate([rows for _, rows, _ in parts])
    ids = np.asarray([i for _, _, chunk in parts for i in chunk], dtype=object)
    order = np.lexsort((rows, numbers))
    _, first = np.unique(ids[order], return_index=True)
    later = np.setdiff1d(np.arange(len(order)), first)
    for position in order[later].tolist():
        yield int(numbers[position]), int(rows[position])


class _RowSet(beam.CombineFn):
    def create_accumulator(self):
        return set()

    def add_input(self, rows, row):
        rows.add(row)
        return rows

    def merge_accumulators(self, accumulators):
        out = set()
        for rows in accumulators:
            out |= rows
        return out

    def extract_output(self, rows):
        return frozenset(rows)


# shards -----------------------------------------------------------------------------------------

class _Assign(beam.DoFn):
    """Each row (but repeats) to its nearest centroid; each shard's rows of the row group to a file of
    their own, named by shard, file number and first row (a retried bundle writes the same names)."""

    def __init__(self, work_dir: str):
        self._work_dir = work_dir

    def setup(self):
        self._store = ObjectStore()

    def process(self, element, partitions, repeats):
        if partitions is None:
            return
        number, first, table = element
        if repeats:
            keep = [i for i in range(table.num_rows) if (number, first + i) not in repeats]
            table = table.take(pa.array(keep, pa.int64()))
        if not table.num_rows:
            return
        report_memory()
        labels = assign(table_vectors(table), partitions.centroids)
        for shard in np.unique(labels).tolist():
            path = join(self._work_dir, f"shard-{shard:05d}", f"{number:06d}-{first:012d}.arrow")
            write_rows(self._store, path, table.take(np.flatnonzero(labels == shard)))
            yield shard, path
        _release_arrow_memory()


class _BuildShard(beam.DoFn):
    def __init__(self, layout, settings):
        self._layout = layout
        self._settings = settings

    def setup(self):
        self._store = ObjectStore()

    def process(self, element, plan, partitions):
        started, cpu = time.monotonic(), time.thread_time()
        number, paths = element
        table = read_rows(self._store, paths)
        staging = tempfile.mkdtemp(prefix="imgsim-shard-")
        try:
            staged = stage_shard(table, number, self._settings.options, partitions.queries,
                                 recall_k(self._settings, plan.count), staging)
            del table
            land_files(self._store, staging, self._layout.index_dir, staged.files,
                       then=lambda root: artifact.self_query_shard(root, number, staged.count, plan.signature.dim))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _release_arrow_memory()
        report_times("index_shard_build", started, cpu)
        _LOG.info("index: shard %d built: %d items", number, staged.count)
        report_memory()
        yield staged


def _finish(staged, partitions, settings):
    if partitions is None or not staged:
        return None
    Metrics.gauge("imgsim", "index_shards_built_at_ms").set(int(time.time() * 1000))
    return finish_shards(staged, partitions, settings)


# neighbours and groups --------------------------------------------------------------------------

def targets(_, outcome):
    """Every shard of a built (not refused) index, once: one neighbours unit each."""
    if outcome is None or outcome.refused:
        return
    for entry in outcome.entries:
        yield entry.shard


class ShardReader:
    """A worker's reads of built shards: in place for a local index, else copied into a temporary
    directory and checked against their checksums first."""

    def __init__(self, store, index_dir: str, outcome):
        self._store = store
        self._index_dir = index_dir
        self._outcome = outcome

    def root(self, entry, names, scratch: str) -> str:
        if not is_gcs(self._index_dir):
            return self._index_dir
        wanted = {rel: meta for rel, meta in entry.files.items()
                  if any(rel == entry.path(n) or rel.startswith(entry.path(n) + "/") for n in names)}
        artifact.fetch_files(self._store, self._index_dir, scratch, wanted)
        return scratch

    def shard(self, entry, with_vectors: bool, scratch: str):
        root = self.root(entry, [VECTORS], scratch) if with_vectors else scratch
        return read_shard(root, self._outcome, entry, self._outcome.centroids.shape[1], with_vectors)


class _AnswerTarget(beam.DoFn):
    """One target shard: what it offers every batch of every shard (one query shard in memory at a time)."""

    def __init__(self, layout, settings):
        self._layout = layout
        self._settings = settings

    def setup(self):
        self._store = ObjectStore()

    def process(self, number, outcome):
        started, cpu = time.monotonic(), time.thread_time()
        reader = ShardReader(self._store, self._layout.index_dir, outcome)
        exact = uses_exact_neighbors(self._settings, outcome.count)
        entry = outcome.entry(number)
        scratch = tempfile.mkdtemp(prefix="imgsim-answer-")
        try:
            target = reader.shard(entry, exact, os.path.join(scratch, "target"))
            searcher = None
            if not exact:
                root = reader.root(entry, [artifact.SCANN_DIR], os.path.join(scratch, "target"))
                searcher = artifact.load_searcher(root, entry.scann_dir)

            def queries():
                for other in outcome.entries:
                    place = os.path.join(scratch, "query")
                    yield target if other.shard == number and exact else reader.shard(other, True, place)
                    shutil.rmtree(place, ignore_errors=True)

            answers = target_answers(outcome, self._settings, target, queries(), searcher)
            for q, offers in offers_by_query_shard(answers):
                path = join(self._layout.index_work_dir, "offers", f"shard-{q:05d}", f"from-{number:05d}.npz")
                self._store.write_bytes(path, pack_offers(offers))  # a retried unit writes the same name
                yield q, path
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        report_times("index_neighbors_unit", started, cpu)
        report_memory()


def id_reader(store, index_dir: str):
    """entry -> that shard's ids, read from its ids.parquet in the index directory (local or
    gs://): what RowIds reads a shard at a time."""
    def read(entry) -> pa.Array:
        with store.open_read(join(index_dir, entry.path(IDS))) as f:
            return pq.read_table(f, columns=["id"]).column("id").combine_chunks()
    return read


class _WriteParts(beam.DoFn):
    """One query shard's neighbours parts: every unit's offers to it merged batch by batch, with the
    ids of their rows read from the shards' ids.parquet a row group at a time (the offers carry
    rows and scores only)."""

    def __init__(self, layout, settings):
        self._layout = layout
        self._settings = settings

    def setup(self):
        self._store = ObjectStore()
        self._ids = None

    def _ids_of(self, outcome):
        if self._ids is None or self._ids[0] is not outcome:
            self._ids = (outcome, RowIds(outcome.entries, id_reader(self._store, self._layout.index_dir)))
        return self._ids[1]

    def process(self, element, outcome):
        number, paths = element
        entry = outcome.entry(number)
        k = neighbors_k(self._settings, outcome.count)
        ids_of = self._ids_of(outcome)
        packs = [self._store.read_bytes(path) for path in sorted(set(paths))]
        for batch, rows, found in merged_batches(entry.count, k, packs):
            yield from emit_part(self._store, self._layout.index_dir, self._settings, outcome, entry, batch, rows,
                                 found, ids_of)
        report_memory()


def emit_part(store, index_dir: str, settings, outcome, entry: artifact.ShardEntry, batch: int, rows: slice, found,
              ids_of):
    """Land one neighbours part (its rows' merged lists) and yield its file and what the rest of the
    build takes from it: recall hits, the most isolated rows, score counts and near-duplicate pairs."""
    first_row = entry.offset + rows.start
    staging = tempfile.mkdtemp(prefix="imgsim-part-")
    try:
        rel = write_part(staging, entry.shard, batch, ids_of(first_row + np.arange(len(found))), found, ids_of)
        path = os.path.join(staging, *rel.split("/"))
        meta = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
        land_files(store, staging, index_dir, {rel: meta})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    yield rel, meta
    yield beam.pvalue.TaggedOutput(HITS, outcome.truth.hits(first_row, found.rows, found.scores))
    yield beam.pvalue.TaggedOutput(ISOLATED, part_outliers(first_row, found))
    yield beam.pvalue.TaggedOutput(SCORES, strength.histogram(found.scores))
    pairs = pairs_from_candidates(first_row, found, settings.duplicate_threshold)
    if len(pairs):
        yield beam.pvalue.TaggedOutput(PAIRS, pairs)


class _ConcatPairs(beam.CombineFn):
    def create_accumulator(self):
        return []

    def add_input(self, parts, pairs):
        parts.append(pairs)
        return parts

    def merge_accumulators(self, accumulators):
        return [Pairs.concat([p for parts in accumulators for p in parts])]

    def extract_output(self, parts):
        return Pairs.concat(parts)


class _MostIsolated(beam.CombineFn):
    """The most isolated rows over every part (imgsim.index.outliers.KEPT of them): parts are
    held until they reach twice KEPT, then cut to KEPT (sorting on every part was quadratic)."""

    def create_accumulator(self):
        return []

    def add_input(self, parts, part):
        parts.append(part)
        return self._cut(parts)

    def merge_accumulators(self, accumulators):
        return self._cut([part for parts in accumulators for part in parts])

    def extract_output(self, parts):
        return outliers.merge_most_isolated(parts)

    @staticmethod
    def _cut(parts):
        if sum(len(rows) for rows, _ in parts) > 2 * outliers.KEPT:
            return [outliers.merge_most_isolated(parts)]
        return parts


class _WriteOutliers(beam.DoFn):
    def __init__(self, layout):
        self._layout = layout

    def setup(self):
        self._store = ObjectStore()

    def process(self, best, outcome):
        if outcome is None or outcome.refused:
            return
        rows, values = best
        ids_of = RowIds(outcome.entries, id_reader(self._store, self._layout.index_dir))
        yield {"file": _land_one(self._store, self._layout.index_dir, outliers.OUTLIERS,
                                 lambda path: artifact.write_table(outliers.table(rows, values, ids_of), path)),
               "kept": len(rows)}


class _WriteGroups(beam.DoFn):
    def __init__(self, layout, settings):
        self._layout = layout
        self._settings = settings

    def setup(self):
        self._store = ObjectStore()

    def process(self, _, pairs, outcome):
        if outcome is None or outcome.refused:
            return
        table, report = groups_result(pairs, self._settings.duplicate_threshold,
                                      RowIds(outcome.entries, id_reader(self._store, self._layout.index_dir)))
        yield {"file": _land_one(self._store, self._layout.index_dir, artifact.GROUPS,
                                 lambda path: artifact.write_table(table, path)), "report": report}
        report_memory()


def _land_one(store, index_dir: str, rel: str, write) -> tuple[str, dict]:
    staging = tempfile.mkdtemp(prefix="imgsim-file-")
    try:
        path = os.path.join(staging, *rel.split("/"))
        write(path)
        meta = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
        land_files(store, staging, index_dir, {rel: meta})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rel, meta


# publishing -------------------------------------------------------------------------------------

class _Publish(beam.DoFn):
    def __init__(self, layout, settings, input_description, generation, model, model_dir):
        self._model = model
        self._model_dir = model_dir
        self._layout = layout
        self._settings = settings
        self._input_description = input_description
        self._generation = generation

    def setup(self):
        self._store = ObjectStore()

    def process(self, _, plan, partitions, outcome, parts, hits, groups, isolated, scores, counts, repeated,
                built=None):
        """repeated: how many rows repeated an earlier row's id (left out); built: how the index
        was built (a grown one's report; else why it was built whole)."""
        if outcome is None:
            return
        self._store.delete_prefix(self._layout.index_work_dir)  # the shards are built
        if outcome.refused:
            self._store.delete_prefix(self._layout.index_dir)
            yield {"published": False, "reason": outcome.refused, "refused": "recall", "count": outcome.count,
                   "recall": outcome.recall, "sharding": {"shards": len(outcome.entries),
                                                          "recall_by_shards_searched": outcome.curve}}
            return
        files = dict(parts)
        rel, meta = groups[0]["file"]
        files[rel] = meta
        rel, meta = isolated[0]["file"]
        files[rel] = meta
        rel, meta = _land_one(self._store, self._layout.index_dir, CENTROIDS,
                              lambda path: write_centroids(path, outcome.centroids))
        files[rel] = meta
        for rel, source in model_files(self._model_dir).items():  # an int8 run's model, as in one worker's build
            rel, meta = _land_one(self._store, self._layout.index_dir, rel,
                                  lambda path: self._store.download_to_file(source, path))
            files[rel] = meta
        fields = sharded_fields(outcome, plan.signature, self._settings, plan.shards, partitions,
                                run_id=self._layout.run_id, input_description=self._input_description,
                                counts={**add_counts(counts), "indexed": outcome.count,
                                        "repeated_ids": repeated},
                                groups=groups[0]["report"], table_hits=hits, outliers_kept=isolated[0]["kept"],
                                score_counts=scores, model=self._model,
                                build=built or {"built_whole": plan.built_whole or "a new index"})
        manifest = artifact.Manifest.parse(artifact.manifest_document(fields, files, outcome.entries))
        result = publish_manifest(self._store, self._layout, manifest.to_bytes(), self._generation,
                                  keep_runs=self._settings.keep_runs)
        report = index_report(manifest, result)
        Metrics.gauge("imgsim", "index_published_at_ms").set(int(time.time() * 1000))
        _LOG.info("index: %d shards, recall@%d %.4f searching %d: %s", len(outcome.entries), outcome.recall["k"],
                  outcome.recall["value"], outcome.shards_to_search, result.latest_detail)
        yield report

