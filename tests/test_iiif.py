"""IIIF in: Presentation 2.1 and 3.0 manifests and collections read as rows (real-world and
reference documents, and documents written with iiif-prezi3: tests/fixtures/iiif/SOURCES.md), the
Image API asked for the size the model needs (the `iiif` reference implementation's server on
127.0.0.1, and its level-0 static files), and a whole run over a collection of collections."""
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from catalogue_server import CatalogueServer
from conftest import free_port
from fakes import FakeModelHandler
from imgsim.catalogue import iiif
from imgsim.catalogue.iiif_documents import DocumentError, read_document, walk
from imgsim.fetch import iiif_image
from pipeline_helpers import read_run, run_pipeline

FIXTURES = Path(__file__).parent / "fixtures" / "iiif"
BIN = Path(sys.executable).parent


def fixture(name: str, **replace) -> dict:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    for old, new in replace.items():
        text = text.replace(old, new)
    return json.loads(text)


def cookbook(name: str) -> dict:
    """A cookbook recipe as the cookbook's site publishes it (its ids are templates)."""
    return fixture(f"cookbook-{name}.json", **{"{{ id.path }}": "https://iiif.io/api/cookbook/recipe/x",
                                               "{{ id.url }}": "https://iiif.io/api/cookbook/recipe/x/manifest.json"})


def rows_of(document: dict) -> list:
    return iiif.manifest_rows(iiif.parse(document, "https://example.org/m.json"), 0, 4096)


# --- Presentation documents -------------------------------------------------------------------------

def test_a_v3_manifest_with_an_image_service_is_one_row_per_canvas():
    (row,) = rows_of(cookbook("0005-image-service"))
    assert row.id == "https://iiif.io/api/cookbook/recipe/x/canvas/p1"
    assert row.url == "https://iiif.io/api/image/3.0/example/reference/918ecd18c2592080851777620de9bcb5-gottingen/full/max/0/default.jpg"
    assert row.metadata["iiif_service"] == "https://iiif.io/api/image/3.0/example/reference/918ecd18c2592080851777620de9bcb5-gottingen"
    assert row.metadata["title"] == "Picture of Göttingen taken during the 2019 IIIF Conference"
    assert row.metadata["manifest"] == "https://iiif.io/api/cookbook/recipe/x/manifest.json"


def test_rights_required_statement_homepage_and_metadata_pairs_travel_with_each_row():
    (rights,) = rows_of(cookbook("0008-rights"))
    assert rights.metadata["rights"] == "http://creativecommons.org/licenses/by-sa/3.0/"
    assert rights.metadata["required_statement"].startswith("Attribution: <span>Glen Robson")
    (home,) = rows_of(cookbook("0047-homepage"))
    assert home.metadata["record_url"] == "https://www.getty.edu/art/collection/object/103RQQ"
    (text,) = rows_of(cookbook("0006-text-language"))
    pairs = json.loads(text.metadata["metadata"])
    assert pairs["Creator"] == "Whistler, James Abbott McNeill"  # the English of an en/fr map


def test_language_maps_prefer_english_then_no_language_then_the_first():
    assert iiif.language_text({"fr": ["Chien"], "en": ["Dog"]}) == "Dog"
    assert iiif.language_text({"fr": ["Chien"], "none": ["D-01"]}) == "D-01"
    assert iiif.language_text({"de": ["Hund", "Köter"], "fr": ["Chien"]}) == "Hund; Köter"
    assert iiif.language_text([{"@language": "de", "@value": "Titel"}, {"@language": "en", "@value": "Title"}]) == "Title"
    assert iiif.language_text([{"@language": "de", "@value": "Titel"}, "Plain"]) == "Plain"
    assert iiif.language_text({"@value": "Only", "@language": "fr"}) == "Only"
    assert iiif.language_text(["a", "b"]) == "a; b" and iiif.language_text(None) is None


def test_choices_composites_and_books():
    (choice,) = rows_of(cookbook("0033-choice"))  # the first of the choice's images
    assert choice.url.endswith("/full/max/0/default.jpg") and "421e65be2ce95439b3ad6ef1f2ab87a9" in choice.url
    composite = rows_of(cookbook("0036-composition-from-multiple-images"))
    assert [r.id for r in composite] == ["https://iiif.io/api/cookbook/recipe/x/canvas/p1#image=1",
                                         "https://iiif.io/api/cookbook/recipe/x/canvas/p1#image=2"]
    book = rows_of(cookbook("0009-book-1"))
    assert len(book) == 5 and book[0].metadata["title"] == "Simple Manifest - Book · Blank page"
    assert [r.position for r in book] == list(range(5))


