"""WriteParquet: dict rows -> Parquet files, committed once every bundle is done.

    rows ─► WriteBundles (one BundleFile per bundle: DIRECTORY/NAME-<hex>.parquet) ─┐ names (side input)
    Create([None]) ──────────────────────────────────────────────────────────► Commit ─► committed files

imgsim.runs.parquet_files has the protocol and why it replaces beam.io.WriteToParquet.
The commit reads the names as a side input, so it runs once, after the last bundle, and also
when no row came (then it writes the one empty file).
"""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from imgsim.runs.parquet_files import ROW_GROUP_BYTES, BundleFile, commit, new_file_name
from imgsim.storage import ObjectStore, join


class WriteParquet(beam.PTransform):
    """dict rows -> PCollection of the files written (DIRECTORY/NAME-<hex>.parquet), once committed."""

    def __init__(self, directory: str, name: str, schema: pa.Schema, row_group_bytes: int = ROW_GROUP_BYTES):
        super().__init__()
        self._directory = directory
        self._name = name
        self._schema = schema
        self._row_group_bytes = row_group_bytes

    def expand(self, rows):
        # Both steps declare their output type (file names): without it, Beam infers one by
        # reading the bytecode of process and everything it calls, at ~20 ms a sink per pipeline.
        written = rows | "WriteBundles" >> beam.ParDo(
            _WriteBundles(self._directory, self._name, self._schema, self._row_group_bytes)).with_output_types(str)
        return (rows.pipeline
                | "Once" >> beam.Create([None])
                | "Commit" >> beam.ParDo(_Commit(self._directory, self._name, self._schema),
                                         written=beam.pvalue.AsList(written)).with_output_types(str))


class _WriteBundles(beam.DoFn):
    def __init__(self, directory, name, schema, row_group_bytes):
        self._directory = directory
        self._name = name
        self._schema = schema
        self._row_group_bytes = row_group_bytes

    def setup(self):
        self._store = ObjectStore()
        self._file = None

    def start_bundle(self):
        self._discard()

    def process(self, row):
        if self._file is None:
            self._file = BundleFile(self._store, join(self._directory, new_file_name(self._name)), self._schema,
                                    self._row_group_bytes)
        self._file.add(row)

    def finish_bundle(self):
        if self._file is not None:
            path = self._file.close()
            self._file = None
            if path is not None:
                yield GlobalWindows.windowed_value(path)

    def teardown(self):
        self._discard()

    def _discard(self):
        """A bundle that failed part-way leaves its local temporary file to the next bundle or teardown."""
        if self._file is not None:
            self._file.discard()
        self._file = None


class _Commit(beam.DoFn):
    def __init__(self, directory, name, schema):
        self._directory = directory
        self._name = name
        self._schema = schema

    def setup(self):
        self._store = ObjectStore()

    def process(self, _, written):
        yield from commit(self._store, self._directory, self._name, written, self._schema)
