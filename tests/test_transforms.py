"""Each transform on its own, with TestPipeline and assert_that, and the whole graph with a fake model.

As apache_beam/ml/inference/base_test.py does: no VGG16 here (tests.fakes.FakeModelHandler), so
deduplication, reuse planning, downloading, inference bookkeeping, accounting and the summary are
checked in seconds. The model itself is tested in test_model.py and end to end in test_pipeline.py.
"""
import dataclasses
import io
import os

import apache_beam as beam
import numpy as np
import requests
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to, is_empty
from PIL import Image

from conftest import jpeg
from fakes import FakeModelHandler
from imgsim.embed.decode import DecodeConfig
from imgsim.embed.signature import ModelSignature
from imgsim.failures import Failure
from imgsim.fetch.http import FetchConfig
from imgsim.records import CHANGED, NEW, RESUMED, REUSED, CatalogueRow, DecodedImage, EmbeddingRow, Previous
from imgsim.runs.outputs import embeddings_schema
from imgsim.runs.reuse import ReuseSource
from imgsim.transforms.dedupe import DeduplicateIds
from imgsim.transforms.download import REUSED as REUSED_TAG
from imgsim.transforms.download import THROTTLING_COUNTER, DownloadImages
from imgsim.transforms.embed import EmbedImages
from imgsim.transforms.failures import FAILURES
from imgsim.transforms.reuse import DELETED, PlanReuse
from pipeline_helpers import by_id, run_pipeline, write_manifest

SIGNATURE = ModelSignature("vgg16", "pool", 4, "test", "sha256:0", "vgg16-caffe/pad/224/v1", "fp32")
LOCAL = FetchConfig(allow_private_addresses=True, connect_timeout=2, read_timeout=2, deadline=5, max_retries=0)


def rows(*specs):
    return [CatalogueRow(id=i, url=u, metadata={"title": i}, position=p) for p, (i, u) in enumerate(specs)]


def decoded(row_id, colour=(200, 30, 30), known=False):
    row = CatalogueRow(id=row_id, url=f"http://x/{row_id}.jpg", metadata={"title": row_id}, known=known)
    return DecodedImage(row=row, sha256="s" + row_id, width=10, height=8,
                        pixels=np.full((224, 224, 3), colour, np.uint8))


def test_deduplicate_keeps_the_first_row_of_each_id_and_fails_the_repeats():
    items = rows(("a", "http://x/1"), ("b", "http://x/2"), ("a", "http://x/3"), ("a", "http://x/4"))
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create(items) | DeduplicateIds()
        assert_that(out.rows | "Kept" >> beam.Map(lambda r: (r.id, r.url)),
                    equal_to([("a", "http://x/1"), ("b", "http://x/2")]), label="kept")
        assert_that(out[FAILURES] | "Repeats" >> beam.Map(lambda f: (f.id, f.url, f.reason)),
                    equal_to([("a", "http://x/3", "duplicate_id"), ("a", "http://x/4", "duplicate_id")]),
                    label="repeats")


def earlier_file(path, items):
    """An embeddings file of an earlier run: (id, url, sha256) with 4-d vectors."""
    schema = embeddings_schema(SIGNATURE, pa.schema([("title", pa.string())]))
    table = pa.Table.from_pylist([{"id": i, "url": u, "sha256": s, "width": 1, "height": 1,
                                   "embedding": [1.0, 0, 0, 0], "etag": '"e"', "last_modified": None, "title": "old"}
                                  for i, u, s in items], schema=schema)
    pq.write_table(table, path)
    return str(path)


def test_plan_reuse_resumes_the_checkpoint_attaches_latest_and_counts_deleted(tmp_path):
    latest = earlier_file(tmp_path / "latest.parquet", [("same", "http://x/same", "s1"), ("moved", "http://x/old", "s2"),
                                                        ("gone", "http://x/gone", "s3"), ("done", "http://x/done", "s4")])
    checkpoint = earlier_file(tmp_path / "checkpoint.parquet", [("done", "http://x/done", "s4")])
    sources = [ReuseSource((latest,), False, "LATEST"), ReuseSource((checkpoint,), True, "checkpoint")]
    today = rows(("same", "http://x/same"), ("moved", "http://x/new"), ("done", "http://x/done"), ("new", "http://x/n"))
    with test_pipeline.TestPipeline() as p:
        plan = p | beam.Create(today) | PlanReuse(sources)
        assert_that(plan.rows | "ToFetch" >> beam.Map(
            lambda r: (r.id, r.known, r.previous.sha256 if r.previous else None)),
            equal_to([("same", True, "s1"), ("moved", True, None), ("new", False, None)]), label="to fetch")
        assert_that(plan[RESUMED] | "Resumed" >> beam.Map(lambda r: (r.id, r.origin, r.sha256, r.metadata["title"])),
                    equal_to([("done", RESUMED, "s4", "done")]), label="resumed")  # today's metadata
        assert_that(plan[DELETED], equal_to(["gone"]), label="deleted")


