"""Reading IIIF documents and walking a collection down to its manifests.

A document comes over HTTP through the pipeline's Fetcher (the same address guard, deadlines,
size cap and politeness as an image) or from storage (gs://, a local file). A collection is
walked breadth first, its members in order, at most MAX_DEPTH collections deep and MAX_MANIFESTS
manifests in all; a collection seen twice is read once. What cannot be read or parsed is told,
never raised past the caller: `walk` reports it as a `Problem` (the run fails that member's rows
with the reason, or the whole run when the root itself cannot be read).
"""
from __future__ import annotations

import dataclasses
import json
from collections import deque
from typing import Iterator, Optional, Union

from imgsim.catalogue.iiif import MAX_DEPTH, MAX_MANIFESTS, Collection, Manifest, parse
from imgsim.failures import Failure, StageError
from imgsim.fetch.http import Fetcher
from imgsim.storage import ObjectStore

Document = Union[Manifest, Collection]


@dataclasses.dataclass(frozen=True)
class Problem:
    """A member that could not be read: its URL, a stable reason code and the detail."""

    url: str
    reason: str
    detail: str


class DocumentError(ValueError):
    def __init__(self, url: str, reason: str, detail: str):
        super().__init__(f"{url}: {detail}")
        self.problem = Problem(url, reason, detail)


def read_document(location: str, fetcher: Optional[Fetcher], store: ObjectStore) -> Document:
    """The document at location, parsed; DocumentError (reason: a download reason, or
    invalid_record for one that is not JSON or not a IIIF manifest or collection)."""
    try:
        if location.startswith(("http://", "https://")):
            if fetcher is None:
                raise DocumentError(location, "unsupported_scheme", "no HTTP fetcher to read it with")
            data = fetcher.fetch(location, headers={"Accept": "application/ld+json, application/json"}).data
        else:
            data = store.read_bytes(location)
    except StageError as e:
        raise DocumentError(location, e.reason, str(e)) from None
    except (OSError, ValueError) as e:
        raise DocumentError(location, "read_error", f"cannot be read ({type(e).__name__}: {e})") from None
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DocumentError(location, "invalid_record", f"not JSON ({e})") from None
    try:
        return parse(document, location)
    except ValueError as e:
        raise DocumentError(location, "invalid_record", str(e).removeprefix(f"{location}: ")) from None


def walk(root: str, read, max_depth: int = MAX_DEPTH,
         max_manifests: int = MAX_MANIFESTS) -> Iterator[Union[str, Problem]]:
    """The manifest URLs under root (root itself if it is one), in collection order, or a Problem
    for each member that could not be read; read(url) -> Document raises DocumentError. The root's
    own error propagates: a run cannot know its collection without it."""
    first = read(root)
    if isinstance(first, Manifest):
        yield root
        return
    seen = {root}
    queue = deque([(first, 0)])
    found = 0
    while queue:
        collection, depth = queue.popleft()
        for member in collection.members:
            if member.kind == "Manifest":
                if found >= max_manifests:
                    yield Problem(member.id, "invalid_record",
                                  f"more than {max_manifests:,} manifests under {root}: the rest are not read")
                    return
                found += 1
                yield member.id
            elif member.id not in seen:
                seen.add(member.id)
                if depth + 1 > max_depth:
                    yield Problem(member.id, "invalid_record", f"a collection more than {max_depth} deep")
                    continue
                try:
                    child = read(member.id)
                except DocumentError as e:
                    yield e.problem
                    continue
                if isinstance(child, Manifest):  # listed as a collection, is a manifest
                    found += 1
                    yield member.id
                else:
                    queue.append((child, depth + 1))


def first_rows(root: str, fetcher: Optional[Fetcher], store: ObjectStore, most: int,
               max_metadata_bytes: int) -> Iterator:
    """The first `most` rows under root, in order, read here (int8 calibration, `imgsim plan`);
    members that cannot be read are skipped."""
    from imgsim.catalogue.iiif import manifest_rows

    def read(url: str) -> Document:
        return read_document(url, fetcher, store)

    given = 0
    for index, found in enumerate(walk(root, read)):
        if isinstance(found, Problem):
            continue
        try:
            document = read(found)
        except DocumentError:
            continue
        if not isinstance(document, Manifest):
            continue
        for row in manifest_rows(document, index << 24, max_metadata_bytes):
            if given >= most:
                return
            if not isinstance(row, Failure):
                given += 1
                yield row
