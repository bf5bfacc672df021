"""One row per id: later repeats of an id become `duplicate_id` failures.

The GroupByKey doubles as the pipeline's fan-out point: after it, rows are
spread over workers for downloading, whichever single worker read them.
"""
from __future__ import annotations

import apache_beam as beam

from imgsim.failures import STAGE_READ, Failure
from imgsim.records import CatalogueRow
from imgsim.transforms.failures import FAILURES, failed


class DeduplicateIds(beam.PTransform):
    """rows -> outputs with `rows` (first row of each id, by input position) and FAILURES."""

    def expand(self, rows):
        return (rows
                | "KeyById" >> beam.Map(lambda row: (row.id, row))
                | "GroupById" >> beam.GroupByKey()
                | "KeepFirst" >> beam.ParDo(_KeepFirst()).with_outputs(FAILURES, main="rows"))


class _KeepFirst(beam.DoFn):
    def process(self, element):
        _, rows = element
        first, *repeats = sorted(rows, key=lambda row: row.position)
        yield first
        for row in repeats:
            yield failed(_duplicate(row, first))


def _duplicate(row: CatalogueRow, first: CatalogueRow) -> Failure:
    return Failure(row.id, row.url, STAGE_READ, "duplicate_id",
                   f"input row {row.position} repeats the id of row {first.position}")
