"""End-to-end runs on Beam's DirectRunner: real HTTP, real Pillow, the real model and weights."""
import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from catalogue_server import CatalogueServer
from conftest import jpeg
from imgsim.runs.parquet_files import table_bytes
from pipeline_helpers import by_id, cma_api, run_pipeline, write_manifest

pytestmark = pytest.mark.model
from imgsim.runs.outputs import vectors


@pytest.fixture(scope="module")
def module_server():
    s = CatalogueServer().start()
    yield s
    s.stop()


def crop(data, box):
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    return jpeg(img.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h))))


@pytest.fixture(scope="module")
def catalogue_run(module_server, photos, notop_weights, tmp_path_factory):
    """One run over a catalogue with good, similar and broken rows."""
    s = module_server
    rows, served = [], {}
    for name, data in photos.items():
        rows.append({"id": name, "url": s.file(f"/img/{name}.jpg", data), "title": name.title(), "collection": "photos"})
        served[name] = data
    for key, box in (("giraffe-left", (0.0, 0.0, 0.8, 0.9)), ("giraffe-right", (0.15, 0.1, 1.0, 1.0))):
        served[key] = crop(photos["giraffe"], box)
        rows.append({"id": key, "url": s.file(f"/img/{key}.jpg", served[key]), "title": key, "collection": "crops"})
    broken = {
        "gone": (s.status("/img/gone.jpg", 404), "http_not_found", "download"),
        "html": (s.file("/img/page.jpg", b"<html><body>Sorry</body></html>", "text/html"), "not_an_image", "decode"),
        "truncated": (s.file("/img/truncated.jpg", photos["dog"][:5000]), "corrupt_image", "decode"),
        "empty": (s.file("/img/empty.jpg", b""), "empty_body", "download"),
        "ftp": ("ftp://127.0.0.1/x.jpg", "unsupported_scheme", "download"),
        "nourl": ("", "missing_url", "read"),
    }
    for name, (url, _, _) in broken.items():
        rows.append({"id": name, "url": url, "title": name, "collection": "broken"})
    rows.append({"id": "dog", "url": s.url("/img/kite.jpg"), "title": "second dog", "collection": "dup"})
    out = tmp_path_factory.mktemp("out")
    manifest = write_manifest(tmp_path_factory.mktemp("in") / "catalogue.csv", rows)
    result = run_pipeline("--input", manifest, "--output", str(out), "--run-id", "r1",
                          "--weights", notop_weights, "--layer", "pool", "--max-batch-size", "4")
    return {"rows": rows, "served": served, "broken": broken, "result": result}


def test_every_input_row_lands_in_exactly_one_output(catalogue_run):
    rows, result = catalogue_run["rows"], catalogue_run["result"]
    embedded = result["embeddings"].column("id").to_pylist()
    failures = result["failures"].to_pylist()
    assert len(embedded) == len(set(embedded)) == 9
    assert len(embedded) + len(failures) == len(rows)
    counts = result["summary"]["counts"]
    assert counts == {"input_rows": len(rows), "embedded": 9, "failed": len(failures), "new": 9, "changed": 0,
                      "reused": 0, "resumed": 0, "deleted": 0}
    assert result["summary"]["accounted"] is True


def test_each_bad_row_has_its_reason_and_stage(catalogue_run):
    failures = catalogue_run["result"]["failures"].to_pylist()
    by_reason = {(f["id"], f["reason"], f["stage"]) for f in failures}
    for name, (_, reason, stage) in catalogue_run["broken"].items():
        assert (name, reason, stage) in by_reason
    duplicate = [f for f in failures if f["reason"] == "duplicate_id"]
    assert len(duplicate) == 1 and duplicate[0]["url"].endswith("/img/kite.jpg")  # the later row is the repeat
    gone = next(f for f in failures if f["id"] == "gone")
    assert gone["http_status"] == 404 and gone["attempts"] == 1
    summary = catalogue_run["result"]["summary"]
    assert summary["failures_by_reason"]["duplicate_id"] == 1
    assert sum(summary["failures_by_stage"].values()) == len(failures)


def test_embeddings_carry_metadata_checksums_and_sizes(catalogue_run, photos):
    rows = by_id(catalogue_run["result"]["embeddings"])
    dog = rows["dog"]
    assert dog["title"] == "Dog" and dog["collection"] == "photos"  # the first dog row wins
    assert dog["sha256"] == hashlib.sha256(photos["dog"]).hexdigest()
    assert (dog["width"], dog["height"]) == (768, 576)
    assert len(dog["embedding"]) == 512


def test_the_model_signature_is_in_the_parquet_metadata(catalogue_run, notop_weights):
    signature = catalogue_run["result"]["signature"]
    assert (signature.model, signature.layer, signature.dim, signature.precision) == ("vgg16", "pool", 512, "fp32")
    assert signature.weights_checksum == "sha256:" + hashlib.sha256(open(notop_weights, "rb").read()).hexdigest()
    assert signature.preprocessing.startswith("vgg16-caffe/pad/224/")
    assert catalogue_run["result"]["embeddings"].schema.field("embedding").type == pa.list_(pa.float32(), 512)