def test_real_world_v2_manifests():
    rows = rows_of(fixture("mirador-v2-fg165hz3589.json"))  # Stanford Libraries
    assert len(rows) == 5 and rows[0].id == "https://purl.stanford.edu/fg165hz3589/iiif/canvas/fg165hz3589_1"
    assert rows[0].metadata["iiif_service"] == "https://stacks.stanford.edu/image/iiif/fg165hz3589%2Ffg165hz3589_1"
    assert rows[0].metadata["required_statement"].startswith("Copyright (c) The Board of Trustees")
    assert rows[0].metadata["canvas_label"] == "Page 1"
    assert json.loads(rows[0].metadata["metadata"])  # its metadata pairs, as text
    assert len(rows_of(fixture("mirador-v2-019.json"))) == 3


def test_collections_of_both_versions_and_documents_that_are_neither():
    v3 = iiif.parse(cookbook("0032-collection"), "u")
    assert isinstance(v3, iiif.Collection) and [m.kind for m in v3.members] == ["Manifest", "Manifest"]
    v2 = iiif.parse(fixture("mirador-v2-collection.json"), "u")
    assert isinstance(v2, iiif.Collection) and len(v2.members) == 55
    parent = iiif.parse(fixture("mirador-v2-parentCollection.json"), "u")
    assert [m.kind for m in parent.members] == ["Collection"]
    with pytest.raises(ValueError, match="no type, not a Manifest or Collection"):
        iiif.parse(fixture("mirador-v2-broken.json"), "u")
    with pytest.raises(ValueError, match="not a JSON object"):
        iiif.parse([1, 2], "u")


def test_a_collection_walk_is_bounded_and_reads_each_collection_once():
    documents = {
        "c:root": {"@context": "http://iiif.io/api/presentation/3/context.json", "id": "c:root", "type": "Collection",
                   "items": [{"id": "c:a", "type": "Collection"}, {"id": "m:1", "type": "Manifest"},
                             {"id": "c:a", "type": "Collection"}, {"id": "c:gone", "type": "Collection"}]},
        "c:a": {"@context": "http://iiif.io/api/presentation/3/context.json", "id": "c:a", "type": "Collection",
                "items": [{"id": "m:2", "type": "Manifest"}, {"id": "c:root", "type": "Collection"}]},
    }
    reads = []

    def read(url):
        reads.append(url)
        if url not in documents:
            raise DocumentError(url, "http_not_found", "404")
        return iiif.parse(documents[url], url)

    found = list(walk("c:root", read))
    assert [f for f in found if isinstance(f, str)] == ["m:1", "m:2"]
    assert [(p.url, p.reason) for p in found if not isinstance(p, str)] == [("c:gone", "http_not_found")]
    assert sorted(reads) == ["c:a", "c:gone", "c:root"]  # the loop back to the root is not followed
    assert list(walk("c:root", read, max_manifests=1))[-1].detail.startswith("more than 1 manifests")


# --- the Image API ------------------------------------------------------------------------------------

def info(version=3, level=1, width=3000, height=2000, **extra):
    document = {"id" if version == 3 else "@id": "https://images.example/iiif/x", "width": width, "height": height,
                "profile": f"level{level}" if version == 3 else [f"http://iiif.io/api/image/2/level{level}.json"],
                **({"type": "ImageService3"} if version == 3 else {"@context": "http://iiif.io/api/image/2/context.json"}),
                **extra}
    return iiif_image.parse_info(document)


@pytest.mark.parametrize("resize, expected", [("pad", "/full/224,/0/default.jpg"), ("crop", "/full/,224/0/default.jpg")])
def test_the_derivative_is_the_size_the_model_measures(resize, expected):
    for version in (2, 3):
        assert iiif_image.derivative_url(info(version), resize) == "https://images.example/iiif/x" + expected
    portrait = info(width=2000, height=3000)
    assert iiif_image.derivative_url(portrait, "pad").endswith("/full/,224/0/default.jpg")
    assert iiif_image.derivative_url(portrait, "crop").endswith("/full/224,/0/default.jpg")


