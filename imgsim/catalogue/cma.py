"""The Cleveland Museum of Art Open Access API as an input collection.

The API pages with ``limit``/``skip`` and reports the match count in
``info.total``. One request with limit=1 gives the total; the page requests
that follow are independent, so the pipeline fetches them in parallel.
Records map to rows: id = accession_number, url = images.web.url, and a few
descriptive fields are kept as metadata.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

import pyarrow as pa

from imgsim.failures import STAGE_READ, Failure
from imgsim.records import CatalogueRow

DEFAULT_API_URL = "https://openaccess-api.clevelandart.org/api/artworks/"
MAX_PAGE_SIZE = 1000  # the API's own cap on `limit`

METADATA_SCHEMA = pa.schema([
    ("title", pa.string()),
    ("type", pa.string()),
    ("department", pa.string()),
    ("technique", pa.string()),
    ("creators", pa.list_(pa.string())),
    ("creation_date", pa.string()),
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
    """The page requests covering min(total, query.limit) records."""
    wanted = total if query.limit is None else min(total, query.limit)
    return [Page(skip, min(query.page_size, wanted - skip)) for skip in range(0, wanted, query.page_size)]


def parse_page(payload) -> tuple[int, list]:
    """(info.total, data) of an API response; ValueError when it is not one."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("the response is not an API page (no 'data' list)")
    info = payload.get("info") or {}
    total = info.get("total")
    if not isinstance(total, int):
        total = len(payload["data"])
    return total, payload["data"]


def record_to_row(record, position: int) -> Union[CatalogueRow, Failure]:
    if not isinstance(record, dict):
        return Failure(None, None, STAGE_READ, "invalid_record", f"record {position} is not an object")
    accession = record.get("accession_number")
    record_id = str(accession).strip() if accession not in (None, "") else None
    web = ((record.get("images") or {}).get("web") or {}) if isinstance(record.get("images"), dict) else {}
    url = web.get("url") if isinstance(web, dict) else None
    if not record_id:
        return Failure(None, url, STAGE_READ, "missing_id",
                       f"record {position} (API id {record.get('id')}) has no accession_number")
    if not url:
        return Failure(record_id, None, STAGE_READ, "missing_url", "the record has no images.web.url")
    creators = [c.get("description") for c in record.get("creators") or []
                if isinstance(c, dict) and c.get("description")]
    metadata = {
        "title": _text(record.get("title")),
        "type": _text(record.get("type")),
        "department": _text(record.get("department")),
        "technique": _text(record.get("technique")),
        "creators": creators,
        "creation_date": _text(record.get("creation_date")),
        "record_url": _text(record.get("url")),
    }
    return CatalogueRow(id=record_id, url=url, metadata=metadata, position=position)


def _text(value) -> Optional[str]:
    return None if value is None else str(value)