@pytest.fixture
def images(server, photos):
    red = jpeg(np.full((40, 60, 3), (200, 30, 30), np.uint8))
    return {
        "dog": server.file("/dog.jpg", photos["dog"]),
        "red": server.file("/red.jpg", red),
        "html": server.file("/page.jpg", b"<html>nope</html>", "text/html"),
        "gone": server.status("/gone.jpg", 404),
    }


def test_download_decodes_images_and_fails_bad_rows_with_their_reason(images):
    items = rows(*images.items())
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create(items) | DownloadImages(LOCAL, DecodeConfig(), threads=4)
        assert_that(out.images | "Decoded" >> beam.Map(lambda d: (d.row.id, d.pixels.shape, d.width)),
                    equal_to([("dog", (224, 224, 3), 768), ("red", (224, 224, 3), 60)]), label="decoded")
        assert_that(out[FAILURES] | "Failed" >> beam.Map(lambda f: (f.id, f.stage, f.reason)),
                    equal_to([("html", "decode", "not_an_image"), ("gone", "download", "http_not_found")]),
                    label="failed")
        assert_that(out[REUSED_TAG], is_empty(), label="nothing reused")


def test_download_reuses_an_earlier_embedding_when_the_server_says_not_modified(server, photos):
    url = server.file("/dog.jpg", photos["dog"])
    first = requests.get(url)
    previous = Previous(url=url, sha256="old-sha", etag=first.headers["ETag"], last_modified=None, width=768,
                        height=576, embedding=np.ones(4, np.float32), trusted=False)
    row = CatalogueRow(id="dog", url=url, metadata={"title": "today"}, previous=previous, known=True)
    with test_pipeline.TestPipeline() as p:
        out = p | beam.Create([row]) | DownloadImages(LOCAL, DecodeConfig(), threads=2)
        assert_that(out[REUSED_TAG] | beam.Map(lambda r: (r.id, r.origin, r.sha256, r.metadata["title"])),
                    equal_to([("dog", REUSED, "old-sha", "today")]))
        assert_that(out.images, is_empty(), label="no decode")
    assert server.not_modified["/dog.jpg"] == 1


def test_download_reports_time_held_back_by_host_limits_as_throttling(server, photos):
    """Dataflow's autoscaler discounts cumulativeThrottlingSeconds: waiting on a museum's limits must not
    look like work that more workers would speed up."""
    server.file("/dog.jpg", photos["dog"])
    items = rows(*[(f"dog-{i}", server.url(f"/dog.jpg?copy={i}")) for i in range(5)])
    config = dataclasses.replace(LOCAL, max_requests_per_second_per_host=5)  # turns 0.2 s apart: 2 s waited
    p = test_pipeline.TestPipeline()
    out = p | beam.Create(items) | DownloadImages(config, DecodeConfig(), threads=5)
    assert_that(out.images | beam.Map(lambda d: d.row.id), equal_to([f"dog-{i}" for i in range(5)]))
    result = p.run()
    result.wait_until_finish()
    throttled = result.metrics().query(MetricsFilter().with_name(THROTTLING_COUNTER))["counters"]
    assert [c.key.metric.namespace for c in throttled] == ["imgsim"]
    assert 1 <= sum(c.committed for c in throttled) <= 2  # whole seconds; a fraction may stay behind


