"""Manifest files: CSV, JSONL or Parquet listing an id and an image URL per row.

The id and URL columns are `id` and `url` unless `--id-column` and
`--url-column` name others (as img2dataset's `url_col` does). Every other column is metadata and is carried to the outputs. The metadata
schema must be known before the pipeline starts (Parquet sinks need it), so
``inspect`` reads the header (CSV), the footer (Parquet) or the keys of every
line (JSONL, which has no header). CSV and JSONL metadata is text: JSONL
values that are not strings are kept as their JSON text. Parquet metadata
keeps its column types. ``.gz`` files are decompressed on the fly.

A bad record is a bad row, never a failed job: CSV and JSONL are read as bounded lines
(imgsim.catalogue.streams), so a line that is not UTF-8, is too long, or does not parse becomes
an `invalid_record` failure naming its line and, where it can be read, its id; every value is
normalised to its column (imgsim.catalogue.values) before a row exists. A compressed manifest
that turns out damaged mid-read raises `DamagedFileError`: a run over part of its input would
publish an index that silently lacks the rest.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import zlib
from typing import Any, BinaryIO, Iterator, NamedTuple, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.catalogue.streams import GZIP_ERRORS, Line, bounded_lines, damaged, decompressed
from imgsim.catalogue.values import (DEFAULT_MAX_METADATA_BYTES, InvalidValue, MetadataNormaliser, escaped,
                                     is_valid_text, key_text, read_failure)
from imgsim.failures import Failure
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


def inspect(raw: BinaryIO, path: str, id_column: str = "id", url_column: str = "url",
            max_line_bytes: int = DEFAULT_MAX_METADATA_BYTES) -> ManifestSchema:
    """The manifest's format and metadata schema; raises ManifestError when it is unusable."""
    fmt = detect_format(path)
    if fmt is None:
        raise ManifestError(f"{path}: unknown manifest format (use .csv, .jsonl or .parquet)")
    stream = decompressed(raw, path)
    try:
        if fmt == "csv":
            header = next(_csv_parse(bounded_lines(stream, max_line_bytes)), None)
            if header is None:
                raise ManifestError(f"{path}: the CSV file is empty")
            if header.problem and "\r" in header.first.text.rstrip("\r\n"):
                raise ManifestError(f"{path}: its lines end with a carriage return alone (\\r): save it with \\n "
                                    "or \\r\\n line endings")
            if header.problem:
                raise ManifestError(f"{path}: the header ({header.where}) cannot be read: {escaped(header.problem)}")
            columns = [c.strip() for c in header.values]
            fields = [pa.field(c, pa.string()) for c in columns]
        elif fmt == "jsonl":
            keys: dict[str, None] = {}
            for record in _jsonl_records(bounded_lines(stream, max_line_bytes)):
                if record.values is not None:  # a bad line is a bad row (reported when read), not a bad manifest
                    keys.update(dict.fromkeys(k for k in record.values if is_valid_text(k)))
            columns = list(keys)
            fields = [pa.field(c, pa.string()) for c in columns]
        else:
            try:
                schema = pq.ParquetFile(stream).schema_arrow
            except (pa.ArrowInvalid, OSError) as e:
                raise ManifestError(f"{path}: not a readable Parquet file ({e})") from None
            columns = list(schema.names)
            fields = [schema.field(c) for c in columns]
    except (UnicodeDecodeError, EOFError, OSError, zlib.error, csv.Error) as e:
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


def iter_rows(raw: BinaryIO, path: str, schema: ManifestSchema, limit: Optional[int] = None,
              max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES) -> Iterator[Union[CatalogueRow, Failure]]:
    """Rows in input order (position = 0-based data row), at most `limit` of them.

    max_metadata_bytes caps each metadata value and, for CSV and JSONL, each line. Raises
    DamagedFileError when a compressed manifest ends or breaks before its end."""
    stream = decompressed(raw, path)
    if schema.format == "csv":
        records = _csv_records(bounded_lines(stream, max_metadata_bytes), schema, path)
    elif schema.format == "jsonl":
        records = _jsonl_records(bounded_lines(stream, max_metadata_bytes), schema)
    else:
        records = _parquet_records(stream, schema)
    normalise = MetadataNormaliser(schema.metadata, max_metadata_bytes)
    try:
        for position, record in enumerate(records):
            if limit is not None and position >= limit:
                return
            where = f"row {position}" + (f" ({record.where})" if record.where else "")
            if record.values is None:
                yield read_failure("invalid_record", record.raw_id, record.raw_url, f"{where}: {record.problem}")
            else:
                yield _row(record.values, position, schema, normalise, where)
    except GZIP_ERRORS as e:
        raise damaged(path, e) from None


