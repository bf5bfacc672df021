"""Joining the collection with earlier embeddings (incremental runs and restarts).

Earlier rows are read in parallel, keyed by id and CoGrouped with today's
rows. Per id: a row of this run's own checkpoint is resumed outright; a row
of LATEST's run with the same URL rides along with the download, which then
asks the server whether the bytes changed (imgsim.runs.reuse decides,
imgsim.fetch.acquire asks); ids only in LATEST's run are counted as deleted.
The earlier runs' thumbnail packs join the same CoGroup, so an earlier row
carries the thumbnail made from its bytes, and a reused or resumed item keeps
its thumbnail without being fetched again.
"""
from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from imgsim.records import RESUMED, EmbeddingRow
from imgsim.runs import reuse
from imgsim.runs.outputs import read_tables
from imgsim.storage import ObjectStore
from imgsim.thumbnails import packs
from imgsim.transforms.failures import NAMESPACE

DELETED = "deleted"
EMBEDDINGS, THUMBNAILS = "embeddings", "thumbnails"  # the kinds of earlier file read


class PlanReuse(beam.PTransform):
    """rows -> outputs: `rows` (to fetch; .previous set where an earlier row may stand in),
    RESUMED (EmbeddingRows from this run's checkpoint), DELETED (ids gone since LATEST's run)."""

    def __init__(self, sources: list[reuse.ReuseSource]):
        super().__init__()
        self._sources = sources

    def expand(self, rows):
        files = [(EMBEDDINGS, path, source.trusted) for source in self._sources for path in source.files]
        files += [(THUMBNAILS, path, None)
                  for path in sorted({path for source in self._sources for path in source.thumbnail_files})]
        # beam.Create reshuffles two or more values itself: the files are read in parallel.
        earlier = (rows.pipeline
                   | "EarlierFiles" >> beam.Create(files)
                   | "ReadEarlier" >> beam.ParDo(_ReadEarlier()).with_outputs(THUMBNAILS, main=EMBEDDINGS))
        keyed = rows | "KeyRows" >> beam.Map(lambda row: (row.id, row))
        return ({"row": keyed, "previous": earlier[EMBEDDINGS], "thumbs": earlier[THUMBNAILS]}
                | "JoinById" >> beam.CoGroupByKey()
                | "Decide" >> beam.ParDo(_Decide()).with_outputs(RESUMED, DELETED, main="rows"))


class _ReadEarlier(beam.DoFn):
    """An earlier embeddings file -> (id, PreviousRow); an earlier thumbnail pack -> THUMBNAILS
    (id, (sha256, thumbnail)). One step reads both kinds: one Create and one step fewer a run."""

    def setup(self):
        self._store = ObjectStore()

    def process(self, element):
        kind, path, trusted = element
        if kind == THUMBNAILS:
            for item_id, sha256, thumbnail in packs.read_packs(self._store, [path]):
                yield beam.pvalue.TaggedOutput(THUMBNAILS, (item_id, (sha256, thumbnail)))
            return
        for table in read_tables([path], self._store):
            for row in table.to_pylist():
                row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
                yield row["id"], reuse.previous_from_row(row, trusted)


class _Decide(beam.DoFn):
    def __init__(self):
        self._resumed = Metrics.counter(NAMESPACE, "resumed")

    def process(self, element):
        item_id, grouped = element
        rows, previous = list(grouped["row"]), list(grouped["previous"])
        if not rows:
            if any(not p.trusted for p in previous):
                yield beam.pvalue.TaggedOutput(DELETED, item_id)
            return
        row = rows[0]
        known = any(not p.trusted for p in previous)
        chosen = reuse.pick_previous(previous, row.url)
        if chosen is not None:
            chosen = dataclasses.replace(chosen, thumbnail=packs.pick(grouped["thumbs"], chosen.sha256))
        if chosen is not None and chosen.trusted:
            self._resumed.inc()
            yield beam.pvalue.TaggedOutput(RESUMED, EmbeddingRow.from_previous(row, chosen, RESUMED))
        else:
            yield dataclasses.replace(row, previous=chosen, known=known)
