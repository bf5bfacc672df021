"""gs:// for real: a GCS API emulator on 127.0.0.1 behind Beam's sinks, the artifact and the consumer."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgsim.index.artifact import ArtifactError
from imgsim.index.latest import read_latest
from imgsim.index.consumer import ImageIndex
from imgsim.storage import ObjectStore, PreconditionFailed
from imgsim.cli import main
from pipeline_helpers import read_run, run_pipeline, site_data, write_manifest
from test_index import FailingStore, clustered, embeddings_table, publish_table


def client_blob(store: ObjectStore, path: str):
    """The object's metadata as GCS stores it (content type, cache control)."""
    bucket, name = path[len("gs://"):].split("/", 1)
    return store.client.bucket(bucket).get_blob(name)


@pytest.fixture
def bucket(gcs):
    gcs.wipe()
    return f"gs://{gcs.bucket}"


def test_object_store_round_trip(bucket):
    store = ObjectStore()
    store.write_bytes(f"{bucket}/a/x.txt", b"one")
    store.write_bytes(f"{bucket}/a/b/y.txt", b"two")
    assert store.read_bytes(f"{bucket}/a/x.txt") == b"one" and store.exists(f"{bucket}/a/b/y.txt")
    assert store.glob(f"{bucket}/a/*.txt") == [f"{bucket}/a/x.txt"]
    assert store.glob(f"{bucket}/a/**") == [f"{bucket}/a/b/y.txt", f"{bucket}/a/x.txt"]
    _, generation = store.read_with_generation(f"{bucket}/a/x.txt")
    store.write_bytes(f"{bucket}/a/x.txt", b"three", if_generation_match=generation)
    with pytest.raises(PreconditionFailed):
        store.write_bytes(f"{bucket}/a/x.txt", b"four", if_generation_match=generation)
    with pytest.raises(PreconditionFailed):
        store.write_bytes(f"{bucket}/a/x.txt", b"five", if_generation_match=0)  # must not exist yet
    assert store.read_bytes(f"{bucket}/a/x.txt") == b"three"
    assert store.delete_prefix(f"{bucket}/a") == 2 and not store.exists(f"{bucket}/a/x.txt")
    store.delete(f"{bucket}/a/x.txt")  # absent: not an error


