"""The Cleveland Museum of Art Open Access API as an input collection.

The API pages with ``limit``/``skip`` and reports the match count in
``info.total``. One request with limit=1 gives the total; the page requests
that follow are independent, so the pipeline fetches them in parallel.
Records map to rows: id = accession_number, url = images.web.url, and a few
descriptive fields are kept as metadata, each normalised to its column
(imgsim.catalogue.values): the API's JSON is not held to its documented types,
and one odd record must fail alone, as `invalid_record`, never its page.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Union
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

import pyarrow as pa

from imgsim.catalogue.values import (DEFAULT_MAX_METADATA_BYTES, InvalidValue, key_text, normalise_metadata,
                                     read_failure)
from imgsim.failures import Failure
from imgsim.records import CatalogueRow

DEFAULT_API_URL = "https://openaccess-api.clevelandart.org/api/artworks/"
MAX_PAGE_SIZE = 1000  # the API's own cap on `limit`
MAX_RECORDS = 2_000_000  # the most records a run plans without --limit (the museum has ~69,000)

METADATA_SCHEMA = pa.schema([
    ("title", pa.string()),
    ("type", pa.string()),
    ("department", pa.string()),
    ("technique", pa.string()),
    ("creators", pa.list_(pa.string())),
    ("creation_date", pa.string()),
    ("creation_year", pa.int32()),  # creation_date_earliest: a number to filter ranges on (creation_date is text)
    ("record_url", pa.string()),  # the artwork's page on clevelandart.org (the record's `url`)
])


@dataclasses.dataclass(frozen=True)
class CmaQuery:
    api_url: str = DEFAULT_API_URL
    cc0: bool = False
    type: Optional[str] = None
    department: Optional[str] = None
    limit: Optional[int] = None
    page_size: int = MAX_PAGE_SIZE

    def __post_init__(self):
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")

    def page_url(self, skip: int, limit: int) -> str:
        params = {"has_image": "1", "limit": str(limit), "skip": str(skip)}
        if self.cc0:
            params["cc0"] = "1"
        if self.type:
            params["type"] = self.type
        if self.department:
            params["department"] = self.department
        parts = urlsplit(self.api_url)
        query = dict(parse_qsl(parts.query))
        query.update(params)
        return urlunsplit(parts._replace(query=urlencode(query)))

    def describe(self) -> dict:
        return {"kind": "cma", **{k: v for k, v in dataclasses.asdict(self).items() if v not in (None, False)}}


@dataclasses.dataclass(frozen=True)
class Page:
    skip: int
    limit: int


def plan_pages(total: int, query: CmaQuery) -> list[Page]:
    """The page requests covering min(total, query.limit) records. ValueError when the API reports
    more than MAX_RECORDS and no limit was given: a total the API got wrong (or was made to get
    wrong) would otherwise plan millions of requests (the museum has about 69,000 records)."""
    wanted = max(0, total) if query.limit is None else max(0, min(total, query.limit))
    if wanted > MAX_RECORDS:
        raise ValueError(f"the API reports {total:,} records, more than the {MAX_RECORDS:,} imgsim plans for "
                         "without --limit; pass --limit N to read the first N")
    return [Page(skip, min(query.page_size, wanted - skip)) for skip in range(0, wanted, query.page_size)]


def load_page(data: bytes) -> tuple[int, list]:
    """(info.total, data) of an API response body; ValueError when it is not one.

    Bytes that are not UTF-8 are kept as surrogate escapes rather than failing the page: like a
    "\\ud800" escape, they are replaced in metadata and fail only the record whose id holds one."""
    try:
        payload = json.loads(data.decode("utf-8", "surrogateescape"))
    except RecursionError:
        raise ValueError("the response is JSON nested too deeply") from None
    return parse_page(payload)


def parse_page(payload) -> tuple[int, list]:
    """(info.total, data) of an API response; ValueError when it is not one."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("the response is not an API page (no 'data' list)")
    info = payload.get("info") if isinstance(payload.get("info"), dict) else {}
    total = info.get("total")
    if not isinstance(total, int) or isinstance(total, bool):
        total = len(payload["data"])
    return total, payload["data"]


def record_to_row(record, position: int,
                  max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES) -> Union[CatalogueRow, Failure]:
    """One API record as a row, every value normalised to its column, or its read failure."""
    if not isinstance(record, dict):
        return read_failure("invalid_record", None, None, f"record {position} is not an object")
    accession = record.get("accession_number")
    raw_url = _get(record, "images", "web", "url")
    try:
        record_id, url = key_text(accession, "accession_number"), key_text(raw_url, "images.web.url")
    except InvalidValue as e:
        return read_failure("invalid_record", accession, raw_url, f"record {position}: {e}")
    if not record_id:
        return read_failure("missing_id", None, url,
                            f"record {position} (API id {record.get('id')!r}) has no accession_number")
    if not url:
        return read_failure("missing_url", record_id, None, "the record has no images.web.url")
    raw = {"title": record.get("title"), "type": record.get("type"), "department": record.get("department"),
           "technique": record.get("technique"), "creators": _creators(record.get("creators")),
           "creation_date": record.get("creation_date"), "creation_year": _year(record.get("creation_date_earliest")),
           "record_url": record.get("url")}
    try:
        metadata = normalise_metadata(raw, METADATA_SCHEMA, max_metadata_bytes)
    except InvalidValue as e:
        return read_failure("invalid_record", record_id, url, f"record {position}: {e}")
    return CatalogueRow(id=record_id, url=url, metadata=metadata, position=position)


def _get(record: dict, *keys: str) -> Any:
    value: Any = record
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _creators(value) -> list:
    """The creators' descriptions. The API sends a list of objects; a lone object or value is
    taken as a list of one, and a value in place of an object as its description."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    descriptions = [item.get("description") if isinstance(item, dict) else item for item in items]
    return [d for d in descriptions if d not in (None, "")]


def _year(value) -> Optional[int]:
    """A year the API gives as a number, or None (anything else: a string, a bool, out of int32)."""
    if type(value) is int and -(2 ** 31) < value < 2 ** 31:
        return value
    return None
