"""Filtering results on metadata: what the build records, how a query's filter is spelled and parsed,
and the rows it allows.

The build records, beside each searcher (the whole index's, or each shard's):

    filters.parquet   column, value, rows (list<int32>): the rows holding each value of each text,
                      boolean or list-of-text column with at most MAX_VALUES distinct values
    ranges.parquet    one float64 column per number or date column, in row order (NaN: no value);
                      dates as days since 1970-01-01

and the manifest's `filters` says which columns can be filtered and how: {"kind": "values",
"values": distinct count} or {"kind": "range", "type": "number" | "date"} (a text column whose
every value is an ISO 8601 date, YYYY, YYYY-MM or YYYY-MM-DD[Thh:mm[:ss]], is both). So a query
reads dictionaries, never the metadata.

A query's filter: `filter=COLUMN:VALUE` (values of one column OR-ed, columns AND-ed; on a range
column a VALUE means equality) and `range=COLUMN:LOW..HIGH` (either end may be empty; a date end
covers its whole period: ..1950 runs to the last moment of 1950). numpy and pyarrow only.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
from typing import Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VALUES_FILE = "filters.parquet"
RANGES_FILE = "ranges.parquet"
MAX_VALUES = 65_536
NOT_FILTERED = ("id", "url", "sha256", "etag", "last_modified", "embedding", "row")
_DATE = re.compile(r"^(?P<y>[+-]?\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:[T ](?P<H>\d{2}):(?P<M>\d{2})"
                   r"(?::(?P<S>\d{2})(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?)?)?$")
_EPOCH = datetime.date(1970, 1, 1)


class FilterError(ValueError):
    """A filter that names an unknown column or cannot be read (a one-line reason)."""


# dates ------------------------------------------------------------------------------------------

def date_span(text: str) -> Optional[tuple[float, float]]:
    """(first, last) moment of an ISO 8601 date or date-time as days since 1970-01-01, or None."""
    match = _DATE.match(text.strip())
    if not match:
        return None
    try:
        year = int(match["y"])
        if match["m"] is None:
            start, end = datetime.date(year, 1, 1), datetime.date(year + 1, 1, 1)
        elif match["d"] is None:
            month = int(match["m"])
            start = datetime.date(year, month, 1)
            end = datetime.date(year + (month == 12), month % 12 + 1, 1)
        else:
            start = datetime.date(year, int(match["m"]), int(match["d"]))
            end = start + datetime.timedelta(days=1)
            if match["H"] is not None:
                seconds = int(match["H"]) * 3600 + int(match["M"]) * 60 + int(match["S"] or 0)
                if seconds >= 86400:
                    return None
                day = (start - _EPOCH).days + seconds / 86400
                return day, day + (1 / 86400 if match["S"] is not None else 60 / 86400)
    except (ValueError, OverflowError):
        return None
    return float((start - _EPOCH).days), float((end - _EPOCH).days)


# what the build records -------------------------------------------------------------------------

def describe(table: pa.Table) -> tuple[dict, pa.Table, pa.Table]:
    """(manifest entries, filters.parquet, ranges.parquet) for the metadata columns of table, in its
    row order. Columns that cannot be filtered are left out of all three."""
    described, postings, ranges = {}, [], {}
    for name in table.column_names:
        if name in NOT_FILTERED:
            continue
        column = table.column(name)
        kind = column.type
        if column.null_count == len(column):
            continue  # nothing to filter on (width and height of vectors from elsewhere)
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            ranges[name] = np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
            described[name] = {"kind": "range", "type": "number"}
            continue
        if pa.types.is_date(kind) or pa.types.is_timestamp(kind):
            ranges[name] = _days(column)
            described[name] = {"kind": "range", "type": "date"}
            continue
        if pa.types.is_boolean(kind):
            column = pc.cast(column, pa.string())
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            if not _is_text(kind.value_type):
                continue
        elif not _is_text(kind):
            continue
        entry = _values(name, column, postings)
        if entry is not None:
            described[name] = entry
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
                days = _iso_dates(column)
                if days is not None:
                    ranges[name] = days
                    described[name] = {**entry, "range": "date"}
    values = (pa.concat_tables(postings) if postings else
              pa.table({"column": pa.array([], pa.string()), "value": pa.array([], pa.string()),
                        "rows": pa.array([], pa.list_(pa.int32()))}))
    return described, values, pa.table({name: pa.array(v, pa.float64()) for name, v in ranges.items()}) \
        if ranges else pa.table({"_rows": pa.array(np.zeros(table.num_rows, np.int8))})


def _is_text(kind) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _values(name: str, column: pa.ChunkedArray, postings: list) -> Optional[dict]:
    n = len(column)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        flat = pc.list_flatten(column)
        rows = pc.list_parent_indices(column).to_numpy()
        values = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=object)
    else:
        values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)
        rows = np.arange(n)
    present = np.array([v is not None for v in values], bool) if len(values) else np.zeros(0, bool)
    values, rows = values[present], rows[present]
    if not len(values):
        return None
    distinct, inverse = np.unique(values.astype(str), return_inverse=True)
    if len(distinct) > MAX_VALUES:
        return None
    order = np.lexsort((rows, inverse))
    bounds = np.searchsorted(inverse[order], np.arange(len(distinct) + 1))
    grouped = rows[order].astype(np.int32)
    postings.append(pa.table({
        "column": pa.array([name] * len(distinct), pa.string()),
        "value": pa.array(distinct.tolist(), pa.string()),
        "rows": pa.ListArray.from_arrays(pa.array(bounds.astype(np.int32)), pa.array(grouped)),
    }))
    return {"kind": "values", "values": int(len(distinct))}


def _iso_dates(column: pa.ChunkedArray) -> Optional[np.ndarray]:
    """Days of each value when every non-empty value of a text column is an ISO 8601 date."""
    out = np.full(len(column), np.nan)
    seen = False
    for i, value in enumerate(column.to_pylist()):
        if value is None or not value.strip():
            continue
        span = date_span(value)
        if span is None:
            return None
        out[i] = span[0]
        seen = True
    return out if seen else None


def _days(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_date(column.type):
        days = pc.cast(pc.cast(column, pa.date32()), pa.int32())
        return np.asarray(pc.cast(days, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    seconds = pc.cast(pc.cast(column, pa.timestamp("s", tz=column.type.tz)), pa.int64())
    return np.asarray(pc.cast(seconds, pa.float64()).to_numpy(zero_copy_only=False), np.float64) / 86400


def write(table: pa.Table, directory: str) -> dict:
    """filters.parquet and ranges.parquet of table's metadata columns (in its row order) in
    directory; returns the manifest's entries."""
    from imgsim.index.artifact import write_table

    described, values, ranges = describe(table)
    write_table(values, os.path.join(directory, VALUES_FILE))
    write_table(ranges, os.path.join(directory, RANGES_FILE))
    return described


