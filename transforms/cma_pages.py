"""Paging the Cleveland Museum of Art API in parallel on the workers.

One DoFn asks for the total and plans the pages; a Reshuffle spreads the page
requests over workers; another DoFn fetches and maps each page. An API that
stays unreachable after retries fails the job rather than publishing a
collection with whole pages missing.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from imgsim.catalogue import cma
from imgsim.catalogue.values import DEFAULT_MAX_METADATA_BYTES
from imgsim.failures import Failure, StageError
from imgsim.fetch.http import Fetcher, FetchConfig
from imgsim.transforms.failures import FAILURES, NAMESPACE, failed


class CmaApiError(RuntimeError):
    """The API could not be read; the run cannot know its collection."""


class ReadCmaPages(beam.PTransform):
    """pipeline -> outputs with `rows` (CatalogueRow) and FAILURES (read failures)."""

    def __init__(self, query: cma.CmaQuery, fetch_config: FetchConfig,
                 max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES):
        super().__init__()
        self._query = query
        self._fetch_config = fetch_config
        self._max_metadata_bytes = max_metadata_bytes

    def expand(self, pbegin):
        return (pbegin
                | "Start" >> beam.Create([None])
                | "PlanPages" >> beam.ParDo(_PlanPages(self._query, self._fetch_config))
                | "SpreadPages" >> beam.Reshuffle()
                | "FetchPages" >> beam.ParDo(_FetchPage(self._query, self._fetch_config, self._max_metadata_bytes))
                .with_outputs(FAILURES, main="rows"))


class _ApiDoFn(beam.DoFn):
    def __init__(self, query: cma.CmaQuery, fetch_config: FetchConfig):
        self._query = query
        self._fetch_config = fetch_config
        self._fetcher = None

    def setup(self):
        self._fetcher = Fetcher(self._fetch_config, pool_size=4)

    def teardown(self):
        if self._fetcher is not None:
            self._fetcher.close()

    def _get_page(self, skip: int, limit: int) -> tuple[int, list]:
        url = self._query.page_url(skip, limit)
        try:
            result = self._fetcher.fetch(url, headers={"Accept": "application/json"})
            return cma.load_page(result.data)
        except StageError as e:
            raise CmaApiError(f"the CMA API request {url} failed after {e.attempts} attempt(s): {e}") from None
        except ValueError as e:
            raise CmaApiError(f"the CMA API request {url} did not return an API page: {e}") from None


class _PlanPages(_ApiDoFn):
    def process(self, _):
        total, _ = self._get_page(0, 1)
        try:
            yield from cma.plan_pages(total, self._query)
        except ValueError as e:
            raise CmaApiError(f"{self._query.api_url}: {e}") from None


class _FetchPage(_ApiDoFn):
    def __init__(self, query, fetch_config, max_metadata_bytes: int):
        super().__init__(query, fetch_config)
        self._max_metadata_bytes = max_metadata_bytes
        self._read = Metrics.counter(NAMESPACE, "rows_read")

    def process(self, page: cma.Page):
        _, records = self._get_page(page.skip, page.limit)
        for offset, record in enumerate(records[: page.limit]):
            self._read.inc()
            item = cma.record_to_row(record, page.skip + offset, self._max_metadata_bytes)
            yield failed(item) if isinstance(item, Failure) else item
