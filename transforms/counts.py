"""Counting in one Beam step: partial counts per bundle, added up where they are read.

Why not beam.combiners.Count: each is five to eight Beam steps (a global combine, then a default
injected for an empty input), a run needs several, and every step costs a local run time to
build and schedule and a Dataflow job a stage. CountPerBundle is one step. The runner keeps only
a committed bundle's output, so the partial counts add up exactly: readers take them as a list
side input and add them up (imgsim.runs.summary.add_counts); no element counts as zero.
"""
from __future__ import annotations

import collections
from typing import Any, Callable

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows


class CountPerBundle(beam.DoFn):
    """element -> (key(element), count) for each key, per bundle, emitted when the bundle ends."""

    def __init__(self, key: Callable[[Any], Any]):
        self._key = key

    def start_bundle(self):
        self._counts = collections.Counter()

    def process(self, element):
        self._counts[self._key(element)] += 1

    def finish_bundle(self):
        for key, count in self._counts.items():
            yield GlobalWindows.windowed_value((key, count))