def combine(parts: Sequence[dict]) -> dict:
    """The manifest's `filters` for a sharded index from each shard's: a column is filterable as
    every shard says it is (values counted per shard at most MAX_VALUES each)."""
    if not parts:
        return {}
    out = {}
    for name in set.intersection(*(set(p) for p in parts)):
        entries = [p[name] for p in parts]
        kinds = {e["kind"] for e in entries}
        if kinds == {"values"}:
            entry = {"kind": "values", "values": max(e["values"] for e in entries)}
            if all(e.get("range") == "date" for e in entries):
                entry["range"] = "date"
            out[name] = entry
        elif kinds == {"range"} and len({e["type"] for e in entries}) == 1:
            out[name] = entries[0]
    return dict(sorted(out.items()))


# a query's filter -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Filter:
    """values: column -> accepted values (OR); ranges: column -> (low, high) text, None for an open end."""

    values: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    ranges: Mapping[str, tuple] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.values or self.ranges)

    @classmethod
    def of(cls, filters: Optional[Mapping] = None, ranges: Optional[Mapping] = None) -> "Filter":
        """From Python's filters={"col": [values]} and ranges={"col": (low, high)} (None: open)."""
        values = {}
        for name, accepted in (filters or {}).items():
            accepted = [accepted] if isinstance(accepted, (str, int, float, bool)) else list(accepted)
            values[str(name)] = tuple(_text(v) for v in accepted)
        spans = {}
        for name, span in (ranges or {}).items():
            if not isinstance(span, (tuple, list)) or len(span) != 2:
                raise FilterError(f"range {name}: give (low, high), either of them None, not {span!r}")
            spans[str(name)] = tuple(None if v is None or v == "" else _text(v) for v in span)
        return cls(values, spans)

    @classmethod
    def parse(cls, filters: Sequence[str] = (), ranges: Sequence[str] = ()) -> "Filter":
        """From COLUMN:VALUE and COLUMN:LOW..HIGH strings (HTTP and the command line)."""
        values: dict = {}
        for text in filters:
            name, _, value = text.partition(":")
            if not _ or not name:
                raise FilterError(f"filter {text!r}: write COLUMN:VALUE")
            values.setdefault(name, []).append(value)
        spans = {}
        for text in ranges:
            name, _, span = text.partition(":")
            low, dots, high = span.partition("..")
            if not _ or not name or not dots:
                raise FilterError(f"range {text!r}: write COLUMN:LOW..HIGH (either end may be empty)")
            spans[name] = (low or None, high or None)
        return cls({k: tuple(v) for k, v in values.items()}, spans)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check(spec: Filter, described: Mapping[str, dict]) -> None:
    """FilterError naming the first column that cannot be filtered so, or an end that does not parse."""
    def unknown(name):
        filterable = ", ".join(sorted(described)) or "none"
        return FilterError(f"column {name!r} cannot be filtered in this index (filterable: {filterable})")

    for name, accepted in spec.values.items():
        entry = described.get(name)
        if entry is None:
            raise unknown(name)
        if entry["kind"] == "range":
            for value in accepted:
                _bound(name, value, entry["type"], low=True)
    for name, (low, high) in spec.ranges.items():
        entry = described.get(name)
        if entry is None:
            raise unknown(name)
        kind = entry.get("type") if entry["kind"] == "range" else entry.get("range")
        if kind is None:
            raise FilterError(f"column {name!r} holds text, not numbers or ISO dates: filter it with "
                              f"filter={name}:VALUE")
        for end, is_low in ((low, True), (high, False)):
            if end is not None:
                _bound(name, end, kind, is_low)
        if low is not None and high is not None and _bound(name, low, kind, True) > _bound(name, high, kind, False):
            raise FilterError(f"range {name}: {low} is after {high}")


