"""Routing failed rows: the shared output tag and the per-reason counters.

Every stage emits its successes on the main output and its Failures on the
FAILURES tag; the pipeline flattens the failure outputs into one sink.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from imgsim.failures import Failure

FAILURES = "failures"
NAMESPACE = "imgsim"


def counted(failure: Failure) -> Failure:
    """Count the failure, per reason (visible in the Dataflow UI); call on the bundle's thread."""
    Metrics.counter(NAMESPACE, f"failed_{failure.reason}").inc()
    Metrics.counter(NAMESPACE, "failed").inc()
    return failure


def failed(failure: Failure) -> beam.pvalue.TaggedOutput:
    """Count the failure and tag it for the failures output."""
    return beam.pvalue.TaggedOutput(FAILURES, counted(failure))
