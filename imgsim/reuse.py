"""Reusing earlier embeddings: incremental runs and restarts.

Two kinds of earlier rows can stand in for a download or an inference:
- the run LATEST points at (incremental mode): an item keeps its embedding
  when its URL is unchanged and the server says its bytes are unchanged (a
  conditional GET answered 304, or the same sha256), and the model signature
  matches;
- this run's own checkpoint, left by an interrupted attempt with the same
  --run-id: trusted outright, no request at all.
This module holds the decisions; transforms/reuse.py does the joining.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

from imgsim.records import CatalogueRow, Previous

# How an embedding row came to be; counted in the summary.
NEW, CHANGED, REUSED, RESUMED = "new", "changed", "reused", "resumed"
ORIGIN = "_origin"  # a key on embedding row dicts; not a Parquet column


@dataclasses.dataclass(frozen=True)
class ReuseSource:
    """Embedding files of an earlier run that may stand in for work."""

    files: tuple[str, ...]
    trusted: bool  # True: this run's checkpoint; False: LATEST's run, verified with the server
    description: str

    def describe(self) -> dict:
        return {"files": len(self.files), "trusted": self.trusted, "from": self.description}


def previous_from_row(row: dict, trusted: bool) -> Previous:
    return Previous(url=row["url"], sha256=row["sha256"], etag=row.get("etag"),
                    last_modified=row.get("last_modified"), width=row["width"], height=row["height"],
                    embedding=row["embedding"], trusted=trusted)


def pick_previous(candidates: Iterable[Previous], url: str) -> Optional[Previous]:
    """The earlier row that may stand in for this item: same URL, the run's own checkpoint first."""
    same_url = [p for p in candidates if p.url == url]
    trusted = [p for p in same_url if p.trusted]
    return (trusted or same_url or [None])[0]


def conditional_headers(previous: Previous) -> dict:
    headers = {}
    if previous.etag:
        headers["If-None-Match"] = previous.etag
    if previous.last_modified:
        headers["If-Modified-Since"] = previous.last_modified
    return headers


def embedding_row(row: CatalogueRow, *, sha256: str, width: int, height: int, embedding,
                  etag: Optional[str], last_modified: Optional[str], origin: str) -> dict:
    """One row of the embeddings output (the Parquet sinks pick their columns; ORIGIN is counted)."""
    return {"id": row.id, "url": row.url, "sha256": sha256, "width": width, "height": height,
            "embedding": embedding, "etag": etag, "last_modified": last_modified, **row.metadata,
            ORIGIN: origin}


def reused_row(row: CatalogueRow, previous: Previous, origin: str, etag: Optional[str] = None,
               last_modified: Optional[str] = None) -> dict:
    """An embedding row from an earlier embedding and today's metadata (titles change, images may not)."""
    return embedding_row(row, sha256=previous.sha256, width=previous.width, height=previous.height,
                         embedding=previous.embedding, etag=etag or previous.etag,
                         last_modified=last_modified or previous.last_modified, origin=origin)


def discover_sources(store, layout, latest, signature, full: bool) -> tuple[list[ReuseSource], list[str]]:
    """The earlier embeddings this run may reuse, and notes on what was not reused and why.

    Raises ValueError when this run's own checkpoint was made with another model."""
    from imgsim.outputs import signature_of_file
    from imgsim.storage import join

    sources, notes = [], []
    checkpoint = store.glob(join(layout.run_dir, "checkpoint", "*.parquet"))
    if checkpoint:
        earlier = signature_of_file(store, checkpoint[0])
        if not earlier.matches(signature):
            raise ValueError(f"run {layout.run_id!r} was started with another model ("
                             + "; ".join(signature.differences(earlier))
                             + "): restart it with the same flags, or use a new --run-id")
        sources.append(ReuseSource(tuple(checkpoint), True, f"checkpoint of interrupted run {layout.run_id}"))
    if latest is not None and latest.run_id != layout.run_id:
        files = store.glob(join(layout.output, "runs", latest.run_id, "embeddings", "*.parquet"))
        if full:
            notes.append(f"--full: run {latest.run_id}'s embeddings are not reused")
        elif not files:
            notes.append(f"run {latest.run_id} has no embeddings files to reuse")
        else:
            earlier = signature_of_file(store, files[0])
            if earlier.matches(signature):
                sources.append(ReuseSource(tuple(files), False, f"run {latest.run_id} (LATEST)"))
            else:
                notes.append(f"run {latest.run_id} used another model ("
                             + "; ".join(signature.differences(earlier)) + "): everything is embedded again")
    return sources, notes
