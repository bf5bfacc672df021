"""Manifests (CSV, JSONL, Parquet), globs and the museum API records, without Beam."""
import codecs
import csv
import gzip
import io
import json
import os
import tracemalloc

import numpy as np

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgsim.catalogue import cma, manifest
from imgsim.catalogue.manifest import ManifestError
from imgsim.catalogue.streams import DamagedFileError, bounded_lines
from imgsim.failures import Failure
from imgsim.catalogue.inputs import CmaInput, GlobInput, ManifestInput, resolve_input
from imgsim.records import CatalogueRow
from imgsim.storage import ObjectStore, fixed_prefix


def rows_of(data: bytes, name: str, limit=None):
    schema = manifest.inspect(io.BytesIO(data), name)
    return schema, list(manifest.iter_rows(io.BytesIO(data), name, schema, limit))


CSV = b"id,url,title,year\na1,http://x/a.jpg,Alpha,1900\n\n a2 ,http://x/b.jpg,\"Beta, with comma\",\n,http://x/c.jpg,No id,1\na4,,No url,2\n"


def test_csv_rows_carry_metadata_as_text_and_report_bad_rows():
    schema, rows = rows_of(CSV, "m.csv")
    assert schema.metadata_columns == ("title", "year") and schema.metadata.types == [pa.string()] * 2
    assert rows[0] == CatalogueRow("a1", "http://x/a.jpg", {"title": "Alpha", "year": "1900"}, 0)
    assert rows[1].id == "a2" and rows[1].metadata["title"] == "Beta, with comma"  # blank line skipped
    assert isinstance(rows[2], Failure) and rows[2].reason == "missing_id"
    assert isinstance(rows[3], Failure) and (rows[3].reason, rows[3].id) == ("missing_url", "a4")


def test_limit_counts_input_rows():
    _, rows = rows_of(CSV, "m.csv", limit=3)
    assert len(rows) == 3


def test_jsonl_collects_keys_from_every_line_and_keeps_non_text_as_json():
    lines = [{"id": "j1", "url": "http://x/1.jpg", "tags": ["a", "b"]},
             {"id": 2, "url": "http://x/2.jpg", "price": 9.5}]
    data = ("\n".join(json.dumps(r) for r in lines) + "\nnot json\n[1, 2]\n").encode()
    schema, rows = rows_of(data, "m.jsonl")
    assert schema.metadata_columns == ("tags", "price")
    assert rows[0].metadata == {"tags": '["a", "b"]', "price": None}
    assert rows[1].id == "2" and rows[1].metadata["price"] == "9.5"
    assert [r.reason for r in rows[2:]] == ["invalid_record", "invalid_record"]


