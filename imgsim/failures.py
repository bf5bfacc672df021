"""Failure records and their stable reason codes.

Every input row ends in exactly one of two outputs: an embedding or a failure.
A failure names the stage that gave up and one reason code from the list
below. The codes are part of the output contract (README lists them), so
dashboards and reprocessing jobs can filter on them; add codes, never rename.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

# Stages, in pipeline order.
STAGE_READ = "read"
STAGE_DOWNLOAD = "download"
STAGE_DECODE = "decode"
STAGE_EMBED = "embed"

# reason code -> one-line meaning (README's table is generated from the same words).
REASONS = {
    # read
    "missing_id": "the input row has no id",
    "missing_url": "the input row has no image URL",
    "invalid_record": "the input row could not be parsed",
    "duplicate_id": "another row with the same id came first in the input; that one is processed",
    # download
    "invalid_url": "the URL is empty or malformed",
    "unsupported_scheme": "only http and https URLs are fetched",
    "blocked_address": "the host resolves to a loopback, private, link-local or multicast address",
    "robots_disallowed": "robots.txt forbids fetching the URL (--respect-robots)",
    "dns_error": "the host name does not resolve",
    "connection_error": "the connection failed or was reset, after retries",
    "timeout": "connect or read timed out, after retries",
    "deadline_exceeded": "the download took longer than the overall deadline",
    "too_many_redirects": "the redirect chain was too long or looped",
    "http_not_found": "the server answered 404 or 410",
    "http_client_error": "the server answered another 4xx status",
    "http_rate_limited": "the server kept answering 429, after retries",
    "http_server_error": "the server kept answering 5xx, after retries",
    "too_large": "the body exceeded the byte cap",
    "empty_body": "the server sent no bytes",
    "read_error": "the file could not be read from storage",
    "protocol_error": "the server's response broke HTTP, e.g. a malformed header",
    # decode
    "not_an_image": "the bytes are not an image format Pillow reads (e.g. an HTML page)",
    "corrupt_image": "the image is truncated or damaged",
    "decompression_bomb": "the image has more pixels than --max-image-pixels",
    # embed
    "inference_error": "the model raised an error on the batch holding this image",
    "degenerate_embedding": "the embedding is all zeros or not finite and cannot be normalised",
    # any stage
    "internal_error": "an unexpected error inside imgsim (a bug: please report it with the detail)",
}


@dataclasses.dataclass(frozen=True)
class Failure:
    """One input row that did not become an embedding."""

    id: Optional[str]
    url: Optional[str]
    stage: str
    reason: str
    detail: str = ""
    http_status: Optional[int] = None
    attempts: int = 0

    def __post_init__(self):
        if self.reason not in REASONS:
            raise ValueError(f"unknown failure reason {self.reason!r}")

    def as_row(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, row, stage: str, error: "StageError") -> "Failure":
        """The failure of a row (anything with `id` and `url`) at a stage, from the StageError raised."""
        return cls(id=row.id, url=row.url, stage=stage, reason=error.reason, detail=error.detail,
                   http_status=error.http_status, attempts=error.attempts)


class StageError(Exception):
    """Raised by pure stage logic (fetch, decode); the Beam layer turns it into a Failure."""

    def __init__(self, reason: str, detail: str = "", http_status: Optional[int] = None,
                 attempts: int = 0):
        if reason not in REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.http_status = http_status
        self.attempts = attempts