def test_embed_turns_predictions_into_rows_and_bad_batches_into_failures():
    images = [decoded("red"), decoded("green", (20, 200, 20), known=True), decoded("black", (0, 0, 0)),
              decoded("explode-1")]
    with test_pipeline.TestPipeline() as p:
        embedded, failures = p | beam.Create(images) | EmbedImages(FakeModelHandler(dim=8, max_batch_size=1))
        assert_that(embedded | "Rows" >> beam.Map(lambda r: (r.id, r.origin, len(r.embedding),
                                                             round(float(np.linalg.norm(r.embedding)), 4))),
                    equal_to([("red", NEW, 8, 1.0), ("green", CHANGED, 8, 1.0)]), label="rows")
        assert_that(failures | "Failures" >> beam.Map(lambda f: (f.id, f.stage, f.reason)),
                    equal_to([("black", "embed", "degenerate_embedding"), ("explode-1", "embed", "inference_error")]),
                    label="failures")


def test_embedding_rows_become_exactly_the_parquet_columns():
    row = EmbeddingRow.computed(decoded("red"), np.zeros(4, np.float32))
    assert list(row.to_dict()) == ["id", "url", "sha256", "width", "height", "embedding", "etag", "last_modified",
                                   "title"]
    with pytest.raises(ValueError, match="origin"):
        EmbeddingRow(**{**row.__dict__, "origin": "sideways"})


def test_failures_are_typed_and_their_reasons_closed():
    with pytest.raises(ValueError, match="unknown failure reason"):
        Failure("a", "u", "read", "made_up")


def test_the_whole_graph_accounts_for_every_row_with_a_fake_model(server, photos, notop_weights, tmp_path):
    """The real graph (reading, dedupe, downloads, inference bookkeeping, sinks, index, summary), fake model."""
    red = jpeg(np.full((40, 60, 3), (200, 30, 30), np.uint8))
    catalogue = [{"id": "dog", "url": server.file("/dog.jpg", photos["dog"]), "title": "a dog"},
                 {"id": "red", "url": server.file("/red.jpg", red), "title": "red"},
                 {"id": "black", "url": server.file("/black.jpg", jpeg(np.zeros((30, 30, 3), np.uint8))), "title": ""},
                 {"id": "gone", "url": server.status("/gone.jpg", 404), "title": "x"},
                 {"id": "dog", "url": server.url("/again.jpg"), "title": "repeat"},
                 {"id": "", "url": server.url("/x.jpg"), "title": "no id"}]
    manifest = write_manifest(tmp_path / "m.csv", catalogue)
    out = run_pipeline("--input", manifest, "--output", str(tmp_path / "out"), "--run-id", "fake",
                       "--layer", "pool", "--weights", notop_weights, handler=FakeModelHandler())
    summary = out["summary"]
    assert summary["accounted"] and summary["counts"]["input_rows"] == 6
    assert summary["counts"]["embedded"] == 2 and summary["counts"]["new"] == 2 and summary["counts"]["failed"] == 4
    assert summary["failures_by_reason"] == {"degenerate_embedding": 1, "duplicate_id": 1, "http_not_found": 1,
                                             "missing_id": 1}
    assert summary["index"]["published"] and summary["index"]["latest_updated"]
    assert by_id(out["embeddings"])["dog"]["title"] == "a dog"
    assert out["metrics"]["embedded"] == 2 and out["metrics"]["failed_http_not_found"] == 1


def test_storage_rows_are_read_under_the_byte_cap(tmp_path):
    from imgsim.fetch.acquire import acquire
    from imgsim.fetch.http import Fetcher
    from imgsim.records import SOURCE_STORAGE
    from imgsim.storage import ObjectStore

    (tmp_path / "small.jpg").write_bytes(jpeg(np.full((20, 20, 3), 128, np.uint8)))
    buf = io.BytesIO()
    Image.new("RGB", (800, 800)).save(buf, "BMP")
    (tmp_path / "big.bmp").write_bytes(buf.getvalue())
    (tmp_path / "empty.jpg").write_bytes(b"")
    fetcher = Fetcher(FetchConfig(max_bytes=100_000))
    outcomes = {}
    for name in ("small.jpg", "big.bmp", "empty.jpg", "missing.jpg"):
        row = CatalogueRow(id=name, url=str(tmp_path / name), source=SOURCE_STORAGE)
        result = acquire(row, fetcher, ObjectStore(), DecodeConfig()).result
        outcomes[name] = result.reason if isinstance(result, Failure) else "decoded"
    assert outcomes == {"small.jpg": "decoded", "big.bmp": "too_large", "empty.jpg": "empty_body",
                        "missing.jpg": "read_error"}


PARQUET_SCHEMA = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32()))])


