"""A progress line in the log of local runs (Dataflow shows the same counters in its UI).

All DoFns of a worker process tick one ProgressMeter shared through
apache_beam.utils.shared; on DirectRunner that process is the whole job.
"""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.utils import shared

from imgsim.progress import ProgressMeter

_LOG = logging.getLogger("imgsim.progress")


class ReportProgress(beam.PTransform):
    """(embedding rows, failures) -> nothing; logs a line every `interval` seconds."""

    def __init__(self, input_rows, interval: float = 10.0):
        super().__init__()
        self._input_rows = input_rows  # PCollection with the single count of input rows
        self._interval = interval

    def expand(self, outcomes):
        embeddings, failures = outcomes
        handle = shared.Shared()
        total = beam.pvalue.AsSingleton(self._input_rows)
        embeddings | "TickEmbedded" >> beam.ParDo(_Tick(handle, self._interval, "embedded"), total)
        failures | "TickFailed" >> beam.ParDo(_Tick(handle, self._interval, "failed"), total)
        return beam.pvalue.PDone(embeddings.pipeline)


class _Tick(beam.DoFn):
    def __init__(self, handle: shared.Shared, interval: float, outcome: str):
        self._handle = handle
        self._interval = interval
        self._outcome = outcome

    def setup(self):
        self._meter = self._handle.acquire(ProgressMeter, tag="progress")

    def process(self, _, total: int):
        self._meter.total = total
        self._meter.add(**{self._outcome: 1})
        if self._meter.due(self._interval):
            _LOG.info("progress: %s", self._meter.line())
