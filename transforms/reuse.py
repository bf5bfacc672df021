"""Joining the collection with earlier embeddings (incremental runs and restarts).

Earlier rows are read in parallel, keyed by id and CoGrouped with today's
rows. Per id: a row of this run's own checkpoint is reused outright; a row
of LATEST's run with the same URL rides along with the download, which then
asks the server whether the bytes changed (imgsim.reuse decides, the
download stage acts); ids only in LATEST's run are counted as deleted.
"""
from __future__ import annotations

import dataclasses

import apache_beam as beam
from apache_beam.metrics import Metrics

from imgsim import reuse
from imgsim.outputs import read_tables
from imgsim.transforms.failures import NAMESPACE

REUSED = "reused"
DELETED = "deleted"


class PlanReuse(beam.PTransform):
    """rows -> outputs: `rows` (to fetch; .previous set where an earlier row may stand in),
    REUSED (embedding rows resumed from the checkpoint), DELETED (ids gone since LATEST's run)."""

    def __init__(self, sources: list[reuse.ReuseSource]):
        super().__init__()
        self._sources = sources

    def expand(self, rows):
        files = [(path, source.trusted) for source in self._sources for path in source.files]
        previous = (rows.pipeline
                    | "EarlierFiles" >> beam.Create(files)
                    | "SpreadFiles" >> beam.Reshuffle()
                    | "ReadEarlier" >> beam.ParDo(_ReadEarlier()))
        keyed = rows | "KeyRows" >> beam.Map(lambda row: (row.id, row))
        return ({"row": keyed, "previous": previous}
                | "JoinById" >> beam.CoGroupByKey()
                | "Decide" >> beam.ParDo(_Decide()).with_outputs(REUSED, DELETED, main="rows"))


class _ReadEarlier(beam.DoFn):
    def process(self, element):
        path, trusted = element
        for table in read_tables([path]):
            for row in table.to_pylist():
                row["embedding"] = _as_vector(row["embedding"])
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
        if chosen is not None and chosen.trusted:
            self._resumed.inc()
            yield beam.pvalue.TaggedOutput(REUSED, reuse.reused_row(row, chosen, reuse.RESUMED))
        else:
            yield dataclasses.replace(row, previous=chosen, known=known)


def _as_vector(values):
    import numpy as np

    return np.asarray(values, dtype=np.float32)
