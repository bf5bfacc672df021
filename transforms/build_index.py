"""The pipeline's final step: build, validate and publish the ScaNN index, on a worker.

It waits for the embeddings sink to finalise (its file names arrive as a side
input), reads those files, and hands them to imgsim.index.build.build_and_publish.
An index below --min-recall, or a LATEST that another run replaced meanwhile,
is reported in the summary rather than raised: the run's data is still good.
Storage errors do raise, so the runner retries the step; LATEST is written
last, so a failed attempt leaves the previous one untouched.
"""
from __future__ import annotations

import logging
from typing import Optional

import apache_beam as beam

from imgsim.index.build import IndexInputError, IndexSettings, RecallTooLow, build_and_publish
from imgsim.runs.layout import RunLayout
from imgsim.runs.outputs import read_tables
from imgsim.storage import ObjectStore

_LOG = logging.getLogger("imgsim.index")


class BuildIndex(beam.PTransform):
    """{embedding_files, input_rows} -> PCollection with one index report dict."""

    def __init__(self, layout: RunLayout, settings: IndexSettings, input_description: dict,
                 expected_latest_generation: int, model: Optional[dict] = None, model_dir: Optional[str] = None):
        super().__init__()
        self._layout = layout
        self._settings = settings
        self._input_description = input_description
        self._generation = expected_latest_generation
        self._model = model
        self._model_dir = model_dir

    def expand(self, pcolls):
        return (pcolls["input_rows"].pipeline
                | "Once" >> beam.Create([None])
                | "BuildAndPublish" >> beam.ParDo(
                    _BuildIndexFn(self._layout, self._settings, self._input_description, self._generation,
                                  self._model, self._model_dir),
                    files=beam.pvalue.AsList(pcolls["embedding_files"]),
                    input_rows=beam.pvalue.AsSingleton(pcolls["input_rows"])))


class _BuildIndexFn(beam.DoFn):
    def __init__(self, layout, settings, input_description, generation, model, model_dir):
        self._layout = layout
        self._settings = settings
        self._input_description = input_description
        self._generation = generation
        self._model = model
        self._model_dir = model_dir

    def setup(self):
        self._store = ObjectStore()

    def process(self, _, files, input_rows):
        try:
            tables = read_tables(sorted(files), self._store)
            report = build_and_publish(self._store, tables, self._settings, self._layout, self._generation,
                                       self._input_description, {"input_rows": input_rows}, self._model,
                                       self._model_dir)
        except RecallTooLow as e:
            report = {"published": False, "reason": str(e), **e.report}
        except IndexInputError as e:
            report = {"published": False, "reason": str(e)}
        _LOG.info("index: %s", report.get("latest") or report.get("reason"))
        yield report
