"""Getting one catalogue row's image, Beam-free: every decision in one function.

    acquire(row, fetcher, store, decode) -> Acquired(result=DecodedImage | Reused | Failure)

- where the bytes come from: the object store for glob inputs, HTTP otherwise
  (a manifest row naming a file path is refused by the fetcher's scheme check);
  a row with a IIIF Image API service is fetched at the size the model needs
  (imgsim.fetch.iiif_image), falling back to its own URL when the service fails;
- whether an earlier embedding stands in: a row carrying `previous` is fetched
  conditionally, and a 304 or identical bytes (same sha256) reuse the earlier
  vector, so the image skips decoding and inference;
- decoding and resizing for the model, and the thumbnail made from the
  resized image (imgsim.thumbnails.make: no second decode; a thumbnail that
  cannot be made leaves the row without one, never failed).
It never raises: every outcome a row can have is a value, so the Beam layer
(transforms/download.py) keeps only the thread pool, windows and metrics.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Callable, Optional, Union

from imgsim.embed.decode import DecodeConfig, decode_image
from imgsim.embed.memory import DecodeBudget
from imgsim.failures import STAGE_DECODE, STAGE_DOWNLOAD, Failure, StageError
from imgsim.fetch import iiif_image
from imgsim.fetch.http import Fetcher, check_size
from imgsim.records import REUSED, SOURCE_STORAGE, CatalogueRow, DecodedImage, EmbeddingRow, FetchedImage
from imgsim.runs.reuse import conditional_headers
from imgsim.storage import ObjectStore
from imgsim.thumbnails.make import make_thumbnail


@dataclasses.dataclass(frozen=True)
class Reused:
    """An earlier embedding stands in: the server answered 304 (`not_modified`) or sent the same bytes."""

    row: EmbeddingRow
    not_modified: bool


@dataclasses.dataclass(frozen=True)
class Acquired:
    """The outcome of one row, with what the metrics need."""

    result: Union[DecodedImage, Reused, Failure]
    bytes_fetched: Optional[int] = None  # None: nothing was downloaded
    download_seconds: float = 0.0
    decode_seconds: float = 0.0


def acquire(row: CatalogueRow, fetcher: Fetcher, store: ObjectStore, decode: DecodeConfig,
            budget: Optional[DecodeBudget] = None, clock: Callable[[], float] = time.monotonic,
            thumbnails: bool = False) -> Acquired:
    """Fetch, check for reuse, decode (within the process's decode budget, when given) and, with
    thumbnails, make the row's thumbnail. Never raises."""
    started = clock()
    fetched = fetch_row(row, fetcher, store, decode.resize)
    downloaded = clock()
    if not isinstance(fetched, FetchedImage):
        return Acquired(fetched, None, downloaded - started)
    result = decode_fetched(fetched, decode, budget, thumbnails)
    return Acquired(result, len(fetched.data), downloaded - started, clock() - downloaded)


def fetch_row(row: CatalogueRow, fetcher: Fetcher, store: ObjectStore,
              resize: Optional[str] = None) -> Union[FetchedImage, Reused, Failure]:
    """The row's bytes, an earlier embedding confirmed unchanged, or a download-stage Failure.
    resize: the decode's mode, for a IIIF derivative of the size the model needs (None: the
    row's own URL, whatever it is)."""
    etag = last_modified = None
    try:
        if row.source == SOURCE_STORAGE:
            data, status, attempts = read_storage(store, row.url, fetcher.config.max_bytes), None, 1
        else:
            headers = conditional_headers(row.previous) if row.previous else None
            derivative = iiif_derivative(row, fetcher, resize) if resize else None
            result = None
            if derivative is not None:
                try:
                    result = fetcher.fetch(derivative, headers=headers)
                except StageError:
                    result = None  # the service failed; the image's own URL may not
            if result is None:
                result = fetcher.fetch(row.url, headers=headers)
            data, status, attempts = result.data, result.status, result.attempts
            etag, last_modified = result.etag, result.last_modified
    except StageError as e:
        return Failure.of(row, STAGE_DOWNLOAD, e)
    except Exception as e:  # a bug or an unforeseen library error must still account for the row
        return Failure.of(row, STAGE_DOWNLOAD, StageError("internal_error", f"{type(e).__name__}: {e}"[:300]))
    sha256 = hashlib.sha256(data).hexdigest()
    if row.previous is not None and (status == 304 or sha256 == row.previous.sha256):
        return Reused(EmbeddingRow.from_previous(row, row.previous, REUSED, etag, last_modified),
                      not_modified=status == 304)
    if status == 304:  # a 304 we did not ask for
        return Failure.of(row, STAGE_DOWNLOAD, StageError("empty_body", "304 without a request for it", 304))
    return FetchedImage(row=row, data=data, sha256=sha256, http_status=status, attempts=attempts,
                        etag=etag, last_modified=last_modified)


def iiif_derivative(row: CatalogueRow, fetcher: Fetcher, resize: str) -> Optional[str]:
    """The derivative URL a row's Image API service offers for the model, or None: no service, or
    its info.json cannot be read or offers nothing smaller (the row's own URL is fetched)."""
    service = (row.metadata or {}).get("iiif_service") or iiif_image.service_of_url(row.url)
    if not service:
        return None
    try:
        info = iiif_image.parse_info(json.loads(fetcher.fetch(iiif_image.info_url(service)).data))
    except (StageError, ValueError):
        return None
    return iiif_image.derivative_url(info, resize)


def read_storage(store: ObjectStore, path: str, max_bytes: int) -> bytes:
    """A file of a glob input, under the same byte cap as downloads."""
    try:
        with store.open_read(path) as f:
            data = f.read(max_bytes + 1)
    except Exception as e:
        raise StageError("read_error", f"{type(e).__name__}: {e}"[:300]) from None
    check_size(len(data), max_bytes, "the file")
    if not data:
        raise StageError("empty_body", "the file is empty")
    return data


def decode_fetched(image: FetchedImage, config: DecodeConfig, budget: Optional[DecodeBudget] = None,
                   thumbnails: bool = False) -> Union[DecodedImage, Failure]:
    """A DecodedImage (with its thumbnail when asked and possible), or a decode-stage Failure;
    never raises."""
    try:
        decoded = decode_image(image.data, config, budget)
    except StageError as e:
        e.attempts = image.attempts
        e.http_status = e.http_status or image.http_status
        return Failure.of(image.row, STAGE_DECODE, e)
    except Exception as e:  # Pillow has many failure modes; none may cost the job
        return Failure.of(image.row, STAGE_DECODE, StageError(
            "internal_error", f"{type(e).__name__}: {e}"[:300], image.http_status, image.attempts))
    thumbnail = make_thumbnail(decoded.resized) if thumbnails and decoded.resized is not None else None
    return DecodedImage(row=image.row, sha256=image.sha256, width=decoded.width, height=decoded.height,
                        pixels=decoded.pixels, etag=image.etag, last_modified=image.last_modified,
                        thumbnail=thumbnail)
