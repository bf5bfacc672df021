"""A progress line in the log of local runs (Dataflow shows the same counters in its UI).

All DoFns of a worker process tick one ProgressMeter shared through
apache_beam.utils.shared; on DirectRunner that process is the whole job.
"""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.utils import shared

from imgsim.runs.progress import ProgressMeter

_LOG = logging.getLogger("imgsim.runs.progress")


def report_progress(embedding_parts, failure_parts, input_rows, interval: float = 10.0) -> None:
    """Tick on every part of the outcome (each inside its producing stage, so the line moves
    while the work happens) and log a line every `interval` seconds.

    input_rows: the input rows' partial counts (transforms.counts), the line's total."""
    handle = shared.Shared()
    total = beam.pvalue.AsList(input_rows)
    for i, part in enumerate(embedding_parts):
        part | f"ProgressEmbedded{i}" >> beam.ParDo(_Tick(handle, interval, "embedded"), total)
    for i, part in enumerate(failure_parts):
        part | f"ProgressFailed{i}" >> beam.ParDo(_Tick(handle, interval, "failed"), total)


class _Tick(beam.DoFn):
    def __init__(self, handle: shared.Shared, interval: float, outcome: str):
        self._handle = handle
        self._interval = interval
        self._outcome = outcome

    def setup(self):
        self._meter = self._handle.acquire(ProgressMeter, tag="progress")

    def process(self, _, total: list):
        self._meter.total = sum(count for _, count in total)
        self._meter.add(**{self._outcome: 1})
        if self._meter.due(self._interval):
            _LOG.info("progress: %s", self._meter.line())