def _bound(name: str, text: str, kind: str, low: bool) -> float:
    if kind == "date":
        span = date_span(text)
        if span is None:
            raise FilterError(f"range {name}: {text!r} is not an ISO 8601 date (YYYY, YYYY-MM or YYYY-MM-DD)")
        return span[0] if low else span[1]
    try:
        value = float(text)
    except ValueError:
        raise FilterError(f"range {name}: {text!r} is not a number") from None
    if math.isnan(value):
        raise FilterError(f"range {name}: {text!r} is not a number")
    return value


class Allowed:
    """The rows of one searcher's items a filter allows, from its recorded files."""

    @classmethod
    def read(cls, values_path: str, ranges_path: str, count: int) -> "Allowed":
        import pyarrow.parquet as pq

        return cls(pq.read_table(values_path), pq.read_table(ranges_path), count)

    def __init__(self, values: pa.Table, ranges: pa.Table, count: int):
        self.count = count
        self._postings: dict = {}
        columns = values.column("column").to_pylist()
        names = values.column("value").to_pylist()
        rows = values.column("rows")
        for i, (column, value) in enumerate(zip(columns, names)):
            self._postings.setdefault(column, {})[value] = i
        self._rows = rows
        self._ranges = {name: ranges.column(name).to_numpy(zero_copy_only=False)
                        for name in ranges.column_names if not name.startswith("_")}

    def mask(self, spec: Filter, described: Mapping[str, dict]) -> np.ndarray:
        allowed = np.ones(self.count, bool)
        for name, accepted in spec.values.items():
            entry = described[name]
            if entry["kind"] == "range":
                values = self._ranges.get(name, np.full(self.count, np.nan))
                one = np.zeros(self.count, bool)
                for value in accepted:
                    one |= values == _bound(name, value, entry["type"], True)
                allowed &= one
                continue
            one = np.zeros(self.count, bool)
            postings = self._postings.get(name, {})
            for value in accepted:
                at = postings.get(value)
                if at is not None:
                    one[np.asarray(self._rows[at].values.to_numpy(), np.int64)] = True
            allowed &= one
        for name, (low, high) in spec.ranges.items():
            entry = described[name]
            kind = entry.get("type") if entry["kind"] == "range" else entry.get("range")
            values = self._ranges.get(name, np.full(self.count, np.nan))
            inside = ~np.isnan(values)
            if low is not None:
                inside &= values >= _bound(name, low, kind, True)
            if high is not None:
                inside &= values < _bound(name, high, kind, False) if kind == "date" else \
                    values <= _bound(name, high, kind, False)
            allowed &= inside
        return allowed