def test_similar_images_land_near_each_other(catalogue_run):
    table = catalogue_run["result"]["embeddings"]
    ids = table.column("id").to_pylist()
    v = vectors(table)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    left, right = ids.index("giraffe-left"), ids.index("giraffe-right")
    unrelated = [ids.index(n) for n in ("dog", "eagle", "horses", "kite", "person", "scream")]
    assert sims[left, right] > max(sims[left, i] for i in unrelated)
    # and each crop's nearest neighbour is the other crop or the full giraffe photo
    for i in (left, right):
        nearest = ids[int(np.argsort(-sims[i])[1])]
        assert nearest in ("giraffe-left", "giraffe-right", "giraffe")


def test_summary_reports_speed_and_time(catalogue_run):
    summary = catalogue_run["result"]["summary"]
    assert summary["wall_seconds"] > 0 and summary["images_per_second"] > 0
    assert summary["input"]["kind"] == "manifest"
    assert any(f.endswith(".parquet") for f in summary["files"])


def test_jsonl_and_parquet_manifests(server, photos, notop_weights, tmp_path):
    urls = {n: server.file(f"/{n}.jpg", photos[n]) for n in ("dog", "eagle", "kite")}
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": n, "url": u, "score": i}) for i, (n, u) in enumerate(urls.items())))
    result = run_pipeline("--input", str(jsonl), "--output", str(tmp_path / "o1"), "--run-id", "j",
                          "--weights", notop_weights, "--layer", "pool", "--limit", "2")
    assert sorted(result["embeddings"].column("id").to_pylist()) == ["dog", "eagle"]
    assert by_id(result["embeddings"])["eagle"]["score"] == "1"

    table = pa.table({"id": list(urls), "url": list(urls.values()), "year": [1900, 1901, 1902]})
    pq_path = tmp_path / "m.parquet"
    pq_path.write_bytes(table_bytes(table))
    result = run_pipeline("--input", str(pq_path), "--output", str(tmp_path / "o2"), "--run-id", "p",
                          "--weights", notop_weights, "--layer", "pool")
    assert by_id(result["embeddings"])["kite"]["year"] == 1902
    assert result["embeddings"].schema.field("year").type == pa.int64()


def test_glob_input_ids_are_paths_under_the_fixed_prefix(photos, notop_weights, tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(photos["dog"])
    (root / "sub" / "b.jpg").write_bytes(photos["kite"])
    (root / "sub" / "notes.txt").write_bytes(b"not an image")
    result = run_pipeline("--input", str(root / "**"), "--output", str(tmp_path / "out"), "--run-id", "g",
                          "--weights", notop_weights, "--layer", "pool")
    assert sorted(result["embeddings"].column("id").to_pylist()) == ["a.jpg", "sub/b.jpg"]
    assert result["failures"].to_pylist()[0]["id"] == "sub/notes.txt"
    assert result["summary"]["counts"]["input_rows"] == 3


def test_museum_api_input_pages_in_parallel_and_keeps_metadata(server, shared, photos, notop_weights, tmp_path):
    image_urls = [server.file(f"/cdn/{n}.jpg", photos[n]) for n in ("dog", "eagle", "scream")]
    api = cma_api(server, shared, image_urls)
    result = run_pipeline("--input", "cma", "--cma-api-url", api, "--cma-page-size", "10", "--limit", "25",
                          "--cma-type", "Painting", "--output", str(tmp_path / "out"), "--run-id", "c",
                          "--weights", notop_weights, "--layer", "pool")
    table = result["embeddings"]
    assert table.num_rows == 12  # 12 paintings among the 36 records; limit 25 not reached
    requests = server.requests_to("/api/artworks/")
    assert sorted(int(r["query"]["skip"][0]) for r in requests if r["query"]["limit"] != ["1"]) == [0, 10]
    assert all(r["query"]["type"] == ["Painting"] for r in requests)
    row = by_id(table)["1915.534"]
    assert row["title"] == "Nathaniel Hurd" and row["type"] == "Painting"
    assert row["record_url"] == "https://clevelandart.org/art/1915.534"
    assert row["creators"][0].startswith("John Singleton Copley")
    assert result["summary"]["input"]["kind"] == "cma"


def test_museum_api_limit_is_exact(server, shared, photos, notop_weights, tmp_path):
    api = cma_api(server, shared, [server.file("/cdn/dog.jpg", photos["dog"])])
    result = run_pipeline("--input", "cma", "--cma-api-url", api, "--cma-page-size", "10", "--limit", "15",
                          "--output", str(tmp_path / "out"), "--run-id", "c", "--weights", notop_weights,
                          "--layer", "pool")
    assert result["summary"]["counts"]["input_rows"] == 15 and result["embeddings"].num_rows == 15


def test_fc2_embeddings_have_4096_dimensions(server, photos, full_weights, tmp_path):
    rows = [{"id": n, "url": server.file(f"/{n}.jpg", photos[n])} for n in ("dog", "kite")]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    result = run_pipeline("--input", manifest, "--output", str(tmp_path / "out"), "--run-id", "f",
                          "--weights", full_weights)
    assert result["signature"].layer == "fc2" and result["signature"].dim == 4096
    assert vectors(result["embeddings"]).shape == (2, 4096)
