"""The Parquet contract of a run's outputs: schemas, and reading embeddings back.

Embeddings: id, url, sha256 (of the downloaded bytes), width, height (full
resolution, as displayed), embedding (fixed-size float32 list, unit length),
etag and last_modified (the server's validators, for the next incremental
run), then the input's metadata columns. The model signature rides in each file's
key-value metadata. Failures: id, url, stage, reason, detail, http_status,
attempts.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.embed.signature import PARQUET_METADATA_KEY, ModelSignature
from imgsim.storage import ObjectStore

FORMAT_VERSION_KEY = b"imgsim.format_version"
FORMAT_VERSION = b"1"

FAILURES_SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("url", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
    pa.field("http_status", pa.int32()),
    pa.field("attempts", pa.int32()),
])


def embeddings_schema(signature: ModelSignature, metadata: pa.Schema) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("embedding", pa.list_(pa.float32(), signature.dim), nullable=False),
        pa.field("etag", pa.string()),
        pa.field("last_modified", pa.string()),
    ]
    fields += list(metadata)
    return pa.schema(fields, metadata={PARQUET_METADATA_KEY: signature.to_json().encode(),
                                       FORMAT_VERSION_KEY: FORMAT_VERSION})


def signature_of(schema: pa.Schema) -> ModelSignature:
    raw = (schema.metadata or {}).get(PARQUET_METADATA_KEY)
    if raw is None:
        raise ValueError("not an imgsim embeddings file: no model signature in its metadata")
    return ModelSignature.from_json(raw)


def signature_of_file(store: ObjectStore, path: str) -> ModelSignature:
    """The model signature of one embeddings file, reading only its footer."""
    with store.open_read(path) as f:
        return signature_of(pq.read_schema(f))


def read_tables(paths: Iterable[str], store: ObjectStore) -> list[pa.Table]:
    tables = []
    for path in paths:
        with store.open_read(path) as f:
            tables.append(pq.read_table(f))
    return tables


def vectors(table: pa.Table) -> np.ndarray:
    """The embedding column as a contiguous float32 (n, dim) matrix, without a Python loop."""
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), dim).astype(np.float32, copy=False)