def test_a_bundle_file_writes_row_groups_of_the_size_asked_and_nothing_for_no_rows(tmp_path):
    from imgsim.runs.parquet_files import BundleFile
    from imgsim.storage import ObjectStore

    rows = [{"id": f"r{i}", "vector": [float(i)] * 64} for i in range(50)]
    bundle = BundleFile(ObjectStore(), str(tmp_path / "out" / "part.parquet"), PARQUET_SCHEMA,
                        row_group_bytes=2000, batch_rows=4)  # a 4-row batch is ~1.1 KB: two make a group
    for row in rows:
        bundle.add(row)
    path = bundle.close()
    assert pq.read_table(path).to_pylist() == rows
    assert pq.ParquetFile(path).metadata.num_row_groups == 7  # six groups of eight rows, then two
    assert BundleFile(ObjectStore(), str(tmp_path / "none.parquet"), PARQUET_SCHEMA).close() is None
    assert not (tmp_path / "none.parquet").exists()


def test_commit_keeps_the_committed_files_deletes_what_failed_attempts_left_and_writes_one_empty_file(tmp_path):
    from imgsim.runs.parquet_files import commit, new_file_name
    from imgsim.storage import ObjectStore

    kept, orphan, other = (str(tmp_path / new_file_name(name)) for name in ("part", "part", "other"))
    for path in (kept, orphan, other):
        pq.write_table(pa.Table.from_pylist([{"id": path, "vector": [1.0]}], PARQUET_SCHEMA), path)
    (tmp_path / "part-notes.parquet").write_bytes(b"not ours")  # not a name this sink makes

    assert commit(ObjectStore(), str(tmp_path), "part", [kept], PARQUET_SCHEMA) == [kept]
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {os.path.basename(kept), os.path.basename(other), "part-notes.parquet"}

    empty = commit(ObjectStore(), str(tmp_path / "empty"), "part", [], PARQUET_SCHEMA)
    assert len(empty) == 1 and pq.read_table(empty[0]).schema.equals(PARQUET_SCHEMA)
    assert pq.read_table(empty[0]).num_rows == 0


def test_write_parquet_returns_the_committed_files_with_every_row_once(tmp_path):
    from imgsim.runs.parquet_files import new_file_name
    from imgsim.transforms.write_parquet import WriteParquet

    stale = tmp_path / "rows" / new_file_name("part")  # as a failed bundle attempt leaves one
    stale.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": "stale", "vector": [0.0]}], PARQUET_SCHEMA), stale)
    rows = [{"id": f"r{i}", "vector": [float(i), 1.0]} for i in range(30)]
    with test_pipeline.TestPipeline() as p:
        files = (p | beam.Create(rows) | "Write" >> WriteParquet(str(tmp_path / "rows"), "part", PARQUET_SCHEMA))
        nothing = (p | "Nothing" >> beam.Create([]).with_output_types(dict)
                   | "WriteNothing" >> WriteParquet(str(tmp_path / "none"), "part", PARQUET_SCHEMA))
        assert_that(files | beam.Map(lambda f: pq.read_table(f).to_pylist()) | beam.FlatMap(lambda r: r),
                    equal_to(rows))
        assert_that(nothing | beam.Map(lambda f: pq.read_table(f).num_rows), equal_to([0]), label="one empty file")
    assert not stale.exists()
    written = sorted(p.name for p in (tmp_path / "rows").iterdir())
    assert len(written) >= 1 and all(name.startswith("part-") and name.endswith(".parquet") for name in written)


def test_a_discarded_bundle_file_leaves_nothing_behind(tmp_path, monkeypatch):
    """A bundle that fails part-way: its local temporary file goes, and nothing reaches the output."""
    import tempfile

    from imgsim.runs.parquet_files import BundleFile
    from imgsim.storage import ObjectStore

    local = tmp_path / "local"
    local.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(local))  # where this test's BundleFile stages
    bundle = BundleFile(ObjectStore(), str(tmp_path / "part.parquet"), PARQUET_SCHEMA, row_group_bytes=1, batch_rows=1)
    bundle.add({"id": "a", "vector": [1.0]})  # one row group written to the local temporary file
    assert len(list(local.iterdir())) == 1
    bundle.discard()
    assert list(local.iterdir()) == []
    assert bundle.close() is None and not (tmp_path / "part.parquet").exists()
