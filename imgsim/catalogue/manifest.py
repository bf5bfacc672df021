"""Manifest files: CSV, JSONL or Parquet listing an id and an image URL per row.

The id and URL columns are `id` and `url` unless `--id-column` and
`--url-column` name others (as img2dataset's `url_col` does). Every other column is metadata and is carried to the outputs. The metadata
schema must be known before the pipeline starts (Parquet sinks need it), so
``inspect`` reads the header (CSV), the footer (Parquet) or the keys of every
line (JSONL, which has no header). CSV and JSONL metadata is text: JSONL
values that are not strings are kept as their JSON text. Parquet metadata
keeps its column types. ``.gz`` files are decompressed on the fly.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
from typing import BinaryIO, Iterator, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.failures import STAGE_READ, Failure
from imgsim.records import EMBEDDING_COLUMNS, CatalogueRow

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
# Column names the outputs use themselves; a manifest's metadata may not bring its own.
RESERVED_COLUMNS = frozenset(EMBEDDING_COLUMNS) | {"row"}  # "row" numbers the index's ids.parquet


class ManifestError(ValueError):
    """The manifest cannot be used at all (a configuration error, not a bad row)."""


@dataclasses.dataclass(frozen=True)
class ManifestSchema:
    format: str
    metadata: pa.Schema  # the metadata columns, in input order
    id_column: str = "id"
    url_column: str = "url"

    @property
    def metadata_columns(self) -> tuple[str, ...]:
        return tuple(self.metadata.names)


def detect_format(path: str) -> Optional[str]:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in FORMATS.items():
        if name.endswith(ext):
            return fmt
    return None


def open_text_stream(raw: BinaryIO, path: str) -> BinaryIO:
    return gzip.GzipFile(fileobj=raw) if path.lower().endswith(".gz") else raw


def inspect(raw: BinaryIO, path: str, id_column: str = "id", url_column: str = "url") -> ManifestSchema:
    """The manifest's format and metadata schema; raises ManifestError when it is unusable."""
    fmt = detect_format(path)
    if fmt is None:
        raise ManifestError(f"{path}: unknown manifest format (use .csv, .jsonl or .parquet)")
    stream = open_text_stream(raw, path)
    try:
        if fmt == "csv":
            header = next(csv.reader(_text(stream)), None)
            if header is None:
                raise ManifestError(f"{path}: the CSV file is empty")
            columns = [c.strip() for c in header]
            fields = [pa.field(c, pa.string()) for c in columns]
        elif fmt == "jsonl":
            keys: dict[str, None] = {}
            for number, line in enumerate(_text(stream), 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a bad line is a bad row (reported when read), not a bad manifest
                    if isinstance(record, dict):
                        keys.update(dict.fromkeys(record))
            columns = list(keys)
            fields = [pa.field(c, pa.string()) for c in columns]
        else:
            try:
                schema = pq.ParquetFile(stream).schema_arrow
            except (pa.ArrowInvalid, OSError) as e:
                raise ManifestError(f"{path}: not a readable Parquet file ({e})") from None
            columns = list(schema.names)
            fields = [schema.field(c) for c in columns]
    except (UnicodeDecodeError, EOFError, OSError, csv.Error) as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e})") from None
    keys = (id_column, url_column)
    missing = [c for c in keys if c not in columns]
    if missing:
        raise ManifestError(
            f"{path}: the manifest needs columns {id_column!r} and {url_column!r}; it lacks "
            f"{', '.join(map(repr, missing))} (columns found: {', '.join(columns[:10]) or 'none'}; "
            "--id-column and --url-column name others)")
    clashes = sorted(c for c in columns if c in RESERVED_COLUMNS and c not in keys)
    if clashes:
        raise ManifestError(f"{path}: rename the column(s) {', '.join(clashes)}: the outputs use these names")
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise ManifestError(f"{path}: duplicate column(s) {', '.join(duplicates)}")
    metadata = pa.schema([f for f in fields if f.name not in keys])
    return ManifestSchema(fmt, metadata, id_column, url_column)


def iter_rows(raw: BinaryIO, path: str, schema: ManifestSchema,
              limit: Optional[int] = None) -> Iterator[Union[CatalogueRow, Failure]]:
    """Rows in input order (position = 0-based data row), at most `limit` of them."""
    stream = open_text_stream(raw, path)
    if schema.format == "csv":
        records = _csv_records(stream)
    elif schema.format == "jsonl":
        records = _jsonl_records(stream)
    else:
        records = _parquet_records(stream)
    for position, record in enumerate(records):
        if limit is not None and position >= limit:
            return
        if isinstance(record, str):  # a line that did not parse
            yield Failure(None, None, STAGE_READ, "invalid_record", f"row {position}: {record}")
            continue
        yield row_from_record(record, position, schema)


def row_from_record(record: dict, position: int, schema: ManifestSchema) -> Union[CatalogueRow, Failure]:
    row_id, url = _clean(record.get(schema.id_column)), _clean(record.get(schema.url_column))
    text_metadata = schema.format != "parquet"
    columns = schema.metadata_columns
    if row_id is None:
        return Failure(None, url, STAGE_READ, "missing_id", f"row {position} has no id")
    if url is None:
        return Failure(row_id, None, STAGE_READ, "missing_url", f"row {position} has no url")
    metadata = {c: (_as_text(record.get(c)) if text_metadata else record.get(c)) for c in columns}
    return CatalogueRow(id=row_id, url=url, metadata=metadata, position=position)


def _text(stream: BinaryIO):
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")


def _csv_records(stream) -> Iterator[Union[dict, str]]:
    reader = csv.reader(_text(stream))
    header = [c.strip() for c in next(reader, [])]
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield f"CSV error: {e}"
            continue
        if not any(v.strip() for v in values):
            continue  # blank line, not a row
        yield dict(zip(header, values))


def _jsonl_records(stream) -> Iterator[Union[dict, str]]:
    for number, line in enumerate(_text(stream), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            yield f"line {number}: not JSON ({e})"
            continue
        yield record if isinstance(record, dict) else f"line {number}: not a JSON object"


def _parquet_records(stream) -> Iterator[dict]:
    for batch in pq.ParquetFile(stream).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _clean(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _as_text(value) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