def test_limits_small_images_and_level_0_sizes():
    assert iiif_image.derivative_url(info(maxWidth=200), "pad").endswith("/full/200,/0/default.jpg")
    assert iiif_image.derivative_url(info(maxArea=100 * 100), "pad").endswith("/full/122,/0/default.jpg")
    assert iiif_image.derivative_url(info(width=200, height=100), "pad") is None  # nothing smaller than itself
    sizes = [{"width": 1500, "height": 1000}, {"width": 375, "height": 250}, {"width": 150, "height": 100}]
    assert iiif_image.derivative_url(info(3, 0, sizes=sizes), "pad").endswith("/full/375,250/0/default.jpg")
    assert iiif_image.derivative_url(info(2, 0, sizes=sizes), "crop").endswith("/full/375,/0/default.jpg")
    assert iiif_image.derivative_url(info(3, 0), "pad") is None  # level 0 without sizes: the image itself
    assert iiif_image.service_of_url("https://h.org/iiif/abc%2F1/full/full/0/default.jpg") == "https://h.org/iiif/abc%2F1"
    assert iiif_image.service_of_url("https://h.org/images/abc.jpg") is None


# --- a run over a IIIF collection -------------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def images(shared, tmp_path_factory):
    """The `iiif` reference implementation's test server (Image API 2.1 and 3.0, level 1) over the
    shared photos, and its level-0 static files of one of them behind a plain static server."""
    root = tmp_path_factory.mktemp("iiif-images")
    (root / "img").mkdir()
    for photo in (Path(shared) / "data" / "photos").glob("*.jpg"):
        shutil.copy(photo, root / "img" / photo.name)
    port = free_port()
    log = open(root / "server.log", "w")
    server = subprocess.Popen([str(BIN / "iiif_testserver.py"), "--host", "127.0.0.1", "--port", str(port),
                               "--image-dir", str(root / "img"), "--api-versions", "2.1,3.0", "--manipulators", "pil",
                               "-q"], stdout=log, stderr=subprocess.STDOUT, cwd=root)  # it writes a pid file
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            import requests
            if requests.get(base + "/3.0_pil/dog/info.json", timeout=2).ok:
                break
        except Exception:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            pytest.fail("the IIIF test server did not start: " + (root / "server.log").read_text()[-2000:])
        time.sleep(0.2)
    static = root / "static"
    static_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(static)))
    static_base = f"http://127.0.0.1:{static_server.server_address[1]}"
    subprocess.run([str(BIN / "iiif_static.py"), "-d", str(static), "-p", static_base, "-i", "person",
                    str(root / "img" / "person.jpg")], check=True, capture_output=True)
    threading.Thread(target=static_server.serve_forever, daemon=True).start()
    yield {"base": base, "static": static_base, "log": root / "server.log"}
    server.terminate()
    server.wait(10)
    static_server.shutdown()
    static_server.server_close()
    log.close()


def requested(images) -> list:
    return re.findall(r'"GET (\S+) HTTP', images["log"].read_text())


def test_a_run_over_a_collection_of_collections(images, notop_weights, tmp_path):
    """v3 (iiif-prezi3) and v2 (Stanford's, pointed here) manifests in a collection of collections,
    a canvas painted with two images, a level-0 service with only sizes, a broken manifest: every
    image a row with its metadata, each fetched at the size the model needs, the broken one failed."""
    docs = CatalogueServer().start()
    try:
        def serve(path, document):
            docs.route(path, lambda h, body=json.dumps(document): h.send_json(json.loads(body)))

        swap = {"http://docs.iiif.invalid": docs.url(""), "http://images.iiif.invalid": images["base"]}
        for name in ("paintings", "composite", "inner-collection", "outer-collection"):
            document = fixture(f"prezi3-{name}.json", **swap)
            serve("/" + document["id"].split("/", 3)[3], document)
        docs.route("/broken/manifest.json", lambda h: h.send(200, b"{not json", content_type="application/json"))
        stanford = fixture("mirador-v2-019.json", **{
            "https://stacks.stanford.edu/image/iiif/hg676jb4964%2F0380_796-44": images["base"] + "/2.1_pil/giraffe",
            "https://stacks.stanford.edu/image/iiif/fr426cg9537%2FSC1094_s3_b14_f17_Cats_1976_0005": images["base"] + "/2.1_pil/horses",
            "https://stacks.stanford.edu/image/iiif/rz176rt6531%2FPC0170_s3_Tree_Calendar_20081101_152516_0410": images["static"] + "/person"})
        serve("/stanford/manifest.json", stanford)
        outer = fixture("prezi3-outer-collection.json", **swap)
        outer["items"].append({"id": docs.url("/stanford/manifest.json"), "type": "Manifest"})
        serve("/outer/collection.json", outer)

        result = run_pipeline("--input", "iiif:" + docs.url("/outer/collection.json"), "--output", str(tmp_path / "out"),
                              "--run-id", "i1", "--weights", notop_weights, "--layer", "pool", "--thumbnails=false",
                              "--site", "--iiif-viewer", VIEWER, handler=FakeModelHandler())
    finally:
        docs.stop()
    summary = result["summary"]
    assert summary["accounted"] and summary["counts"]["embedded"] == 7, summary
    rows = {r["id"]: r for r in result["embeddings"].to_pylist()}
    canvas = docs.url("/paintings/canvas/1")
    assert rows[canvas]["title"] == "Two views of a dog · Front" and rows[canvas]["rights"].endswith("/zero/1.0/")
    assert rows[canvas]["record_url"] == "https://museum.example/objects/1"
    assert json.loads(rows[canvas]["metadata"]) == {"Creator": "Unknown", "Date": "c. 1900"}
    assert rows[canvas]["manifest"] == docs.url("/paintings/manifest.json")
    assert {docs.url("/composite/canvas/1#image=1"), docs.url("/composite/canvas/1#image=2")} <= set(rows)
    (failure,) = result["failures"].to_pylist()
    assert (failure["id"], failure["stage"], failure["reason"]) == (docs.url("/broken/manifest.json"), "read",
                                                                    "invalid_record")
    sizes = [p.split("/")[4] for p in requested(images) if "/full/" in p]
    assert sizes and all(s in ("224,", ",224") for s in sizes), sizes  # never the full image
    assert len(sizes) == 6  # each image of the level-1 servers once (the level-0 one is static)
    assert all(r["width"] * r["height"] <= 400 * 300 for r in rows.values())
    explorer_links_manifests_and_shows_iiif_pictures(tmp_path / "out", canvas, rows[canvas])