def test_parquet_keeps_metadata_types():
    table = pa.table({"id": [1, 2], "url": ["http://x/1.jpg", "http://x/2.jpg"],
                      "price": [1.5, None], "tags": [["a"], []]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    schema, rows = rows_of(buf.getvalue(), "m.parquet")
    assert schema.metadata.field("price").type == pa.float64()
    assert schema.metadata.field("tags").type == pa.list_(pa.string())
    assert rows[0] == CatalogueRow("1", "http://x/1.jpg", {"price": 1.5, "tags": ["a"]}, 0)


def test_gzipped_manifests_are_read():
    schema, rows = rows_of(gzip.compress(CSV), "m.csv.gz")
    assert schema.format == "csv" and rows[0].id == "a1"


@pytest.mark.parametrize("data, name, message", [
    (b"name,link\nx,y\n", "m.csv", "needs columns 'id' and 'url'"),
    (b"id,url,embedding\n", "m.csv", "rename the column(s) embedding"),
    (b"id,url,a,a\n", "m.csv", "duplicate column"),
    (b"", "m.csv", "empty"),
    (b"not parquet", "m.parquet", "not a readable Parquet"),
    (b"id,url,t\ra,http://x/a.jpg,t\r", "m.csv", "end with a carriage return alone"),
])
def test_unusable_manifests_are_configuration_errors(data, name, message):
    with pytest.raises(manifest.ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        manifest.inspect(io.BytesIO(data), name)


def test_resolve_input_classifies_every_form(tmp_path):
    (tmp_path / "m.csv").write_bytes(CSV)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    assert isinstance(resolve_input(str(tmp_path / "m.csv"), ObjectStore()), ManifestInput)
    assert isinstance(resolve_input(str(tmp_path / "img" / "*.jpg"), ObjectStore()), GlobInput)
    assert resolve_input(str(tmp_path / "img"), ObjectStore()).pattern.endswith("img/**")
    spec = resolve_input("cma", ObjectStore(), limit=5)
    assert isinstance(spec, CmaInput) and spec.limit == 5
    for bad, message in [(str(tmp_path / "nope.csv"), "cannot open"), (str(tmp_path / "x.txt"), "not a manifest"),
                         (str(tmp_path / "img" / "*.png"), "matches no files"), ("", "required")]:
        with pytest.raises(ValueError, match=message):
            resolve_input(bad, ObjectStore())
    with pytest.raises(ValueError, match="--limit"):
        resolve_input("cma", ObjectStore(), limit=0)


@pytest.mark.parametrize("pattern, prefix", [
    ("photos/*.jpg", "photos/"), ("gs://b/imgs/**/*.png", "gs://b/imgs/"), ("a/b/c?.jpg", "a/b/"),
    ("*.jpg", ""), ("gs://b/x/[ab].jpg", "gs://b/x/"),
])
def test_glob_fixed_prefix(pattern, prefix):
    assert fixed_prefix(pattern) == prefix


def test_cma_records_become_rows(shared):
    page = json.loads((shared / "data" / "cma" / "artworks_page.json").read_text())
    total, records = cma.parse_page(page)
    assert total == 36 and len(records) == 36
    row = cma.record_to_row(records[0], 0)
    assert row.id == "1915.534"
    assert row.url == "https://openaccess-cdn.clevelandart.org/1915.534/1915.534_web.jpg"
    assert row.metadata["title"] == "Nathaniel Hurd" and row.metadata["type"] == "Painting"
    assert row.metadata["creators"][0].startswith("John Singleton Copley")
    assert row.metadata["record_url"] == "https://clevelandart.org/art/1915.534"
    assert set(row.metadata) == set(cma.METADATA_SCHEMA.names)

    full = json.loads((shared / "data" / "cma" / "artwork_full_record.json").read_text())
    total, records = cma.parse_page(full)
    row = cma.record_to_row(records[0], 7)
    assert (row.id, row.position, row.metadata["department"]) == ("1916.586.a", 7, "Decorative Art and Design")
    assert total == 32483


def test_cma_records_without_id_or_image_are_failures():
    assert cma.record_to_row({"id": 1, "images": {"web": {"url": "http://x"}}}, 0).reason == "missing_id"
    assert cma.record_to_row({"accession_number": "1.2", "images": None}, 0).reason == "missing_url"
    assert cma.record_to_row("junk", 0).reason == "invalid_record"


def test_cma_pages_cover_the_limit_and_carry_the_filters():
    query = cma.CmaQuery(api_url="http://127.0.0.1:9/api/artworks/", cc0=True, type="Painting",
                         department="Prints", limit=2500, page_size=1000)
    assert cma.plan_pages(41000, query) == [cma.Page(0, 1000), cma.Page(1000, 1000), cma.Page(2000, 500)]
    assert cma.plan_pages(30, query) == [cma.Page(0, 30)]
    assert cma.plan_pages(10 ** 9, query)[-1] == cma.Page(2000, 500)  # the limit bounds a huge total
    assert cma.plan_pages(-5, query) == []
    url = query.page_url(1000, 1000)
    for part in ("has_image=1", "limit=1000", "skip=1000", "cc0=1", "type=Painting", "department=Prints"):
        assert part in url


def test_an_api_total_past_the_bound_is_refused_without_a_limit():
    """10^9 reported records would plan a million page requests at a museum's API."""
    query = cma.CmaQuery(api_url="http://127.0.0.1:9/api/artworks/", page_size=1000)
    with pytest.raises(ValueError, match=r"the API reports 1,000,000,000 records, more than the 2,000,000 .*--limit"):
        cma.plan_pages(10 ** 9, query)
    assert len(cma.plan_pages(cma.MAX_RECORDS, query)) == cma.MAX_RECORDS // 1000


# --- bad records: each fails alone, as invalid_record, with its line and its id -------------------

def read_file(path, **options):
    """As a run reads a manifest: preflight's resolve_input, then the read step's iter_rows."""
    spec = resolve_input(str(path), ObjectStore(), **options)
    with ObjectStore().open_read(str(path)) as raw:
        return list(manifest.iter_rows(raw, str(path), spec.schema, spec.limit, spec.max_metadata_bytes))


def outcomes(rows):
    return [("row", r.id) if isinstance(r, CatalogueRow) else (r.reason, r.id) for r in rows]


def test_lines_are_read_in_blocks_and_each_is_capped_wherever_the_blocks_fall():
    data = codecs.BOM_UTF8 + b'id,"a"\nshort\n' + b"x" * 25 + b"\nexactly10\ncaf\xc3\xa9\xff\ntail"
    for block in (1, 3, 7, 4096):
        lines = [tuple(line) for line in bounded_lines(io.BytesIO(data), 10, block)]
        assert [line[:5] for line in lines] == [
            (1, 'id,"a"\n', 7, 2, None), (2, "short\n", 6, 0, None),
            (3, "x" * 10, 26, 0, "the line is 26 bytes, over --max-metadata-bytes (10)"),
            (4, "exactly10\n", 10, 0, None),
            (5, "caf\xe9\udcff\n", 7, 0, "not valid UTF-8 (byte 0xff at byte 6 of the line)"), (6, "tail", 4, 0, None)]
        assert [line.whole for line in bounded_lines(io.BytesIO(data), 10, block)] == [True, True, False] + [True] * 3


GOOD_ROWS = b"".join(b"r%03d,http://x/%d.jpg,Title %d\n" % (i, i, i) for i in range(400))


def test_a_csv_line_that_is_not_utf8_beyond_the_first_8_kib_fails_alone(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"id,url,title\n" + GOOD_ROWS + b"latin1,http://x/l.jpg,Caf\xe9\n"
                     + b'quoted,http://x/q.jpg,"two\nlines \xff"\n' + b"last,http://x/z.jpg,ok\n")
    assert path.read_bytes().index(b"\xe9") > 8192  # beyond what preflight reads
    rows = read_file(path)
    assert outcomes(rows) == [("row", f"r{i:03d}") for i in range(400)] + [
        ("invalid_record", "latin1"), ("invalid_record", "quoted"), ("row", "last")]
    assert rows[400].detail == "row 400 (line 402): not valid UTF-8 (byte 0xe9 at byte 26 of the line)"
    assert rows[401].detail.startswith("row 401 (lines 403-404): line 404: not valid UTF-8")
    assert rows[401].url == "http://x/q.jpg" and rows[402].metadata == {"title": "ok"}


def test_a_field_over_the_csv_modules_limit_keeps_its_id_and_the_rows_after_it(tmp_path):
    path = tmp_path / "m.csv"
    notes = b'"' + b"a short line\n" * 12000 + b'"'  # 156,000 characters in one quoted field
    path.write_bytes(b"id,url,notes\nbefore,http://x/b.jpg,ok\nhuge,http://x/h.jpg," + notes
                     + b"\nafter,http://x/a.jpg,ok\n")
    rows = read_file(path, max_metadata_bytes=10 ** 6)
    assert outcomes(rows) == [("row", "before"), ("invalid_record", "huge"), ("row", "after")]
    assert "lines 3-12003" in rows[1].detail and "field larger than field limit" in rows[1].detail
    assert csv.field_size_limit() == 131072  # the process-wide limit is left alone


def test_an_over_long_line_is_skipped_unread_in_bounded_memory(tmp_path):
    path = tmp_path / "m.csv"
    with open(path, "wb") as f:
        f.write(b"id,url,title\nfirst,http://x/1.jpg,ok\nlong,http://x/l.jpg,")
        for _ in range(64):
            f.write(b"x" * (1 << 20))  # a 64 MiB line
        f.write(b"\nlast,http://x/2.jpg,ok\n")
    spec = resolve_input(str(path), ObjectStore())
    tracemalloc.start()
    try:
        with open(path, "rb") as raw:
            rows = list(manifest.iter_rows(raw, str(path), spec.schema, None, spec.max_metadata_bytes))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"reading a 64 MiB line took {peak:,} bytes"
    assert outcomes(rows) == [("row", "first"), ("invalid_record", "long"), ("row", "last")]
    assert rows[1].url == "http://x/l.jpg"
    assert rows[1].detail == "row 1 (line 3): the line is 67,108,885 bytes, over --max-metadata-bytes (65,536)"


def test_metadata_values_over_the_cap_fail_their_row(tmp_path):
    path = tmp_path / "m.csv"  # each line is short; the quoted value spans them
    path.write_bytes(b'id,url,notes\nsmall,http://x/s.jpg,ok\nbig,http://x/b.jpg,"' + b"words\n" * 200 + b'"\n')
    rows = read_file(path, max_metadata_bytes=1000)
    assert outcomes(rows) == [("row", "small"), ("invalid_record", "big")]
    assert "metadata column 'notes' is 1,200 bytes, over --max-metadata-bytes (1,000)" in rows[1].detail
    table = pa.table({"id": ["p1", "p2"], "url": ["http://x/1.jpg", "http://x/2.jpg"],
                      "text": ["fine", "y" * 2000], "blob": [b"b" * 10, b"b" * 10]})
    pq.write_table(table, tmp_path / "m.parquet")
    rows = read_file(tmp_path / "m.parquet", max_metadata_bytes=1000)
    assert outcomes(rows) == [("row", "p1"), ("invalid_record", "p2")]
    wide = tmp_path / "wide.csv"
    wide.write_bytes(b"id,url," + b",".join(b"c%d" % i for i in range(400)) + b"\n")
    with pytest.raises(ManifestError, match=r"the header \(line 1\) cannot be read: the line is 1,897 bytes"):
        resolve_input(str(wide), ObjectStore(), max_metadata_bytes=1000)


def test_jsonl_values_are_normalised_and_bad_lines_fail_alone(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join([
        b'{"id": "ok", "url": "http://x/1.jpg", "title": "caf\\ud800", "tags": ["a", 1], "year": 1900}',
        b'{"id": "bad\\ud800", "url": "http://x/2.jpg", "title": "x"}',
        b'{"id": "latin1", "url": "http://x/3.jpg", "title": "caf\xe9"}',
        b'{"id": "odd-key", "url": "http://x/4.jpg", "\\udc00": 1}',
        b"[" * 5000 + b"]" * 5000,
        b'{"id": "last", "url": "http://x/5.jpg", "title": {"nested": "\\udfff"}}']) + b"\n")
    rows = read_file(path)
    assert outcomes(rows) == [("row", "ok"), ("invalid_record", "bad\\ud800"), ("invalid_record", "latin1"),
                              ("invalid_record", "odd-key"), ("invalid_record", None), ("row", "last")]
    assert rows[0].metadata == {"title": "caf\ufffd", "tags": '["a", 1]', "year": "1900"}
    assert rows[5].metadata["title"] == '{"nested": "\ufffd"}'
    assert "not valid Unicode" in rows[1].detail and "line 3" in rows[2].detail
    assert "nested too deeply" in rows[4].detail


def invalid_utf8_strings(values: list) -> pa.Array:
    offsets = np.cumsum([0] + [len(v) for v in values]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(values),
                                 [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(values))])


def test_parquet_text_that_is_not_utf8_fails_its_row_only(tmp_path):
    table = pa.table({"id": invalid_utf8_strings([b"p1", b"p\xff2", b"p3"]),
                      "url": ["http://x/1.jpg", "http://x/2.jpg", "http://x/3.jpg"],
                      "title": invalid_utf8_strings([b"one", b"two", b"thr\xffee"])})
    pq.write_table(table, tmp_path / "m.parquet")
    rows = read_file(tmp_path / "m.parquet")
    assert outcomes(rows) == [("row", "p1"), ("invalid_record", "p\\udcff2"), ("invalid_record", "p3")]
    assert "'title'" in rows[2].detail and "not valid UTF-8" in rows[2].detail and rows[2].url == "http://x/3.jpg"


def test_compressed_manifests_damaged_after_preflight_fail_loudly_instead_of_ending_early():
    rows = b"id,url\n" + b"".join(b"r%d,http://x/%d.jpg\n" % (i, i) for i in range(20000))
    packed = gzip.compress(rows)
    corrupt = bytearray(packed)
    for i in range(len(corrupt) // 2, len(corrupt) // 2 + 64):
        corrupt[i] ^= 0x55
    schema = manifest.inspect(io.BytesIO(packed), "m.csv.gz")
    assert len(list(manifest.iter_rows(io.BytesIO(packed), "m.csv.gz", schema))) == 20000
    for damaged in (packed[: len(packed) * 2 // 3], bytes(corrupt)):
        with pytest.raises(DamagedFileError, match=r"^m\.csv\.gz: the compressed manifest is truncated or corrupt"):
            list(manifest.iter_rows(io.BytesIO(damaged), "m.csv.gz", schema))


def test_cma_records_are_normalised_to_the_metadata_schema():
    base = {"accession_number": "1.1", "images": {"web": {"url": "http://x/1.jpg"}}, "title": "T"}
    rows = [cma.record_to_row({**base, **change}, i, max_metadata_bytes=200) for i, change in enumerate([
        {"creators": 5}, {"creators": [{"description": 7}, {"description": None}, "Anon", {"role": "x"}]},
        {"creators": {"description": "a lone object"}}, {"title": "Hurd" + "\ud800", "type": True, "department": 1.5},
        {"accession_number": 1234}, {"images": {"web": {"url": 5}}}, {"accession_number": "9" + "\ud800"},
        {"technique": "oil " * 60}, {"accession_number": {"not": "an id"}}, {"images": {"web": "nope"}},
        {"accession_number": None, "id": "api-" + "\udc00"}])]
    assert [r.metadata["creators"] for r in rows[:3]] == [["5"], ["7", "Anon"], ["a lone object"]]
    assert (rows[3].metadata["title"], rows[3].metadata["type"], rows[3].metadata["department"]) == \
        ("Hurd\ufffd", "true", "1.5")
    assert (rows[4].id, rows[5].url) == ("1234", "5")  # a numeric URL is text; the download refuses it
    assert [(r.reason, r.id) for r in rows[6:]] == [
        ("invalid_record", "9\\ud800"), ("invalid_record", "1.1"), ("invalid_record", None), ("missing_url", "1.1"),
        ("missing_id", None)]
    assert "'technique' is 240 bytes" in rows[7].detail and "api-\\udc00" in rows[10].detail
    page = b'{"info": {"total": 2}, "data": [{"accession_number": "a", "title": "caf\xe9"}]}'
    assert cma.load_page(page)[1][0]["title"] == "caf\udce9"  # one bad byte costs a value, not the page


def test_glob_files_whose_names_are_not_utf8_fail_alone(tmp_path):
    (tmp_path / "good.jpg").write_bytes(b"x")
    (tmp_path / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"x")
    spec = resolve_input(str(tmp_path), ObjectStore())
    rows = [spec.row(path, i) for i, path in enumerate(ObjectStore().glob(spec.pattern))]
    assert sorted(outcomes(rows), key=str) == [("invalid_record", "bad\\udcff.jpg"), ("row", "good.jpg")]
