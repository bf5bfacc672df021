"""Writing a run's outputs: embeddings, thumbnail packs and failures as Parquet, then the summary.

The summary is written last: its side inputs include the names of the files
the Parquet sinks finalised, so summary.json existing means the run's data
is complete.
"""
from __future__ import annotations

import json
import time

import apache_beam as beam
import pyarrow as pa

from imgsim.records import ORIGINS
from imgsim.runs.layout import RunLayout
from imgsim.runs.outputs import FAILURES_SCHEMA
from imgsim.runs.summary import add_counts, build_summary
from imgsim.storage import ObjectStore
from imgsim.thumbnails import packs
from imgsim.transforms.counts import CountPerBundle
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
    """{input_rows, embeddings:NAME (one per part), failures, written[, deleted][, index][, site]} -> the summary.

    input_rows and deleted are partial counts (transforms.counts). With an index step (and a site
    step), the summary waits for their reports and includes them."""

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
        counts = [part | f"CountOrigins{i}" >> beam.ParDo(CountPerBundle(lambda row: row.origin))
                  for i, part in enumerate(v for k, v in sorted(pcolls.items()) if k.startswith("embeddings:"))]
        counts.append(pcolls["input_rows"])
        if "deleted" in pcolls:
            counts.append(pcolls["deleted"] | "CountDeleted" >> beam.ParDo(CountPerBundle(lambda _: "deleted")))
        failure_counts = pcolls["failures"] | "CountFailures" >> beam.ParDo(
            CountPerBundle(lambda failure: (failure.stage, failure.reason)))
        # Steps a run leaves out (the index, the site) are side inputs left out, not empty collections.
        reports = {name: beam.pvalue.AsList(pcolls[name]) for name in ("index", "site") if name in pcolls}
        return (pcolls["input_rows"].pipeline
                | "Once" >> beam.Create([None])
                | "Write" >> beam.ParDo(
                    _WriteSummary(self._layout, self._input_description, self._signature, self._started_at,
                                  self._reuse_report, self._model),
                    counts=beam.pvalue.AsList(counts | "AllCounts" >> beam.Flatten()),
                    failure_counts=beam.pvalue.AsList(failure_counts),
                    written=beam.pvalue.AsList(pcolls["written"]), **reports))


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

    def process(self, _, counts, failure_counts, written, index=(), site=()):
        counts = add_counts(counts)
        by_origin = {origin: counts.get(origin, 0) for origin in ORIGINS}
        embedded = sum(by_origin.values())
        input_rows = counts.get("input_rows", 0)
        run_dir = self._layout.run_dir.rstrip("/") + "/"
        summary = build_summary(
            run_id=self._layout.run_id, input_description=self._input_description,
            signature=self._signature, input_rows=input_rows, embedded=embedded,
            failure_counts=failure_counts, started_at=self._started_at, finished_at=time.time(),
            extra={"files": sorted(f[len(run_dir):] if f.startswith(run_dir) else f for f in written),
                   "index": index[0] if index else None,
                   **({"site": site[0]} if site else {}),
                   "reuse": self._reuse_report, "model": self._model})
        summary["counts"].update({**by_origin, "deleted": counts.get("deleted", 0)})
        self._store.write_bytes(self._layout.summary_path, json.dumps(summary, indent=2).encode(),
                                content_type="application/json")
        self._store.delete_prefix(self._layout.checkpoint_dir)  # the run is complete
        yield summary
