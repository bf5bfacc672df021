"""Reading the input collection into CatalogueRows, whatever its form.

A manifest is read as a stream on one worker (its rows are tiny; the fan-out
comes after, at de-duplication). A glob is expanded on one worker and sorted,
so --limit takes the same files every time. The museum API is paged in
parallel (see cma_pages), and a IIIF collection's manifests are read in
parallel (see iiif_manifests).
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from imgsim.catalogue import manifest
from imgsim.failures import Failure
from imgsim.fetch.http import FetchConfig
from imgsim.catalogue.inputs import CmaInput, GlobInput, IiifInput, InputSpec, ManifestInput
from imgsim.storage import ObjectStore
from imgsim.transforms.cma_pages import ReadCmaPages
from imgsim.transforms.iiif_manifests import ReadIiif
from imgsim.transforms.failures import FAILURES, NAMESPACE, failed


class ReadCatalogue(beam.PTransform):
    """pipeline -> (rows, failures): one CatalogueRow or read Failure per input record."""

    def __init__(self, spec: InputSpec, api_fetch_config: FetchConfig = FetchConfig()):
        super().__init__()
        self._spec = spec
        self._api_fetch_config = api_fetch_config

    def expand(self, pbegin):
        spec = self._spec
        if isinstance(spec, IiifInput):
            return pbegin | ReadIiif(spec, self._api_fetch_config)
        if isinstance(spec, CmaInput):
            outputs = pbegin | ReadCmaPages(spec.query, self._api_fetch_config, spec.max_metadata_bytes)
        else:
            reader = _ReadManifest(spec) if isinstance(spec, ManifestInput) else _ExpandGlob(spec)
            outputs = (pbegin
                       | "Start" >> beam.Create([None])
                       | "Read" >> beam.ParDo(reader).with_outputs(FAILURES, main="rows"))
        return outputs.rows, outputs[FAILURES]


class _ReadManifest(beam.DoFn):
    def __init__(self, spec: ManifestInput):
        self._spec = spec
        self._read = Metrics.counter(NAMESPACE, "rows_read")

    def setup(self):
        self._store = ObjectStore()

    def process(self, _):
        spec = self._spec
        with self._store.open_read(spec.path) as raw:
            for item in manifest.iter_rows(raw, spec.path, spec.schema, spec.limit, spec.max_metadata_bytes):
                self._read.inc()
                if isinstance(item, Failure):
                    yield failed(item)
                else:
                    yield item


class _ExpandGlob(beam.DoFn):
    def __init__(self, spec: GlobInput):
        self._spec = spec
        self._read = Metrics.counter(NAMESPACE, "rows_read")

    def setup(self):
        self._store = ObjectStore()

    def process(self, _):
        paths = self._store.glob(self._spec.pattern)
        if self._spec.limit is not None:
            paths = paths[: self._spec.limit]
        for position, path in enumerate(paths):
            self._read.inc()
            item = self._spec.row(path, position)
            yield failed(item) if isinstance(item, Failure) else item