def row_from_record(record: dict, position: int, schema: ManifestSchema,
                    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
                    where: Optional[str] = None) -> Union[CatalogueRow, Failure]:
    """One parsed record as a row with every value normalised to its column, or its read failure."""
    return _row(record, position, schema, MetadataNormaliser(schema.metadata, max_metadata_bytes),
                where or f"row {position}")


def _row(record: dict, position: int, schema: ManifestSchema, normalise: MetadataNormaliser,
         where: str) -> Union[CatalogueRow, Failure]:
    raw_id, raw_url = record.get(schema.id_column), record.get(schema.url_column)
    try:
        row_id, url = key_text(raw_id, "id"), key_text(raw_url, "url")
    except InvalidValue as e:
        return read_failure("invalid_record", raw_id, raw_url, f"{where}: {e}")
    if row_id is None:
        return read_failure("missing_id", None, url, f"{where} has no id")
    if url is None:
        return read_failure("missing_url", row_id, None, f"{where} has no url")
    try:
        metadata = normalise(record)
    except InvalidValue as e:
        return read_failure("invalid_record", row_id, url, f"{where}: {e}")
    return CatalogueRow(id=row_id, url=url, metadata=metadata, position=position)


class _Record(NamedTuple):
    """What a format reader yields: the parsed record, or why there is none."""

    values: Optional[dict]
    where: str = ""  # "line 7", "lines 7-9"
    problem: str = ""
    raw_id: Any = None  # the id and URL of an unparsed record, when they could be read
    raw_url: Any = None


# --- CSV ---------------------------------------------------------------------------------------

class _CsvRecord(NamedTuple):
    values: Optional[list]  # None when the csv module refused the record
    first: Line
    last: Line
    problem: str = ""

    @property
    def where(self) -> str:
        return f"line {self.first.number}" if self.first is self.last else \
            f"lines {self.first.number}-{self.last.number}"


class _Feed:
    """The lines csv.reader pulls, one record at a time: which lines the record took, and the first
    problem among them. csv still parses a bad line (a line that is not UTF-8 as its escaped text;
    a line over the cap as a stand-in with the same quote parity), so records end where they end."""

    def __init__(self, lines: Iterator[Line]):
        self._lines = lines
        self.start()

    def start(self) -> None:
        self.first = self.last = None
        self.quotes = 0
        self.problem = ""
        self.problem_line: Optional[Line] = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self._take(line)
        if line.problem and not self.problem:
            self.problem, self.problem_line = line.problem, line
        if not line.whole:  # over the cap: only its head is here
            return '"' * (line.quotes % 2) + "\n"
        return line.text

    def _take(self, line: Line) -> None:
        if self.first is None:
            self.first = line
        self.last = line
        self.quotes += line.quotes

    def close_open_quote(self) -> None:
        """After the csv module gave up on a record: the lines up to where its open quote closes
        belong to it, rather than becoming records of their own."""
        while self.quotes % 2:
            line = next(self._lines, None)
            if line is None:
                return
            self._take(line)


def _csv_parse(lines: Iterator[Line]) -> Iterator[_CsvRecord]:
    feed = _Feed(lines)
    reader = csv.reader(feed)
    while True:
        feed.start()
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a field over the csv module's own size limit
            feed.close_open_quote()
            yield _CsvRecord(None, feed.first, feed.last, f"not valid CSV ({e})")
            continue
        problem = feed.problem
        if problem and feed.first is not feed.last:
            problem = f"line {feed.problem_line.number}: {problem}"
        yield _CsvRecord(values, feed.first, feed.last, problem)


def _csv_records(lines: Iterator[Line], schema: ManifestSchema, path: str) -> Iterator[_Record]:
    records = _csv_parse(lines)
    header = next(records, None)
    if header is None:
        return
    if header.problem or header.values is None:
        raise ManifestError(f"{path}: the header ({header.where}) cannot be read: {escaped(header.problem)}")
    columns = [c.strip() for c in header.values]
    id_index, url_index = (columns.index(c) if c in columns else len(columns)
                           for c in (schema.id_column, schema.url_column))
    for record in records:
        if record.problem:
            yield _Record(None, record.where, record.problem, _csv_field(record, id_index),
                          _csv_field(record, url_index))
        elif "".join(record.values).strip():  # a blank line is not a row
            yield _Record(dict(zip(columns, record.values)), record.where)


