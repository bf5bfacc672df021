"""How many images a run's input holds: a manifest's rows, a glob's files, the museum API's total.

Counted the way the run reads them (imgsim.catalogue), so a row the run would refuse is counted
apart: it costs nothing to embed.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import pyarrow.parquet as pq

from imgsim.catalogue import manifest
from imgsim.catalogue.inputs import CmaInput, GlobInput, IiifInput, InputSpec, ManifestInput
from imgsim.failures import Failure
from imgsim.fetch.http import FetchConfig
from imgsim.storage import ObjectStore


@dataclasses.dataclass(frozen=True)
class Count:
    images: int  # rows the run will try to embed
    refused: int  # manifest rows it would fail as invalid_record before any download
    how: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def count_input(spec: InputSpec, store: ObjectStore, fetch: FetchConfig,
                api_total: Optional[Callable[[CmaInput], int]] = None) -> Count:
    """api_total: the launcher's probe of the museum API (one record page), passed down."""
    if isinstance(spec, CmaInput):
        if api_total is None:
            raise ValueError("counting a museum API input needs the API's total")
        return _limited(api_total(spec), 0, spec.limit, f"the API's total for {spec.describe()}")
    if isinstance(spec, IiifInput):
        from imgsim.catalogue.iiif_documents import first_rows
        from imgsim.fetch.http import Fetcher

        fetcher = Fetcher(fetch, pool_size=1)
        try:
            images = sum(1 for _ in first_rows(spec.url, fetcher, store, spec.limit or 10 ** 12,
                                               spec.max_metadata_bytes))
        finally:
            fetcher.close()
        return Count(images, 0, f"images in the manifests under {spec.url}" + (
            f", at most --limit {spec.limit}" if spec.limit else ""))
    if isinstance(spec, GlobInput):
        return _limited(len(store.glob(spec.pattern)), 0, spec.limit, f"files matching {spec.pattern}")
    assert isinstance(spec, ManifestInput)
    if spec.schema.format == "parquet" and not spec.path.endswith(".gz"):
        with store.open_read(spec.path) as raw:
            return _limited(pq.ParquetFile(raw).metadata.num_rows, 0, spec.limit, f"rows of {spec.path}")
    images = refused = 0
    with store.open_read(spec.path) as raw:
        for row in manifest.iter_rows(raw, spec.path, spec.schema, spec.limit, spec.max_metadata_bytes):
            if isinstance(row, Failure):
                refused += 1
            else:
                images += 1
    return Count(images, refused, f"rows of {spec.path}")


def _limited(total: int, refused: int, limit, how: str) -> Count:
    return Count(min(total, limit) if limit else total, refused, how + (f", at most --limit {limit}" if limit else ""))
