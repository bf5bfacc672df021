"""Reading a IIIF collection on the workers: the tree walked on one, its manifests read on all.

    Create ─► WalkCollections (collections, breadth first) ─► (index, manifest URL) ─► Reshuffle
          ─► ReadManifests (fetch, parse, one row per painted image) ─► rows | failures

A member that cannot be read, and a manifest that does not parse, fail as one read failure
each, naming the document (its URL as id and URL) with the download's reason or
invalid_record; the run goes on. With --limit the walk reads the manifests itself, in order,
until it has the rows asked for, so the same rows come every time.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from imgsim.catalogue import iiif
from imgsim.catalogue.iiif_documents import DocumentError, Problem, read_document, walk
from imgsim.catalogue.inputs import IiifInput
from imgsim.catalogue.values import read_failure
from imgsim.failures import Failure
from imgsim.fetch.http import Fetcher, FetchConfig
from imgsim.storage import ObjectStore
from imgsim.transforms.failures import FAILURES, NAMESPACE, failed

ROWS_PER_MANIFEST = 1 << 24  # positions: a manifest's index times this, plus its row


class ReadIiif(beam.PTransform):
    """pipeline -> (rows, failures) of a IIIF manifest or collection."""

    def __init__(self, spec: IiifInput, fetch_config: FetchConfig):
        super().__init__()
        self._spec = spec
        self._fetch_config = fetch_config

    def expand(self, pbegin):
        walked = (pbegin
                  | "Start" >> beam.Create([None])
                  | "WalkCollections" >> beam.ParDo(_Walk(self._spec, self._fetch_config))
                  .with_outputs(FAILURES, "rows", main="manifests"))
        read = (walked.manifests
                | "SpreadManifests" >> beam.Reshuffle()
                | "ReadManifests" >> beam.ParDo(_ReadManifest(self._spec, self._fetch_config))
                .with_outputs(FAILURES, main="rows"))
        rows = (walked.rows, read.rows) | "AllRows" >> beam.Flatten()
        failures = (walked[FAILURES], read[FAILURES]) | "AllReadFailures" >> beam.Flatten()
        return rows, failures


class _DocumentDoFn(beam.DoFn):
    def __init__(self, spec: IiifInput, fetch_config: FetchConfig):
        self._spec = spec
        self._fetch_config = fetch_config
        self._fetcher = None
        self._read_rows = Metrics.counter(NAMESPACE, "rows_read")
        self._manifests = Metrics.counter(NAMESPACE, "iiif_manifests_read")

    def setup(self):
        self._store = ObjectStore()
        self._fetcher = Fetcher(self._fetch_config, pool_size=4)

    def teardown(self):
        if self._fetcher is not None:
            self._fetcher.close()

    def _read(self, url: str):
        return read_document(url, self._fetcher, self._store)

    def _rows(self, index: int, url: str):
        """The rows (and failures) of manifest number index at url."""
        try:
            document = self._read(url)
        except DocumentError as e:
            yield _failure(e.problem)
            return
        if not isinstance(document, iiif.Manifest):
            yield _failure(Problem(url, "invalid_record", "listed as a manifest, is a collection"))
            return
        self._manifests.inc()
        for item in iiif.manifest_rows(document, index * ROWS_PER_MANIFEST, self._spec.max_metadata_bytes):
            self._read_rows.inc()
            yield failed(item) if isinstance(item, Failure) else item


class _Walk(_DocumentDoFn):
    def process(self, _):
        limit = self._spec.limit
        rows = 0
        for index, found in enumerate(walk(self._spec.url, self._read)):
            if isinstance(found, Problem):
                yield _failure(found)
                continue
            if limit is None:
                yield index, found
                continue
            for item in self._rows(index, found):  # --limit: the first rows, in order, read here
                if rows >= limit:
                    return
                rows += 1
                yield item if isinstance(item, beam.pvalue.TaggedOutput) else beam.pvalue.TaggedOutput("rows", item)


class _ReadManifest(_DocumentDoFn):
    def process(self, element):
        index, url = element
        yield from self._rows(index, url)


def _failure(problem: Problem):
    return failed(read_failure(problem.reason, problem.url, problem.url, problem.detail))
