"""Exporting an index's items for a managed vector search service.

Vertex AI Vector Search imports a directory of JSON Lines files (`.json`, at
most 5,000 files directly under the directory), one datapoint per line:

    {"id": "1915.534", "embedding": [0.0123, ...], "restricts": [{"namespace": "type", "allow": ["Painting"]}]}

Each chosen metadata column becomes a restrict namespace (token filtering):
a text value is one token, a list column (creators) one token per element,
numbers and booleans their JSON text; an empty value leaves the namespace
out, as Vertex expects for "no value". Vectors are the index's own unit
vectors as float32 values, so a dot-product (or cosine) index there ranks as
this one does. Items are read a batch at a time (a sharded index one shard
at a time), so exporting needs no more memory than querying.
"""
from __future__ import annotations

import json
import math
from typing import Optional, Sequence

from imgsim.storage import ObjectStore, join

FORMATS = ("vertex",)
VERTEX_MAX_FILES = 5000


def vertex_record(item_id: str, vector, restricts: dict) -> dict:
    """One datapoint of Vertex AI Vector Search's JSON input format."""
    record = {"id": item_id, "embedding": [float(x) for x in vector]}
    namespaces = []
    for namespace, value in restricts.items():
        tokens = _tokens(value)
        if tokens:
            namespaces.append({"namespace": namespace, "allow": tokens})
    if namespaces:
        record["restricts"] = namespaces
    return record


def _tokens(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tokens(v)]
    if isinstance(value, str):
        return [value] if value else []
    return [json.dumps(value, ensure_ascii=False, default=str)]


def export_vertex(index, store: ObjectStore, output: str, restricts: Sequence[str] = (),
                  rows_per_file: int = 100_000) -> dict:
    """Write output/part-NNNNN.json for every item of an ImageIndex; returns what was written."""
    unknown = [c for c in restricts if c not in index.metadata_columns]
    if unknown:
        raise ValueError(f"--restricts names {', '.join(unknown)}, not columns of the index (it has "
                         f"{', '.join(index.metadata_columns)})")
    files = math.ceil(len(index) / rows_per_file)
    if files > VERTEX_MAX_FILES:
        raise ValueError(f"{len(index):,} items at --rows-per-file {rows_per_file:,} make {files:,} files; Vertex "
                         f"imports at most {VERTEX_MAX_FILES:,} from one directory: raise --rows-per-file")
    written, lines, part, count = [], [], 0, 0

    def flush():
        nonlocal lines, part
        path = join(output, f"part-{part:05d}.json")
        store.write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"), content_type="application/json")
        written.append(path)
        lines, part = [], part + 1

    for table, vectors in index.batches(list(restricts)):
        ids = table.column("id").to_pylist()
        columns = {name: table.column(name).to_pylist() for name in restricts}
        for row, item_id in enumerate(ids):
            record = vertex_record(item_id, vectors[row], {name: values[row] for name, values in columns.items()})
            lines.append(json.dumps(record, ensure_ascii=False))
            count += 1
            if len(lines) == rows_per_file:
                flush()
    if lines:
        flush()
    return {"format": "vertex", "output": output, "items": count, "files": len(written),
            "dimension": index.signature.dim, "restricts": list(restricts),
            "distance": "DOT_PRODUCT_DISTANCE on unit vectors (cosine)"}


def parse_columns(text: Optional[str]) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]