def _csv_field(record: _CsvRecord, index: int) -> Optional[str]:
    """A field (the id, the URL) of a record that could not be read, when it can be: from the
    fields csv parsed (a line that is not UTF-8 as its escaped text), or else from the start of
    its first line (a line over the cap, a record csv refused)."""
    first = record.first
    if record.values is not None and first.whole:
        return record.values[index] if index < len(record.values) else None
    text, cut = first.text, not first.whole or record.last is not first
    limit = csv.field_size_limit() - 1  # read, never set: a longer prefix would fail as the record did
    if len(text) > limit:
        text, cut = text[:limit], True
    try:
        fields = next(csv.reader([text]), [])
    except csv.Error:
        return None
    usable = len(fields) - 1 if cut else len(fields)  # a cut line's last field may be cut too
    return fields[index] if index < usable else None


# --- JSONL -------------------------------------------------------------------------------------

def _jsonl_records(lines: Iterator[Line], schema: Optional[ManifestSchema] = None) -> Iterator[_Record]:
    for line in lines:
        where = f"line {line.number}"
        if line.problem:
            yield _Record(None, where, line.problem, *_json_keys(line, schema))
            continue
        if not line.text.strip():
            continue
        try:
            record = json.loads(line.text)
        except RecursionError:
            yield _Record(None, where, "JSON nested too deeply")
            continue
        except ValueError as e:
            yield _Record(None, where, f"not JSON ({e})")
            continue
        if not isinstance(record, dict):
            yield _Record(None, where, "not a JSON object")
            continue
        unnamed = [key for key in record if not is_valid_text(key)]
        if unnamed:  # no column can hold it
            yield _Record(None, where, f"the key {escaped(unnamed[0])!r} is not valid Unicode",
                          *_keys_of(record, schema))
        else:
            yield _Record(record, where)


def _json_keys(line: Line, schema: Optional[ManifestSchema]) -> tuple[Any, Any]:
    """The id and URL of a line that is not UTF-8, when the rest of it parses (an over-long line,
    only its head at hand, does not)."""
    try:
        record = json.loads(line.text) if line.whole else None
    except (ValueError, RecursionError):
        record = None
    return _keys_of(record, schema)


def _keys_of(record: Any, schema: Optional[ManifestSchema]) -> tuple[Any, Any]:
    if schema is None or not isinstance(record, dict):
        return None, None
    return record.get(schema.id_column), record.get(schema.url_column)


# --- Parquet -----------------------------------------------------------------------------------

def _parquet_records(stream: BinaryIO, schema: ManifestSchema) -> Iterator[_Record]:
    for batch in pq.ParquetFile(stream).iter_batches(batch_size=4096):
        try:
            rows = batch.to_pylist()
        except UnicodeDecodeError:  # a string column holding bytes that are not UTF-8: find the rows
            rows = [_parquet_row(batch, i, schema) for i in range(batch.num_rows)]
        for row in rows:
            yield row if isinstance(row, _Record) else _Record(row)


def _parquet_row(batch: pa.RecordBatch, i: int, schema: ManifestSchema) -> Union[dict, _Record]:
    try:
        return batch.slice(i, 1).to_pylist()[0]
    except UnicodeDecodeError:
        pass
    bad = [name for name, column in zip(batch.schema.names, batch.columns) if not _decodes(column[i])]
    return _Record(None, "", f"column(s) {', '.join(map(repr, bad))} hold text that is not valid UTF-8",
                   _raw(batch, schema.id_column, i), _raw(batch, schema.url_column, i))


def _raw(batch: pa.RecordBatch, name: str, i: int) -> Any:
    """A key column's value as bytes when it is text that is not UTF-8 (values.printable escapes it)."""
    column = batch.column(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())[i].as_py()
    return column[i].as_py() if _decodes(column[i]) else None


def _decodes(scalar: pa.Scalar) -> bool:
    try:
        scalar.as_py()
        return True
    except UnicodeDecodeError:
        return False
