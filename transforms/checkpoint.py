"""Checkpointing embeddings while the run is going, so an interrupted run can resume.

The run's file sinks commit only at the end, so a run killed after hours would
leave nothing. This DoFn also writes every embedding row to
runs/RUN_ID/checkpoint/ in small Parquet files (every --checkpoint-rows rows,
every --checkpoint-seconds, and at the end of each bundle: a local runner's
bundle can be the whole input), and their thumbnails to
runs/RUN_ID/checkpoint/thumbnails/ in the pack format. A restart with the same --run-id reuses
them without a single request (transforms/reuse.py). Rows may appear twice
there when a runner retries a bundle; readers keep one row per id. The
summary step deletes the checkpoint once the run is complete.
"""
from __future__ import annotations

import threading
import uuid

import apache_beam as beam
import pyarrow as pa

from imgsim.runs.layout import RunLayout
from imgsim.runs.parquet_files import table_bytes
from imgsim.storage import ObjectStore, join
from imgsim.thumbnails import packs


class WriteCheckpoint(beam.PTransform):
    """EmbeddingRows -> nothing (files under runs/RUN_ID/checkpoint/)."""

    def __init__(self, layout: RunLayout, schema: pa.Schema, every: int = 500, thumbnails: bool = False,
                 seconds: float = 60.0):
        super().__init__()
        if every < 1:
            raise ValueError("--checkpoint-rows must be at least 1")
        self._layout = layout
        self._schema = schema
        self._every = every
        self._seconds = seconds
        self._thumbnails = thumbnails

    def expand(self, rows):
        # It outputs nothing; the declared type spares Beam inferring one from the bytecode.
        rows | "WriteChunks" >> beam.ParDo(_CheckpointFn(self._layout, self._schema, self._every, self._thumbnails,
                                                         self._seconds)).with_output_types(beam.typehints.Any)
        return beam.pvalue.PDone(rows.pipeline)


class _CheckpointFn(beam.DoFn):
    """Rows are written every `every` rows, at the end of each bundle, and `seconds` after the
    oldest unwritten row arrived, by a timer: a bundle can wait long for its next row (slow
    downloads), and the rows it holds must not wait with it."""

    def __init__(self, layout, schema, every, thumbnails=False, seconds=60.0):
        self._layout = layout
        self._schema = schema
        self._every = every
        self._seconds = seconds
        self._thumbnails = thumbnails

    def setup(self):
        self._store = ObjectStore()
        self._lock = threading.Lock()
        self._timer = None

    def start_bundle(self):
        self._rows = []

    def process(self, row):
        with self._lock:
            self._rows.append(row)
            if len(self._rows) >= self._every:
                self._flush()
            elif self._timer is None:
                self._timer = threading.Timer(self._seconds, self._flush_locked)
                self._timer.daemon = True
                self._timer.start()

    def finish_bundle(self):
        self._flush_locked()

    def teardown(self):
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()

    def _flush_locked(self):
        with self._lock:
            self._flush()

    def _flush(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        name = f"part-{uuid.uuid4().hex}.parquet"
        with_thumbnails = [row for row in rows if row.thumbnail is not None] if self._thumbnails else []
        if with_thumbnails:  # before the embeddings: a resumed row then always finds its thumbnail
            thumbnails = pa.Table.from_pylist([packs.pack_row(row.id, row.sha256, row.thumbnail)
                                               for row in with_thumbnails], schema=packs.SCHEMA)
            self._store.write_bytes(join(self._layout.checkpoint_thumbnails_dir, name), table_bytes(thumbnails))
        table = pa.Table.from_pylist([row.to_dict() for row in rows], schema=self._schema)
        self._store.write_bytes(join(self._layout.checkpoint_dir, name), table_bytes(table))
