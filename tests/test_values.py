"""The normaliser every catalogue value passes through (imgsim.catalogue.values), without Beam.

Each normalised value is written to a real Parquet file of its declared column type, so "fits its
column" means what the sinks mean by it."""
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgsim.catalogue.values import (InvalidValue, as_text, clean_text, column_value, escaped, is_valid_text,
                                     key_text, normalise_metadata, printable, read_failure)
from imgsim.runs.outputs import FAILURES_SCHEMA

LONE = "\ud800"  # a lone surrogate, as json.loads('"\\ud800"') makes one

SCHEMA = pa.schema([("title", pa.string()), ("creators", pa.list_(pa.string())), ("year", pa.int64())])


def round_trip(table_rows: list, schema: pa.Schema) -> list:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(table_rows, schema=schema), buf)
    return pq.read_table(io.BytesIO(buf.getvalue())).to_pylist()


def test_lone_surrogates_are_replaced_in_text_and_nowhere_else():
    assert json.loads('"a\\ud800b"') == "a" + LONE + "b"  # what a JSON escape gives Python
    assert not is_valid_text("a" + LONE) and is_valid_text("café ✓ 😀")
    assert clean_text("a" + LONE + "b\udfff") == "a\ufffdb\ufffd"
    assert clean_text("café ✓ 😀") == "café ✓ 😀"
    with pytest.raises(UnicodeEncodeError):
        pa.array(["a" + LONE])  # what broke the Parquet sink


@pytest.mark.parametrize("value, text", [
    (5, "5"), (9.5, "9.5"), (True, "true"), (False, "false"),
    ({"b": 1, "a": "x"}, '{"a": "x", "b": 1}'), (["a", 1, None], '["a", 1, null]'),
    ({"k": LONE}, '{"k": "\ufffd"}'), ("already text", "already text"),
])
def test_values_for_string_columns_become_text(value, text):
    assert as_text(value) == text


def test_every_value_fits_its_declared_column_type():
    record = {"title": {"en": "Hurd" + LONE}, "creators": 5, "year": 1765, "ignored": "x"}
    metadata = normalise_metadata(record, SCHEMA, 1000)
    assert metadata == {"title": '{"en": "Hurd\ufffd"}', "creators": ["5"], "year": 1765}
    mixed = normalise_metadata({"creators": ["Copley", 7, None, {"name": LONE}], "title": None}, SCHEMA, 1000)
    assert mixed["creators"] == ["Copley", "7", None, '{"name": "\ufffd"}'] and mixed["title"] is None
    assert round_trip([metadata, mixed], SCHEMA)[0] == metadata  # both rows are writable as Parquet


def test_values_over_the_byte_cap_are_refused_with_the_column_and_sizes():
    column = pa.field("title", pa.string())
    assert column_value("é" * 50, column, 100) == "é" * 50  # 100 bytes in UTF-8: at the cap
    with pytest.raises(InvalidValue, match=r"'title' is 102 bytes, over --max-metadata-bytes \(100\)"):
        column_value("é" * 51, column, 100)
    with pytest.raises(InvalidValue, match="'creators' is 120 bytes"):  # a list is measured whole
        column_value(["x" * 60, "y" * 60], pa.field("creators", pa.list_(pa.string())), 100)


def test_ids_and_urls_are_never_repaired():
    assert key_text("  1915.534 ", "id") == "1915.534"
    assert key_text(2.0, "id") == "2" and key_text(1915.534, "id") == "1915.534" and key_text(5, "url") == "5"
    assert key_text("", "id") is None and key_text(None, "id") is None
    for bad, message in [("a" + LONE, "not valid Unicode"), ({"x": 1}, "JSON object"), ([1], "JSON list"),
                         (b"\xff", "not valid UTF-8")]:
        with pytest.raises(InvalidValue, match=message):
            key_text(bad, "id")


def test_read_failures_keep_an_invalid_id_escaped_and_storable():
    failure = read_failure("invalid_record", "bad" + LONE + "id", b"http://x/\xff", f"detail {LONE}")
    assert failure.id == "bad\\ud800id" and failure.url == "http://x/\\udcff"
    assert failure.detail == "detail \\ud800" and escaped("plain") == "plain"
    assert printable({"an": "object"}) is None and printable(7) == "7"
    assert round_trip([failure.as_row()], FAILURES_SCHEMA)[0]["id"] == "bad\\ud800id"
