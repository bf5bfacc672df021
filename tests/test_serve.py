"""`imgsim serve` over real HTTP: a real `imgsim serve` process on 127.0.0.1, asked with requests."""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from PIL import Image

import imgsim
from conftest import jpeg
from pipeline_helpers import local_site_json, run_pipeline, site_data, write_manifest
from test_index import clustered


class Served:
    """A running `imgsim serve --port 0`; its address is the one it prints."""

    def __init__(self, *args: str, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "imgsim", "serve", "--port", "0", "-q", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=180)
        except queue.Empty:
            self.stop()
            pytest.fail("imgsim serve printed no address: " + self.proc.stderr.read()[-2000:])
        assert line.startswith("imgsim serve: http://127.0.0.1:"), line
        self.url = line.split()[2]

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def vectors_service(tmp_path_factory):
    """An index of vectors made elsewhere (no VGG16 behind them): everything but search by image."""
    root = tmp_path_factory.mktemp("serve")
    ids = [f"obj/{i}" for i in range(120)]  # a slash in ids: routes take the whole rest of the path
    imgsim.build_index(str(root / "out"), ids=ids, vectors=clustered(120, dim=16), neighbors_k=5, run_id="v1",
                       metadata={"title": [f"Object {i}" for i in range(120)],
                                 "type": ["Painting" if i % 2 else "Print" for i in range(120)]})
    env = {**os.environ, "IMGSIM_CACHE_DIR": str(root / "cache")}
    served = Served("--index", str(root / "out"), "--max-upload-mb", "1", env=env)
    yield served.url
    served.stop()


def test_health_similar_and_items(vectors_service):
    base = vectors_service
    health = requests.get(base + "healthz", timeout=30).json()
    assert {k: health[k] for k in ("ok", "run_id", "count", "search")} == {"ok": True, "run_id": "v1", "count": 120, "search": False}
    similar = requests.get(base + "api/similar/obj/7", params={"k": 4}, timeout=30).json()
    assert [r["rank"] for r in similar["results"]] == [1, 2, 3, 4]
    assert "obj/7" not in [r["id"] for r in similar["results"]]
    scores = [r["score"] for r in similar["results"]]
    assert scores == sorted(scores, reverse=True)
    item = requests.get(base + "api/items/obj/7", timeout=30).json()
    assert item["metadata"]["title"] == "Object 7" and len(item["neighbors"]) == 5
    # one meaning of rank: the exact list and the search agree, the item itself left out of both
    assert [n["id"] for n in item["neighbors"][:4]] == [r["id"] for r in similar["results"]]
    assert [n["rank"] for n in item["neighbors"]] == [1, 2, 3, 4, 5]
    with_self = requests.get(base + "api/similar/obj/7", params={"k": 2, "include_self": "true"}, timeout=30).json()
    assert [(r["id"], r["rank"]) for r in with_self["results"]][0] == ("obj/7", 0) and len(with_self["results"]) == 3


@pytest.mark.parametrize("method, path, kwargs, status, words", [
    ("get", "api/similar/nope", {}, 404, "id 'nope' is not in the index"),
    ("get", "api/items/nope", {}, 404, "no item 'nope'"),
    ("get", "api/similar/obj/1?k=0", {}, 422, "greater than or equal to 1"),
    ("post", "api/search", {"files": {"image": ("a.jpg", b"x" * (2 * 1024 * 1024), "image/jpeg")}}, 413, "larger than"),
    ("post", "api/search", {"data": {"url": "http://127.0.0.1/x.jpg"}}, 501, "search by image is not available"),
    ("get", "api/nothing-here", {}, 404, "Not Found"),
])
def test_errors_are_json_with_their_status(vectors_service, method, path, kwargs, status, words):
    answer = getattr(requests, method)(vectors_service + path, timeout=30, **kwargs)
    assert answer.status_code == status and answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["status"] == status and words in body["error"]


def test_the_explorer_is_served_at_the_root(vectors_service):
    page = requests.get(vectors_service, timeout=30)
    assert page.status_code == 200 and 'app.js"></script>' in page.text
    assert page.headers["cache-control"] == "no-cache"
    data = requests.get(vectors_service + site_data(page.text), timeout=30)
    assert data.headers["cache-control"] == "public, max-age=31536000, immutable"  # a build never changes
    site = data.json()
    assert site["count"] == 120 and [f["name"] for f in site["facets"]] == ["type"]


