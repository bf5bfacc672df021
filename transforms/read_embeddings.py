"""Reading embeddings files in parallel, one Parquet row group per element.

    FileInfo (footer: imgsim.index.sources) -> (file number, first row, row group) -> Reshuffle -> read

Each element is a pyarrow Table of one row group, so no worker holds more
than a row group of a file at a time, and rows keep their position (file
number, row in file), which decides which of two rows with one id is kept.
Reading happens only when the plan says the index is sharded.
"""
from __future__ import annotations

import apache_beam as beam
import pyarrow.parquet as pq

from imgsim.storage import ObjectStore


class ReadRowGroups(beam.PTransform):
    """PCollection[FileInfo] -> PCollection[(file number, first row, pa.Table)], when plan.sharded."""

    def __init__(self, plan, columns=None, growing: bool = False):
        super().__init__()
        self._plan = plan  # a singleton PCollection of IndexPlan
        self._columns = list(columns) if columns else None
        self._growing = growing  # read for a grown index (plan.growth) rather than a new one

    def expand(self, infos):
        return (infos
                | "RowGroups" >> beam.FlatMap(_row_groups, plan=beam.pvalue.AsSingleton(self._plan),
                                              growing=self._growing)
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(_ReadRowGroup(self._columns)))


def _row_groups(info, plan, growing):
    if not plan.sharded or (plan.growth is not None) != growing:
        return
    for index, (first, rows) in enumerate(info.row_groups):
        if rows and (not growing or any((info.number, row) in plan.growth.added for row in range(first, first + rows))):
            yield info.number, info.path, index, first


class _ReadRowGroup(beam.DoFn):
    def __init__(self, columns):
        self._columns = columns

    def setup(self):
        self._store = ObjectStore()

    def process(self, unit):
        number, path, index, first = unit
        with self._store.open_read(path) as f:
            table = pq.ParquetFile(f).read_row_group(index, columns=self._columns)
        yield number, first, table.replace_schema_metadata(None)
