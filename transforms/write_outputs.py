"""Writing a run's outputs: embeddings, thumbnail packs and failures as Parquet, then the summary.

The summary is written last: its side inputs include the names of the files
the Parquet sinks finalised, so summary.json existing means the run's data
is complete.
"""
from __future__ import annotations

import collections
import json
import time

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from imgsim.records import ORIGINS
from imgsim.runs.layout import RunLayout
from imgsim.runs.outputs import FAILURES_SCHEMA
from imgsim.runs.summary import build_summary
from imgsim.storage import ObjectStore
from imgsim.thumbnails import packs
from imgsim.transforms.write_parquet import WriteParquet


class WriteEmbeddings(beam.PTransform):
    """EmbeddingRows -> PCollection of the Parquet files written (embeddings/NAME-<hex>.parquet)."""

    def __init__(self, layout: RunLayout, schema: pa.Schema, name: str = "part"):
        super().__init__()
        self._layout = layout
        self._schema = schema
        self._name = name

    def expand(self, rows):
        return (rows
                | "AsRows" >> beam.Map(lambda row: row.to_dict())
                | "WriteParquet" >> WriteParquet(self._layout.embeddings_dir, self._name, self._schema))


class WriteThumbnails(beam.PTransform):
    """EmbeddingRows -> PCollection of the thumbnail packs written (thumbnails/NAME-<hex>.parquet), from the
    rows that carry a thumbnail (imgsim.thumbnails.packs has the format)."""

    def __init__(self, layout: RunLayout, name: str = "part"):
        super().__init__()
        self._layout = layout
        self._name = name

    def expand(self, rows):
        return (rows
                | "WithThumbnail" >> beam.Filter(lambda row: row.thumbnail is not None)
                | "AsPackRows" >> beam.Map(lambda row: packs.pack_row(row.id, row.sha256, row.thumbnail))
                | "WriteParquet" >> WriteParquet(self._layout.thumbnails_dir, self._name, packs.SCHEMA,
                                                 row_group_bytes=packs.ROW_GROUP_BYTES))


class WriteFailures(beam.PTransform):
    """Failures -> PCollection of the Parquet files written (one empty file when nothing failed)."""

    def __init__(self, layout: RunLayout):
        super().__init__()
        self._layout = layout

    def expand(self, failures):
        return (failures
                | "AsRows" >> beam.Map(lambda failure: failure.as_row())
                | "WriteParquet" >> WriteParquet(self._layout.failures_dir, "part", FAILURES_SCHEMA))


class WriteRunSummary(beam.PTransform):
    """{input_rows, embeddings:NAME (one per part), failures, written, deleted[, index][, site]} -> the summary.

    With an index step (and a site step), the summary waits for their reports and includes them."""

    def __init__(self, layout: RunLayout, input_description: dict, signature: dict, started_at: float,
                 reuse_report: dict | None = None, model: dict | None = None):
        super().__init__()
        self._layout = layout
        self._input_description = input_description
        self._signature = signature
        self._started_at = started_at
        self._reuse_report = reuse_report or {}
        self._model = model or {}

    def expand(self, pcolls):
        # Counted per bundle where each part is produced (as combiner lifting would), added up by the summary.
        origins = [part | f"CountOrigins{i}" >> beam.ParDo(_CountPerBundle(lambda row: row.origin))
                   for i, part in enumerate(v for k, v in sorted(pcolls.items()) if k.startswith("embeddings:"))]
        origins = origins | "AllOrigins" >> beam.Flatten()
        deleted = pcolls["deleted"] | "CountDeleted" >> beam.ParDo(_CountPerBundle(lambda _: "deleted"))
        failure_counts = pcolls["failures"] | "CountFailures" >> beam.ParDo(
            _CountPerBundle(lambda failure: (failure.stage, failure.reason)))
        index = pcolls.get("index")
        if index is None:
            index = pcolls["input_rows"].pipeline | "NoIndex" >> beam.Create([])
        site = pcolls.get("site")
        if site is None:
            site = pcolls["input_rows"].pipeline | "NoSite" >> beam.Create([])
        return (pcolls["input_rows"].pipeline
                | "Once" >> beam.Impulse()
                | "Write" >> beam.ParDo(
                    _WriteSummary(self._layout, self._input_description, self._signature, self._started_at,
                                  self._reuse_report, self._model),
                    input_rows=beam.pvalue.AsSingleton(pcolls["input_rows"]),
                    failure_counts=beam.pvalue.AsList(failure_counts),
                    written=beam.pvalue.AsList(pcolls["written"]),
                    index=beam.pvalue.AsList(index),
                    site=beam.pvalue.AsList(site),
                    origins=beam.pvalue.AsList(origins),
                    deleted=beam.pvalue.AsList(deleted)))


class _CountPerBundle(beam.DoFn):
    """(key(element), count) for each key, per bundle, emitted when the bundle ends.

    Why not beam.combiners.Count: each is five to eight Beam steps, the summary needs four or five
    of them a run, and every step costs a local run time to build and schedule. This is one step;
    the runner keeps only a committed bundle's output, so the partial counts add up exactly."""

    def __init__(self, key):
        self._key = key

    def start_bundle(self):
        self._counts = collections.Counter()

    def process(self, element):
        self._counts[self._key(element)] += 1

    def finish_bundle(self):
        for key, count in self._counts.items():
            yield GlobalWindows.windowed_value((key, count))


class _WriteSummary(beam.DoFn):
    def __init__(self, layout, input_description, signature, started_at, reuse_report, model):
        self._layout = layout
        self._input_description = input_description
        self._signature = signature
        self._started_at = started_at
        self._reuse_report = reuse_report
        self._model = model

    def setup(self):
        self._store = ObjectStore()

    def process(self, _, input_rows, failure_counts, written, index, origins, deleted, site):
        by_origin = dict.fromkeys(ORIGINS, 0)
        for origin, count in origins:
            by_origin[origin] += count
        embedded = sum(by_origin.values())
        run_dir = self._layout.run_dir.rstrip("/") + "/"
        summary = build_summary(
            run_id=self._layout.run_id, input_description=self._input_description,
            signature=self._signature, input_rows=input_rows, embedded=embedded,
            failure_counts=failure_counts, started_at=self._started_at, finished_at=time.time(),
            extra={"files": sorted(f[len(run_dir):] if f.startswith(run_dir) else f for f in written),
                   "index": index[0] if index else None,
                   **({"site": site[0]} if site else {}),
                   "reuse": self._reuse_report, "model": self._model})
        summary["counts"].update({**by_origin, "deleted": sum(count for _, count in deleted)})
        self._store.write_bytes(self._layout.summary_path, json.dumps(summary, indent=2).encode(),
                                content_type="application/json")
        self._store.delete_prefix(self._layout.checkpoint_dir)  # the run is complete
        yield summary
