"""Thumbnail packs: a run's thumbnails as a few Parquet files, not a million tiny objects.

    OUT/runs/RUN_ID/thumbnails/{embedded,reused,resumed}-*.parquet
        id (string), sha256 (of the original bytes), format ("webp"), width, height (int32,
        the thumbnail's), thumbnail (binary)

Object stores charge per object and list slowly past millions of them, so
thumbnails are packed: the run's Parquet sink writes thousands per file, in row
groups of about ROW_GROUP_BYTES, so that a reader after a few ids reads a few
megabytes rather than whole files. `sha256` ties a thumbnail to the bytes it
was made from: an incremental run copies an earlier thumbnail only for an
item whose bytes are unchanged, and readers pair thumbnails with index rows
by (id, sha256), so a stale thumbnail is never shown for a changed image.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.storage import ObjectStore, join
from imgsim.thumbnails.make import Thumbnail

THUMBNAILS_DIR = "thumbnails"
ROW_GROUP_BYTES = 8 * 1024 * 1024

SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("sha256", pa.string()),
    pa.field("format", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("thumbnail", pa.binary()),
])


def pack_row(item_id: str, sha256: str, thumbnail: Thumbnail) -> dict:
    """One row of a thumbnail pack."""
    return {"id": item_id, "sha256": sha256, "format": thumbnail.format, "width": thumbnail.width,
            "height": thumbnail.height, "thumbnail": thumbnail.data}


def from_pack_row(row: dict) -> Thumbnail:
    return Thumbnail(data=row["thumbnail"], width=row["width"], height=row["height"], format=row["format"])


def pack_files(store: ObjectStore, directory: str) -> list[str]:
    """The pack files under a run's (or a checkpoint's) thumbnails directory."""
    return store.glob(join(directory, "*.parquet"))


def read_packs(store: ObjectStore, paths: Iterable[str]) -> Iterator[tuple[str, str, Thumbnail]]:
    """(id, sha256, Thumbnail) for every row of the packs, a row group at a time."""
    for path in paths:
        with store.open_read(path) as f:
            reader = pq.ParquetFile(f)
            for group in range(reader.num_row_groups):
                for row in reader.read_row_group(group).to_pylist():
                    if row["thumbnail"]:
                        yield row["id"], row["sha256"], from_pack_row(row)


def thumbnails_for(store: ObjectStore, paths: Iterable[str], wanted: dict[str, str]) -> dict[str, Thumbnail]:
    """The thumbnails of the ids in wanted ({id: sha256}) whose sha256 matches; others are left out."""
    found: dict[str, Thumbnail] = {}
    for item_id, sha256, thumbnail in read_packs(store, paths):
        if wanted.get(item_id) == sha256 and item_id not in found:
            found[item_id] = thumbnail
    return found


def pick(candidates: Iterable[tuple[str, Thumbnail]], sha256: Optional[str]) -> Optional[Thumbnail]:
    """Of an item's earlier thumbnails ((sha256, Thumbnail) pairs), the one made from these bytes."""
    if sha256 is None:
        return None
    return next((thumbnail for made_from, thumbnail in candidates if made_from == sha256), None)
