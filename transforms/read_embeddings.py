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

    def __init__(self, plan, columns=None):
        super().__init__()
        self._plan = plan  # a singleton PCollection of IndexPlan
        self._columns = list(columns) if columns else None

    def expand(self, infos):
        return (infos
                | "RowGroups" >> beam.FlatMap(_row_groups, plan=beam.pvalue.AsSingleton(self._plan))
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(_ReadRowGroup(self._columns)))


def _row_groups(info, plan):
    if not plan.sharded:
        return
    for index, (first, rows) in enumerate(info.row_groups):
        if rows:
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