def test_parquet_bundles_commit_on_gcs(bucket):
    """The run's Parquet sink (imgsim.runs.parquet_files) on gs://: upload, list, delete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgsim.runs.parquet_files import BundleFile, commit, new_file_name
    store, schema = ObjectStore(), pa.schema([("id", pa.string())])
    bundles = []
    for rows in (["a", "b"], ["c"], ["d"]):  # the last one's attempt failed: never committed
        bundle = BundleFile(store, f"{bucket}/out/{new_file_name('part')}", schema)
        for row_id in rows:
            bundle.add({"id": row_id})
        bundles.append(bundle.close())
    assert commit(store, f"{bucket}/out", "part", bundles[:2], schema) == sorted(bundles[:2])
    assert store.glob(f"{bucket}/out/*.parquet") == sorted(bundles[:2])
    ids = [r["id"] for path in sorted(bundles[:2]) for r in pq.read_table(store.open_read(path)).to_pylist()]
    assert sorted(ids) == ["a", "b", "c"]


@pytest.mark.model
def test_pipeline_publishes_to_gcs_and_query_answers_from_it(bucket, server, photos, notop_weights,
                                                              weights_cache, tmp_path):
    store = ObjectStore()
    store.upload_file(notop_weights, f"{bucket}/models/notop.weights.h5")
    rows = [{"id": n, "url": server.file(f"/{n}.jpg", photos[n]), "title": n} for n in ("dog", "eagle", "kite", "scream")]
    local_manifest = write_manifest(tmp_path / "m.csv", rows)
    store.upload_file(local_manifest, f"{bucket}/in/m.csv")
    output = f"{bucket}/imgsim"
    code = main(["run", "--output", output, "--input", f"{bucket}/in/m.csv", "--run-id", "g1",
                 "--weights", f"{bucket}/models/notop.weights.h5", "--layer", "pool", "--allow-private-addresses"])
    assert code == 0
    summary = read_run(output, "g1")["summary"]
    assert summary["accounted"] and summary["counts"]["embedded"] == 4
    assert summary["index"]["published"] and summary["index"]["latest_updated"]
    latest = json.loads(store.read_bytes(f"{output}/LATEST"))
    assert latest["run_id"] == "g1" and latest["index"] == "runs/g1/index"
    manifest = json.loads(store.read_bytes(f"{output}/runs/g1/index/manifest.json"))
    for name in manifest["files"]:
        assert store.exists(f"{output}/runs/g1/index/{name}")
    assert manifest["model_signature"]["weights"] == f"{bucket}/models/notop.weights.h5"

    proc = subprocess.run([sys.executable, "-m", "imgsim", "query", "--index", output, "--id", "eagle", "-k", "2",
                           "--include-self", "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=300,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 3 and lines[0]["id"] == "eagle" and lines[0]["metadata"]["title"] == "eagle"
    assert [line["rank"] for line in lines] == [0, 1, 2]
    assert lines[0]["score"] == pytest.approx(1.0, abs=1e-4) and lines[0]["score"] >= lines[1]["score"]

    # a query by image embeds with the model the manifest names (the gs:// weights) and finds the photo
    image = tmp_path / "kite.jpg"
    image.write_bytes(photos["kite"])
    index = ImageIndex.open(output, cache_dir=str(tmp_path / "cache"))
    assert index.search_image(str(image), k=1)[0].id == "kite"


def test_concurrent_publishers_on_gcs_never_overwrite_each_other(bucket):
    out = f"{bucket}/concurrent"
    store = ObjectStore()
    publish_table(embeddings_table(clustered(40, seed=1)), out, "first")
    seen = read_latest(store, out)
    publish_table(embeddings_table(clustered(40, seed=2)), out, "fast")
    report = publish_table(embeddings_table(clustered(40, seed=3)), out, "slow", generation=seen.generation)
    assert not report["latest_updated"] and "LATEST changed" in report["latest"]
    assert read_latest(store, out).run_id == "fast"


def test_a_failed_publish_on_gcs_leaves_latest_untouched(bucket, tmp_path):
    out = f"{bucket}/failing"
    publish_table(embeddings_table(clustered(40, seed=1)), out, "good")
    before = ObjectStore().read_with_generation(f"{out}/LATEST")
    with pytest.raises(ConnectionError):
        publish_table(embeddings_table(clustered(40, seed=2)), out, "broken", store=FailingStore(fail_at=2))
    assert ObjectStore().read_with_generation(f"{out}/LATEST") == before
    assert ImageIndex.open(out, cache_dir=str(tmp_path / "c")).run_id == "good"


def test_on_gcs_opening_through_latest_checks_the_manifest_it_pins(bucket, tmp_path):
    """A manifest replaced after publishing (its listed files still verify) is refused through LATEST."""
    out = f"{bucket}/pinned"
    store = ObjectStore()
    publish_table(embeddings_table(clustered(40, seed=1)), out, "p1")
    manifest_path = f"{out}/runs/p1/index/manifest.json"
    manifest = json.loads(store.read_bytes(manifest_path))
    store.write_bytes(manifest_path, json.dumps({**manifest, "count": 41}).encode())
    with pytest.raises(ArtifactError, match="not the manifest LATEST pins"):
        ImageIndex.open(out, cache_dir=str(tmp_path / "c"))
    assert ImageIndex.open(out, run_id="p1", cache_dir=str(tmp_path / "c")).run_id == "p1"


def test_a_sharded_index_on_gcs_is_verified_and_read_shard_by_shard(bucket, tmp_path, capsys):
    """Published to gs:// (verified where it landed, shard by shard), opened lazily: a query copies
    only the files it needs; a shard file replaced on the bucket is refused when it is needed."""
    import imgsim

    vectors = clustered(800, dim=16, seed=21)
    output = f"{bucket}/sharded"
    report = imgsim.build_index(output, ids=[f"item-{i}" for i in range(800)], vectors=vectors, run_id="s1",
                                index_shards=3)
    assert report["latest_updated"] and report["sharding"]["shards"] == 3
    index = ImageIndex.open(output, cache_dir=str(tmp_path / "cache"))
    fetched = lambda: sorted(os.path.relpath(os.path.join(d, f), index.local_dir)  # noqa: E731
                             for d, _, files in os.walk(index.local_dir) for f in files)
    assert fetched() == ["manifest.json"]
    assert index.search(vectors[[5]], k=1, shards_to_search=1)[0][0].id == "item-5"
    assert "centroids.npy" in fetched() and any(f.startswith("shards/") and "scann" in f for f in fetched())
    assert main(["verify", "--index", output]) == 0
    capsys.readouterr()

    entry = index.manifest["shards"][1]
    ObjectStore().write_bytes(f"{output}/runs/s1/index/{entry['dir']}/vectors.npy", b"not the vectors")
    fresh = ImageIndex.open(output, cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(ArtifactError, match="vectors.npy does not match the manifest"):
        fresh.vectors()
    assert main(["verify", "--index", output]) == 1
    assert "vectors.npy does not match the manifest" in capsys.readouterr().err


def test_the_explorer_publishes_to_a_bucket_with_content_types_and_cache_headers(bucket, tmp_path):
    """`imgsim explore --output gs://...`: what a bucket's public website serves as is. Each build is
    a folder cached for a year; the entry page, revalidated on every visit, names the newest; a
    rebuild keeps the previous build for visitors still on the old page and deletes older ones."""
    import imgsim
    from imgsim.explorer import site_format
    from imgsim.explorer.forward import point_site_at

    output = f"{bucket}/museum"
    imgsim.build_index(output, ids=[f"item-{i}" for i in range(300)], vectors=clustered(300, dim=16, seed=3),
                       run_id="r1", neighbors_k=5)
    site = f"{output}/site"
    store = ObjectStore()
    blob = lambda path: client_blob(store, path)  # noqa: E731
    builds = []
    for attempt in range(3):
        assert main(["explore", "--index", output, "--output", site, "--title", f"Museum {attempt}",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
        page = store.read_bytes(f"{site}/index.html").decode()
        builds.append(site_format.build_of(page))
        entry = blob(f"{site}/index.html")
        assert entry.content_type == "text/html; charset=utf-8" and entry.cache_control == "no-cache"
        root = f"{site}/{site_format.build_dir(builds[-1])}"
        assert f'src="{site_format.build_dir(builds[-1])}app.js"' in page
        expected = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
                    "data/site.json": "application/json", "data/cards/00000.json": "application/json",
                    "data/search/00000.txt": "text/plain; charset=utf-8", "data/map.bin": "application/octet-stream"}
        for rel, content_type in expected.items():
            got = blob(root + rel)
            assert got is not None, (rel, store.list(root))
            assert (got.content_type, got.cache_control) == (content_type, "public, max-age=31536000, immutable"), rel
        assert json.loads(store.read_bytes(root + "data/site.json"))["title"] == f"Museum {attempt}"
    assert len(set(builds)) == 3
    left = {path[len(site) + 3:].split("/", 1)[0] for path in store.list(f"{site}/b")}
    assert left == set(builds[1:])  # the newest and the one before it

    assert point_site_at(store, output, "r1")  # `run --site`'s stable address: an entry point too
    forwarder = blob(f"{output}/site/index.html")
    assert forwarder.cache_control == "no-cache" and "runs/r1/site/index.html" in forwarder.download_as_text()


@pytest.mark.model  # the slow tier
def test_a_run_publishes_its_explorer_to_a_website_bucket(bucket, notop_weights):
    """`run --site --site-output gs://...`: the scheduled run refreshes a public site in place."""
    from fakes import FakeModelHandler
    from imgsim.explorer import site_format

    store = ObjectStore()
    for i in range(12):
        image = Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8))
        sink = io.BytesIO()
        image.save(sink, format="PNG")
        store.write_bytes(f"{bucket}/in/{i:02d}.png", sink.getvalue(), "image/png")
    public = f"{bucket}/public-site"
    builds = []
    for run in ("w1", "w2"):
        result = run_pipeline("--input", f"{bucket}/in/*.png", "--output", f"{bucket}/imgsim", "--run-id", run,
                              "--site", "--site-output", public, "--title", "Scans", "--layer", "pool",
                              "--weights", notop_weights,
                              handler=FakeModelHandler())
        site = result["summary"]["site"]
        assert site["built"] and site["site"] == public and site["count"] == 12
        page = store.read_bytes(f"{public}/index.html").decode()
        builds.append(site_format.build_of(page))
        assert json.loads(store.read_bytes(f"{public}/{site_data(page)}"))["run_id"] == run
        assert client_blob(store, f"{public}/index.html").cache_control == "no-cache"
    assert builds[0] != builds[1] and not store.exists(f"{bucket}/imgsim/runs/w2/site/index.html")