@pytest.mark.model
def test_search_by_upload_and_by_url_finds_the_image_itself_first(server, photos, notop_weights, tmp_path):
    rows = [{"id": n, "url": server.file(f"/img/{n}.jpg", data), "title": n} for n, data in photos.items()]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    run_pipeline("--input", manifest, "--output", str(out), "--run-id", "m1", "--weights", notop_weights,
                 "--layer", "pool")
    env = {**os.environ, "IMGSIM_CACHE_DIR": str(tmp_path / "cache")}
    guarded = Served("--index", str(out), "--max-image-pixels", "600000", env=env)
    try:
        found = requests.post(guarded.url + "api/search", params={"k": 3}, timeout=120,
                              files={"image": ("dog.jpg", photos["dog"], "image/jpeg")}).json()
        assert found["source"] == "upload" and found["results"][0]["id"] == "dog"
        assert found["results"][0]["score"] > 0.99 and len(found["results"]) == 3
        # the address guard of the pipeline: a loopback URL is refused unless allowed
        refused = requests.post(guarded.url + "api/search", json={"url": rows[0]["url"]}, timeout=60)
        assert refused.status_code == 400 and "blocked_address" in refused.json()["error"]
        big = jpeg(Image.new("RGB", (1000, 1000), (200, 10, 10)))
        too_many = requests.post(guarded.url + "api/search", timeout=60, files={"image": ("big.jpg", big, "image/jpeg")})
        assert too_many.status_code == 413 and "decompression_bomb" in too_many.json()["error"]
    finally:
        guarded.stop()
    trusting = Served("--index", str(out), "--allow-private-addresses", "--url-deadline", "15", env=env)
    try:
        by_url = requests.post(trusting.url + "api/search", json={"url": server.url("/img/eagle.jpg")}, timeout=120)
        assert by_url.status_code == 200 and by_url.json()["results"][0]["id"] == "eagle"

        # a tarpit (headers, then a byte every half second) holds every URL slot; uploads still pass
        tarpit = server.route("/tarpit.jpg", lambda h: h.trickle(every=0.5, total=100_000))
        answers = {}

        def by_tarpit(n):
            answers[n] = requests.post(trusting.url + "api/search", json={"url": tarpit}, timeout=120)

        held = [threading.Thread(target=by_tarpit, args=(n,)) for n in range(4)]  # the service's 4 URL slots
        for thread in held:
            thread.start()
        deadline = time.monotonic() + 60
        while server.hits("/tarpit.jpg") < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.hits("/tarpit.jpg") == 4
        busy = requests.post(trusting.url + "api/search", json={"url": tarpit}, timeout=30)
        assert busy.status_code == 503 and "busy" in busy.json()["error"]
        upload = requests.post(trusting.url + "api/search", params={"k": 1}, timeout=60,
                               files={"image": ("dog.jpg", photos["dog"], "image/jpeg")})
        assert upload.status_code == 200 and upload.json()["results"][0]["id"] == "dog"
        assert all(thread.is_alive() for thread in held)  # answered while the tarpit still held its slots
        for thread in held:
            thread.join(120)
        assert sorted(a.status_code for a in answers.values()) == [504] * 4, [a.text for a in answers.values()]
        assert all("deadline" in a.json()["error"] for a in answers.values())
    finally:
        trusting.stop()


def test_a_backend_other_than_the_index_s_is_refused_before_serving(tmp_path, capsys):
    from imgsim.cli import main
    from test_index import clustered, embeddings_table, publish_table

    out = str(tmp_path / "out")
    publish_table(embeddings_table(clustered(30)), out, "r1")  # a keras (vgg16 pool) signature
    assert main(["serve", "--index", out, "--backend", "openvino", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use backend 'keras'" in err[0], err


def test_a_sharded_index_is_served_with_its_explorer(tmp_path):
    """The HTTP API and the explorer both read a sharded index through the consumer's readers: the
    site's neighbours are the index's own, shard boundaries and all."""
    from fastapi.testclient import TestClient

    from imgsim.explorer.site_format import fnv1a32, item_buckets
    from imgsim.service.server import ServeSettings, prepare

    ids = [f"s{i}" for i in range(600)]
    imgsim.build_index(str(tmp_path / "out"), ids=ids, vectors=clustered(600, dim=16, seed=3), neighbors_k=5,
                       run_id="sh1", index_shards=3, metadata={"title": [f"Sharded {i}" for i in range(600)]})
    app, follower, site = prepare(ServeSettings(index=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache")))
    with follower.use() as served:
        assert served.index.sharded
        expected = {i: [m.id for m in served.index.neighbors(i)] for i in ("s0", "s299", "s599")}
    client = TestClient(app, base_url="http://localhost")
    assert client.get("/healthz").json()["count"] == 600
    similar = client.get("/api/similar/s42", params={"k": 3}).json()["results"]
    assert "s42" not in [r["id"] for r in similar] and [r["rank"] for r in similar] == [1, 2, 3]
    page = client.get("/")
    assert page.status_code == 200
    meta = client.get("/" + site_data(page.text)).json()
    assert meta["count"] == 600 and meta["title_field"] == "title"
    cards = [row for shard in range(meta["cards"]["shards"])
             for row in client.get("/" + site_data(page.text, f"data/cards/{shard:05d}.json")).json()]
    for item_id, neighbours in expected.items():
        bucket = fnv1a32(item_id) % item_buckets(600)
        item = client.get("/" + site_data(page.text, f"data/items/{bucket:05d}.json")).json()[item_id]
        assert [cards[row][0] for row, _ in item["n"]] == neighbours


def test_two_output_roots_with_the_same_run_id_get_their_own_explorers(tmp_path, monkeypatch):
    """The explorer cache was keyed by run id alone: two roots with a run r1 showed each other's."""
    from imgsim.service.server import ServeSettings, prepare

    monkeypatch.setenv("IMGSIM_CACHE_DIR", str(tmp_path / "imgsim-cache"))
    sites = {}
    for name, n in (("a", 40), ("b", 50)):
        imgsim.build_index(str(tmp_path / name), ids=[f"{name}{i}" for i in range(n)],
                           vectors=clustered(n, dim=8, seed=n), run_id="r1", neighbors_k=3)
        _, _, sites[name] = prepare(ServeSettings(index=str(tmp_path / name), cache_dir=str(tmp_path / "c")))
    assert sites["a"] != sites["b"]
    counts = {name: local_site_json(site)["count"] for name, site in sites.items()}
    assert counts == {"a": 40, "b": 50}
