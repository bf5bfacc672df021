"""The row types that flow between pipeline stages.

Plain frozen dataclasses: cheap to pickle between Beam workers, and usable
without Beam in tests and in the consumer library. A row becomes a dict only
at a sink (`EmbeddingRow.to_dict`, `Failure.as_row`), so no stage relies on
keys that a sink happens to ignore.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    from imgsim.thumbnails.make import Thumbnail

# Where a row's bytes come from. Only the glob input may read storage paths;
# a manifest row asking for file:// is refused by the downloader.
SOURCE_HTTP = "http"
SOURCE_STORAGE = "storage"

# How an embedding row came to be; counted in the run summary.
NEW = "new"  # an id no earlier run had, embedded now
CHANGED = "changed"  # an id LATEST's run had, whose URL or bytes changed: embedded again
REUSED = "reused"  # LATEST's embedding, after the server said the bytes are unchanged
RESUMED = "resumed"  # this run's own checkpoint (a restart), trusted without a request
ORIGINS = (NEW, CHANGED, REUSED, RESUMED)

# The embeddings output's own columns, in order; the input's metadata columns follow.
EMBEDDING_COLUMNS = ("id", "url", "sha256", "width", "height", "embedding", "etag", "last_modified")


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
    thumbnail: Optional["Thumbnail"] = None  # the earlier run's thumbnail of the same bytes, if any


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
    thumbnail: Optional["Thumbnail"] = None  # None: --no-thumbnails, or it could not be made


@dataclasses.dataclass(frozen=True)
class EmbeddingRow:
    """One row of the embeddings output, and how it came to be (`origin`, one of ORIGINS)."""

    id: str
    url: str
    sha256: str
    width: int
    height: int
    embedding: Any  # numpy float32 unit vector
    etag: Optional[str]
    last_modified: Optional[str]
    metadata: Mapping[str, Any]
    origin: str
    # Written to the thumbnail packs (imgsim.thumbnails.packs), not to the embeddings files.
    thumbnail: Optional["Thumbnail"] = None

    def __post_init__(self):
        if self.origin not in ORIGINS:
            raise ValueError(f"unknown origin {self.origin!r}")

    def to_dict(self) -> dict:
        """The Parquet row: the embeddings columns, then the metadata columns (origin is not stored;
        the thumbnail goes to the thumbnail packs)."""
        return {"id": self.id, "url": self.url, "sha256": self.sha256, "width": self.width,
                "height": self.height, "embedding": self.embedding, "etag": self.etag,
                "last_modified": self.last_modified, **self.metadata}

    @classmethod
    def computed(cls, image: DecodedImage, embedding) -> "EmbeddingRow":
        """A row embedded in this run: new, or changed when an earlier run had the id."""
        return cls(id=image.row.id, url=image.row.url, sha256=image.sha256, width=image.width,
                   height=image.height, embedding=embedding, etag=image.etag,
                   last_modified=image.last_modified, metadata=image.row.metadata,
                   origin=CHANGED if image.row.known else NEW, thumbnail=image.thumbnail)

    @classmethod
    def from_previous(cls, row: CatalogueRow, previous: Previous, origin: str, etag: Optional[str] = None,
                      last_modified: Optional[str] = None) -> "EmbeddingRow":
        """An earlier embedding with today's metadata (titles change, images may not), and the
        earlier thumbnail of the same bytes."""
        return cls(id=row.id, url=row.url, sha256=previous.sha256, width=previous.width,
                   height=previous.height, embedding=previous.embedding, etag=etag or previous.etag,
                   last_modified=last_modified or previous.last_modified, metadata=row.metadata,
                   origin=origin, thumbnail=previous.thumbnail)