VIEWER = "https://viewer.example/?iiif-content={manifest}"


def explorer_links_manifests_and_shows_iiif_pictures(out: Path, item_id: str, row: dict):
    """IIIF out: the item links its manifest and the publisher's viewer; with no thumbnails kept, a
    card's picture is the service's small derivative (loaded once the visitor asks for originals)."""
    from pipeline_helpers import local_site_json

    site = out / "runs" / "i1" / "site"
    meta = local_site_json(str(site))
    assert meta["iiif"] == {"viewer": VIEWER} and meta["thumbs"]["count"] == 0
    playwright_api = pytest.importorskip("playwright.sync_api")
    from test_explorer import CHROMIUM, CHROMIUM_ARGS

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(out)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            base = f"http://127.0.0.1:{httpd.server_address[1]}/runs/i1/site/index.html"
            page.goto(f"{base}#item={item_id}")
            page.wait_for_selector("article a.manifest", timeout=15000)
            assert page.get_attribute("article a.manifest", "href") == row["manifest"]
            from urllib.parse import quote
            assert page.get_attribute("article a.viewer", "href") == VIEWER.replace("{manifest}", quote(row["manifest"], safe=""))
            page.goto(f"{base}#view=collection")
            page.wait_for_selector("#grid a.card", timeout=15000)
            card = page.eval_on_selector(f"#grid a.card[data-id='{item_id}']", "c => c.dataset.row")
            browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    cards = json.loads((site / Path(_site_data(site, "data/cards/00000.json"))).read_text())
    urls = {c[0]: c[1] for c in cards}
    assert urls[item_id] == row["iiif_service"] + "/full/,256/0/default.jpg" and card is not None


def _site_data(site: Path, path: str) -> str:
    from pipeline_helpers import site_data

    return site_data((site / "index.html").read_text(), path)


def test_an_unreadable_root_is_one_line_before_the_run(tmp_path, notop_weights):
    from imgsim.config.flags import ConfigError
    from imgsim.config.parser import parse_run_args
    from imgsim.config.preflight import preflight
    from imgsim.storage import ObjectStore

    server = CatalogueServer().start()
    try:
        for path, respond, reason in (("/gone.json", lambda h: h.send(404, b"gone"), "http_not_found"),
                                      ("/page.json", lambda h: h.send(200, b"<html>", content_type="text/html"),
                                       "invalid_record")):
            url = server.route(path, respond)
            options, _ = parse_run_args(["--input", "iiif:" + url, "--output", str(tmp_path / "out"),
                                         "--weights", notop_weights, "--layer", "pool", "--allow-private-addresses"])
            with pytest.raises(ConfigError, match=f"^--input iiif:{re.escape(url)}: {reason}: .*IIIF Presentation"):
                preflight(options, ObjectStore(), check_weights_fit=False)
    finally:
        server.stop()
    assert not (tmp_path / "out" / "runs").exists()
