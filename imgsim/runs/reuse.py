"""Reusing earlier embeddings: incremental runs and restarts.

Two kinds of earlier rows can stand in for a download or an inference:
- the run LATEST points at (incremental mode): an item keeps its embedding
  when its URL is unchanged and the server says its bytes are unchanged (a
  conditional GET answered 304, or the same sha256), and the model signature
  matches;
- this run's own checkpoint, left by an interrupted attempt with the same
  --run-id: trusted outright, no request at all.
This module holds the decisions; transforms/reuse.py does the joining and
imgsim.fetch.acquire asks the server.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

from imgsim.records import Previous
from imgsim.runs.layout import RunLayout
from imgsim.runs.outputs import signature_of_file
from imgsim.storage import ObjectStore, join
from imgsim.thumbnails.packs import pack_files


@dataclasses.dataclass(frozen=True)
class ReuseSource:
    """Embedding files of an earlier run that may stand in for work."""

    files: tuple[str, ...]
    trusted: bool  # True: this run's checkpoint; False: LATEST's run, verified with the server
    description: str
    thumbnail_files: tuple[str, ...] = ()  # its thumbnail packs, copied for items whose bytes are unchanged

    def describe(self) -> dict:
        return {"files": len(self.files), "thumbnail_files": len(self.thumbnail_files), "trusted": self.trusted,
                "from": self.description}


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


def discover_sources(store: ObjectStore, layout: RunLayout, latest_run_id: Optional[str], signature,
                     full: bool, thumbnails: bool = False) -> tuple[list[ReuseSource], list[str]]:
    """The earlier embeddings this run may reuse (with their thumbnail packs, when thumbnails are
    made), and notes on what was not reused and why.

    Raises ValueError when this run's own checkpoint was made with another model."""
    sources, notes = [], []
    checkpoint = store.glob(join(layout.checkpoint_dir, "*.parquet"))
    if checkpoint:
        earlier = signature_of_file(store, checkpoint[0])
        if not earlier.matches(signature):
            raise ValueError(f"run {layout.run_id!r} was started with another model ("
                             + "; ".join(signature.differences(earlier))
                             + "): restart it with the same flags, or use a new --run-id")
        packs = tuple(pack_files(store, layout.checkpoint_thumbnails_dir)) if thumbnails else ()
        sources.append(ReuseSource(tuple(checkpoint), True, f"checkpoint of interrupted run {layout.run_id}",
                                   packs))
    if latest_run_id is not None and latest_run_id != layout.run_id:
        files = store.glob(join(RunLayout(layout.output, latest_run_id).embeddings_dir, "*.parquet"))
        if full:
            notes.append(f"--full: run {latest_run_id}'s embeddings are not reused")
        elif not files:
            notes.append(f"run {latest_run_id} has no embeddings files to reuse")
        else:
            earlier = signature_of_file(store, files[0])
            if earlier.matches(signature):
                earlier_run = RunLayout(layout.output, latest_run_id)
                packs = tuple(pack_files(store, earlier_run.thumbnails_dir)) if thumbnails else ()
                sources.append(ReuseSource(tuple(files), False, f"run {latest_run_id} (LATEST)", packs))
            else:
                notes.append(f"run {latest_run_id} used another model ("
                             + "; ".join(signature.differences(earlier)) + "): everything is embedded again")
    return sources, notes
