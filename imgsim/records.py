"""The row types that flow between pipeline stages.

Plain frozen dataclasses: cheap to pickle between Beam workers, and usable
without Beam in tests and in the consumer library.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

# Where a row's bytes come from. Only the glob input may read storage paths;
# a manifest row asking for file:// is refused by the downloader.
SOURCE_HTTP = "http"
SOURCE_STORAGE = "storage"


@dataclasses.dataclass(frozen=True)
class Previous:
    """What an earlier run knew about an item: enough to skip its download or its inference."""

    url: str
    sha256: str
    etag: Optional[str]
    last_modified: Optional[str]
    width: int
    height: int
    embedding: Any  # numpy float32 vector
    trusted: bool  # from this run's own checkpoint: reuse without asking the server


@dataclasses.dataclass(frozen=True)
class CatalogueRow:
    """One item of the input collection."""

    id: str
    url: str
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Position in the input, used to keep the first of duplicate ids and to apply --limit.
    position: int = 0
    source: str = SOURCE_HTTP
    previous: Optional[Previous] = None  # an earlier embedding that may stand in (same URL)
    known: bool = False  # an earlier run had this id: if embedded again, it "changed"


@dataclasses.dataclass(frozen=True)
class FetchedImage:
    """A row whose bytes were downloaded."""

    row: CatalogueRow
    data: bytes
    sha256: str
    http_status: Optional[int]
    attempts: int
    etag: Optional[str] = None
    last_modified: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """A row whose image was decoded and resized, ready for the model."""

    row: CatalogueRow
    sha256: str
    width: int
    height: int
    pixels: Any  # numpy uint8 array (224, 224, 3), RGB
    etag: Optional[str] = None
    last_modified: Optional[str] = None
