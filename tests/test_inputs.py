"""Manifests (CSV, JSONL, Parquet), globs and the museum API records, without Beam."""
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgsim.catalogue import cma, manifest
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
    url = query.page_url(1000, 1000)
    for part in ("has_image=1", "limit=1000", "skip=1000", "cc0=1", "type=Painting", "department=Prints"):
        assert part in url
