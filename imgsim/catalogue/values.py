"""Catalogue values, normalised to the column types the outputs declare before a row exists.

Why: a row travels through Beam, whose string coder is strict UTF-8, into Parquet, whose columns
each have one declared type. Inputs are looser: JSON may escape a lone surrogate ("\\ud800"), an
API may send a number where the schema says text, an object where a list is expected, a field
of many megabytes. One such value must cost at most its row, never the job, and a row must never
reach a sink it would break. So every value is made to fit its column here (invalid code points
replaced with U+FFFD, numbers and booleans as text, objects and lists as JSON text, list columns
element by element), or the row is refused with `InvalidValue` and fails as `invalid_record`.

Ids and URLs are never repaired: an id changed silently would be another item. One that is not
valid Unicode fails its row, and the failure keeps it in an escaped, printable form (`escaped`),
which the failures Parquet can store.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional

import pyarrow as pa

from imgsim.failures import STAGE_READ, Failure

DEFAULT_MAX_METADATA_BYTES = 64 * 1024  # --max-metadata-bytes: each metadata value, each manifest line
REPLACEMENT = "\ufffd"
_SURROGATES = re.compile("[\ud800-\udfff]")  # the only code points UTF-8 cannot encode


class InvalidValue(ValueError):
    """A value that cannot be made to fit its column; its row fails as invalid_record."""


def is_valid_text(text: str) -> bool:
    """True when text can be encoded as UTF-8 (it holds no surrogate code points)."""
    return text.isascii() or _SURROGATES.search(text) is None


def clean_text(text: str) -> str:
    """text with every code point UTF-8 cannot encode replaced by U+FFFD."""
    return text if is_valid_text(text) else _SURROGATES.sub(REPLACEMENT, text)


def escaped(text: str) -> str:
    """text with every surrogate written as a \\uXXXX escape: printable and storable, for failure rows."""
    return text if is_valid_text(text) else _SURROGATES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def as_text(value: Any) -> Optional[str]:
    """A value for a string column: text as is (cleaned), JSON scalars, objects and lists as JSON text."""
    if value is None:
        return None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    try:
        if isinstance(value, (bool, int, float, dict, list, tuple)):
            return clean_text(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))
    except RecursionError:
        raise InvalidValue("a value nested too deeply to be written as JSON text") from None
    except (TypeError, ValueError) as e:  # e.g. keys JSON cannot hold
        raise InvalidValue(f"a value that cannot be written as JSON text ({e})") from None
    return clean_text(str(value))  # dates, decimals and the like from typed inputs


def key_text(value: Any, name: str) -> Optional[str]:
    """An id or a URL as text, stripped; None when absent or empty. Never repaired: InvalidValue
    when it is an object or a list, or not valid Unicode."""
    if type(value) is str and value.isascii():  # the common case, at no cost
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, (dict, list, tuple)):
        raise InvalidValue(f"the {name} is a JSON {'object' if isinstance(value, dict) else 'list'}, not text")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidValue(f"the {name} is not valid UTF-8") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = (value if isinstance(value, str) else as_text(value)).strip()
    if not is_valid_text(text):
        raise InvalidValue(f"the {name} is not valid Unicode (lone surrogates, kept as \\uXXXX escapes)")
    return text or None


def printable(value: Any) -> Optional[str]:
    """An id or URL as a failure row can keep it: escaped where it is not valid Unicode; None when
    it is absent or not a scalar (an object cannot be an id)."""
    if value is None or isinstance(value, (dict, list, tuple)):
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "surrogateescape")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = escaped(value if isinstance(value, str) else str(value)).strip()
    return text or None


def read_failure(reason: str, row_id: Any, url: Any, detail: str) -> Failure:
    """A read-stage Failure whose every field the failures Parquet can store."""
    return Failure(printable(row_id), printable(url), STAGE_READ, reason, escaped(detail))


def column_value(value: Any, column: pa.Field, max_bytes: int) -> Any:
    """value normalised to the column's type; InvalidValue naming the column when it cannot be,
    or when it is larger than max_bytes (in UTF-8, summed over a list's elements)."""
    return _normalised(value, column.name, _kind(column.type), max_bytes)


def normalise_metadata(record: Mapping[str, Any], schema: pa.Schema, max_bytes: int) -> dict:
    """The record's metadata columns, in schema order, each normalised to its declared type."""
    return MetadataNormaliser(schema, max_bytes)(record)


class MetadataNormaliser:
    """normalise_metadata for one schema, each column's kind worked out once: a manifest may have
    millions of rows."""

    def __init__(self, schema: pa.Schema, max_bytes: int):
        self._columns = tuple((field.name, _kind(field.type)) for field in schema)
        self._max_bytes = max_bytes

    def __call__(self, record: Mapping[str, Any]) -> dict:
        max_bytes = self._max_bytes
        return {name: _normalised(record.get(name), name, kind, max_bytes) for name, kind in self._columns}


_TEXT, _TEXT_LIST, _TYPED = "text", "list of text", "typed"


def _kind(kind: pa.DataType) -> str:
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _TEXT
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and _kind(kind.value_type) == _TEXT:
        return _TEXT_LIST
    return _TYPED


def _normalised(value: Any, name: str, kind: str, max_bytes: int) -> Any:
    if value is None:
        return None
    try:
        if kind == _TEXT:
            if type(value) is str and value.isascii():  # the common case, at no cost
                size = len(value)
            else:
                value = as_text(value)
                size = utf8_size(value)
        elif kind == _TEXT_LIST:
            items = value if isinstance(value, (list, tuple)) else [value]
            value = [as_text(item) for item in items]
            size = sum(utf8_size(item) for item in value if item is not None)
        else:  # a typed column (Parquet): Arrow's own values; only bytes are measured
            size = len(value) if isinstance(value, (bytes, bytearray)) else 0
    except InvalidValue as e:
        raise InvalidValue(f"metadata column {name!r}: {e}") from None
    if size > max_bytes:
        raise InvalidValue(f"metadata column {name!r} is {size:,} bytes, over --max-metadata-bytes ({max_bytes:,})")
    return value
