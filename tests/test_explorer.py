"""The explorer in a real browser: Debian's Chromium driven by Playwright, over a site from a real run.

One run (`imgsim run --site`, the fake model) over the museum's records replayed on 127.0.0.1, each
record with an image of its own except a planted near-duplicate pair (two records, one image). The
output root is served by Python's http.server, as any static host would (it ignores Range requests,
so the thumbnail packs are read whole: the fallback path). One browser for the module.
"""
import csv
import functools
import http.server
import io
import json
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalogue_server import CatalogueServer
from conftest import jpeg
from fakes import FakeModelHandler
from pipeline_helpers import cma_api, run_pipeline

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]


def distinct_image(seed: int) -> bytes:
    """A picture of its own: an 8 x 8 grid of saturated random colours, which the fake model tells apart.

    Channels are 0 or 255, so two pictures' fake vectors have a cosine near 0.5 (uniform channels give
    0.75 with a wide spread, and among 36 pictures some pair crossed the groups threshold on one
    machine's JPEG decoder but not another's)."""
    grid = (np.random.default_rng(seed).integers(0, 2, size=(8, 8, 3)) * 255).astype(np.uint8)
    return jpeg(Image.fromarray(grid).resize((320, 240), Image.Resampling.NEAREST))


FORMULAS = {"1962.2": "=1+1", "1965.233": "@SUM(A1:A2)", "1977.43": "-2+3"}  # titles a spreadsheet would run


def plant_formulas(records):
    for record in records:
        record["title"] = FORMULAS.get(record["accession_number"], record["title"])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_directory(root: Path) -> http.server.ThreadingHTTPServer:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def site(shared, notop_weights, tmp_path_factory):
    server = CatalogueServer().start()
    records = json.loads((Path(shared) / "data" / "cma" / "artworks_page.json").read_text())["data"]
    urls = [server.file(f"/cdn/{i}.jpg", distinct_image(i)) for i in range(len(records))]
    urls[1] = urls[0]  # the planted pair: two records, the same bytes
    api = cma_api(server, shared, urls, edit=plant_formulas)
    out = tmp_path_factory.mktemp("explorer-out")
    result = run_pipeline("--input", "cma", "--cma-api-url", api, "--output", str(out), "--run-id", "r1", "--site",
                          "--weights", notop_weights, "--layer", "pool", handler=FakeModelHandler())
    assert result["summary"]["site"]["built"] and result["summary"]["site"]["stable_site_updated"]
    httpd = serve_directory(out)
    index = out / "runs" / "r1" / "index"
    neighbours = {r["id"]: r for r in pq.read_table(index / "neighbors.parquet").to_pylist()}
    yield {"base": f"http://127.0.0.1:{httpd.server_address[1]}", "records": records, "out": out,
           "cdn": f"127.0.0.1:{server.port}",
           "neighbours": neighbours, "pair": {records[0]["accession_number"], records[1]["accession_number"]},
           "shots": tmp_path_factory.mktemp("screenshots")}
    httpd.shutdown()
    httpd.server_close()
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


def open_view(page, site, hash_="", view=None):
    page.goto(f"{site['base']}/runs/r1/site/index.html{hash_}")
    page.wait_for_selector(f"main[data-ready='{view}']" if view else "main[data-ready]", timeout=15000)


def shot(page, site, name):
    path = site["shots"] / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def test_the_collection_opens_with_every_thumbnail_loaded(page, site):
    open_view(page, site, "", "collection")
    page.wait_for_function("() => { const imgs = [...document.querySelectorAll('#grid img')];"
                           " return imgs.length === 36 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
                           timeout=15000)
    sources = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => [i.dataset.source, i.naturalWidth])")
    assert all(source == "thumbnail" and width > 0 for source, width in sources)
    assert page.inner_text("h2.result-count") == "36 items"
    assert shot(page, site, "collection").stat().st_size > 10_000


def test_an_item_whose_picture_cannot_load_shows_a_placeholder_not_a_broken_image(page, site):
    """Thumbnail packs and originals both unreachable here (an index built from vectors alone has
    neither): each card's frame says "no image" instead of holding an empty or broken <img>."""
    page.route("**/thumbs/*.bin", lambda route: route.abort())
    page.route("**/cdn/*", lambda route: route.abort())
    open_view(page, site, "", "collection")
    page.wait_for_function("() => document.querySelectorAll('#grid .no-picture').length === 36", timeout=15000)
    assert page.eval_on_selector_all("#grid img", "imgs => imgs.length") == 0
    labels = page.eval_on_selector_all("#grid a.card", "cards => cards.map(c => [c.title, "
                                       "c.querySelector('.no-picture').getAttribute('aria-label')])")
    assert all(title == label for title, label in labels) and page.inner_text("#grid .no-picture") == "no image"
    shot(page, site, "no-pictures")
    open_view(page, site, "#item=1915.534", "item")  # and an item's own page
    page.wait_for_selector("article .figure .no-picture.large", timeout=15000)
    shot(page, site, "no-picture-item")


def test_an_items_neighbours_come_best_first_and_open_with_back_to_return(page, site):
    item_id = "1915.534"
    open_view(page, site, f"#item={item_id}", "item")
    assert page.inner_text("article h1") == "Nathaniel Hurd"
    assert page.get_attribute("a.record", "href") == "https://clevelandart.org/art/1915.534"
    page.wait_for_function("() => document.querySelectorAll('#neighbours a.card').length === 20")
    shown = page.eval_on_selector_all("#neighbours a.card", "cards => cards.map(c => [c.dataset.id, +c.dataset.score])")
    expected = site["neighbours"][item_id]
    assert [i for i, _ in shown] == expected["neighbor_ids"]  # the exact neighbours, in the index's order
    scores = [s for _, s in shown]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(expected["scores"][0], abs=1e-4)
    page.wait_for_function("() => [...document.querySelectorAll('#neighbours img')].every(i => i.complete && i.naturalWidth > 0)")
    shot(page, site, "item")

    first = shown[0][0]
    page.click(f"#neighbours a.card[data-id='{first}']")
    page.wait_for_selector(f"article[data-id='{first}']")
    assert first in page.url
    page.go_back()
    page.wait_for_selector(f"article[data-id='{item_id}']")


def test_the_groups_view_shows_the_planted_near_duplicate_pair(page, site):
    open_view(page, site, "#view=groups", "groups")
    groups = page.eval_on_selector_all(
        "#groups section.group", "gs => gs.map(g => [...g.querySelectorAll('a.card')].map(c => c.dataset.id))")
    assert [set(g) for g in groups] == [site["pair"]]  # the planted pair, and nothing else
    page.wait_for_function("() => [...document.querySelectorAll('#groups img')].every(i => i.complete && i.naturalWidth > 0)")
    shot(page, site, "groups")


def test_the_outliers_view_lists_the_most_isolated_first(page, site):
    """Isolation from the neighbours table: 1 - the mean cosine of an item's 10 nearest."""
    isolation = {i: 1 - np.mean(n["scores"][:10]) for i, n in site["neighbours"].items()}
    open_view(page, site, "#view=outliers", "outliers")
    shown = page.eval_on_selector_all("#outliers a.card", "cs => cs.map(c => [c.dataset.id, +c.dataset.score])")
    assert sorted(i for i, _ in shown) == sorted(isolation)
    assert [s for _, s in shown] == pytest.approx(sorted(isolation.values(), reverse=True), abs=1e-3)
    assert all(s == pytest.approx(isolation[i], abs=1e-3) for i, s in shown)
    assert page.inner_text("#outliers a.card .score").startswith("isolation ")
    # every item of a small collection is listed: the heading says so rather than count them all
    assert page.inner_text("main .toolbar h2") == "Every item, the least like any other first"
    shot(page, site, "outliers")


def test_a_title_search_finds_its_item_and_a_facet_selection_downloads_as_csv(page, site):
    open_view(page, site, "", "collection")
    page.fill("#search", "sharkey")
    page.press("#search", "Enter")
    page.wait_for_function("() => document.querySelector('main').dataset.ready === 'collection' && "
                           "document.querySelector('h2.result-count').dataset.count === '1'")
    assert page.eval_on_selector_all("#grid a.card", "cs => cs.map(c => c.dataset.id)") == ["1922.1133"]
    assert "Stag at Sharkey" in page.inner_text("#grid")

    open_view(page, site, "", "collection")
    page.check("input[data-facet='type'][data-value='Painting']")
    page.wait_for_function("() => document.querySelector('h2.result-count').dataset.count === '12'")
    with page.expect_download() as download:
        page.click("button.csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    paintings = {r["accession_number"] for r in site["records"] if r["type"] == "Painting"}
    assert len(rows) == 12 and {r["id"] for r in rows} == paintings and {r["type"] for r in rows} == {"Painting"}


def test_the_map_draws_a_point_for_every_item_and_opens_one_on_click(page, site):
    open_view(page, site, "#view=map", "map")
    page.wait_for_selector("#map[data-points]")
    assert page.get_attribute("#map", "data-points") == "36"
    shot(page, site, "map")
    page.select_option("#color-by", "type")
    page.wait_for_function("() => document.querySelectorAll('.legend span').length === 4")  # no value + 3 types
    # hover a point to see its thumbnail, then open it
    box = page.eval_on_selector("#map", "c => { const r = c.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }")
    found = page.evaluate("""([left, top, width, height]) => new Promise(async (resolve) => {
        const c = document.getElementById('map');
        for (let y = top + 4; y < top + height; y += 6) for (let x = left + 4; x < left + width; x += 6) {
          c.dispatchEvent(new MouseEvent('mousemove', {clientX: x, clientY: y, bubbles: true}));
          if (c.style.cursor === 'pointer') return resolve([x, y]);
        }
        resolve(null);
    })""", box)
    assert found is not None
    page.wait_for_selector(".tip:not([hidden]) img")
    page.mouse.click(*found)
    page.wait_for_selector("main[data-ready='item'] article")


def test_the_stable_address_forwards_to_latests_site_with_the_item(page, site):
    page.goto(f"{site['base']}/site/index.html#item=1915.534")
    page.wait_for_selector("article[data-id='1915.534']", timeout=15000)
    assert "/runs/r1/site/index.html#item=1915.534" in page.url


def test_docs_screenshot_is_present():
    """README shows the explorer: the picture it links to is in docs/."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    assert (docs / "explorer-item.png").stat().st_size > 10_000
    assert "docs/explorer-item.png" in (docs.parent / "README.md").read_text(encoding="utf-8")


# --- every control right (a test per control a curator reported broken) ---------------------------

@pytest.fixture(scope="module")
def photos(shared, notop_weights, tmp_path_factory):
    """A folder collection with path ids deep enough to be cut, more items than one page of the
    grid (120), and a title of the user's own."""
    root = tmp_path_factory.mktemp("fieldwork")
    clipart = sorted((Path(shared) / "data" / "openclipart").glob("*.png"))[:130]
    for i, source in enumerate(clipart):
        folder = root / "2019 summer fieldwork" / f"box {i % 2 + 1:02d}" / "scans"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / source.name).write_bytes(source.read_bytes())
    out = tmp_path_factory.mktemp("fieldwork-out")
    result = run_pipeline("--input", f"{root}/**/*.png", "--output", str(out), "--run-id", "p1", "--site",
                          "--title", "Fieldwork scans", "--weights", notop_weights, "--layer", "pool",
                          handler=FakeModelHandler())
    assert result["summary"]["site"]["built"]
    httpd = serve_directory(out)
    yield {"base": f"http://127.0.0.1:{httpd.server_address[1]}", "count": len(clipart)}
    httpd.shutdown()
    httpd.server_close()


def test_show_more_is_there_only_while_there_is_more_and_loads_the_rest(page, site, photos):
    open_view(page, site, "", "collection")
    page.wait_for_function("() => document.querySelectorAll('#grid a.card').length === 36")
    assert page.is_hidden("button.more")  # everything is shown: no button (a CSS rule once overrode [hidden])
    page.goto(f"{photos['base']}/runs/p1/site/index.html")
    page.wait_for_function("() => document.querySelectorAll('#grid a.card').length === 120", timeout=15000)
    assert page.is_visible("button.more")
    # A click without scrolling: scrolled near the viewport, the button loads the rest by itself
    # (infinite scroll) and hides before a pointer click could land on it.
    page.dispatch_event("button.more", "click")
    page.wait_for_function(f"() => document.querySelectorAll('#grid a.card').length === {photos['count']}")
    assert page.is_hidden("button.more")


def test_path_ids_keep_their_file_name_and_the_site_has_its_title(page, site, photos):
    page.goto(f"{photos['base']}/runs/p1/site/index.html")
    page.wait_for_selector("main[data-ready='collection']", timeout=15000)
    cards = page.eval_on_selector_all("#grid a.card", "cs => cs.map(c => [c.dataset.id, c.title, "
                                      "c.querySelector('.caption .title').textContent])")
    for item_id, title, caption in cards:
        assert title == item_id and item_id.startswith("2019 summer fieldwork/box 0")
        assert caption == "…/" + item_id.rsplit("/", 1)[1], caption  # the file name, not the folder
    assert page.inner_text(".brand") == "Fieldwork scans" and page.title().startswith("Fieldwork scans")
    open_view(page, site, "", "collection")  # no --title: the collection's name, not the run id
    assert page.inner_text(".brand") == "Cleveland Museum of Art"


def test_counts_read_as_one_item_and_many_items(page, site):
    open_view(page, site, "#view=groups", "groups")
    assert page.inner_text("main h2").startswith("1 near-duplicate group (2 items, cosine ≥ ")
    open_view(page, site, "#q=sharkey", "collection")
    page.wait_for_function("() => document.querySelector('h2.result-count').dataset.count === '1'")
    assert page.inner_text("h2.result-count") == "1 of 36 items"
    open_view(page, site, "#item=1915.534", "item")
    assert "The 20 most similar items" in page.inner_text("main")


def test_a_static_site_asks_no_api_and_no_other_host_until_the_visitor_asks(page, site):
    """Served from a plain static host, no view requests /api (it would 404 in the console) or
    anything from another host; the item page offers the original and only then fetches it."""
    asked = []
    page.on("request", lambda r: asked.append(r.url))
    for hash_, view in (("", "collection"), ("#item=1915.534", "item"), ("#view=groups", "groups"),
                        ("#view=outliers", "outliers"), ("#view=map", "map")):
        open_view(page, site, hash_, view)
        page.wait_for_load_state("networkidle")
    foreign = [u for u in asked if not u.startswith(site["base"] + "/") and not u.startswith(("blob:", "data:"))]
    assert not foreign and not [u for u in asked if "/api/" in u], (foreign, asked)

    open_view(page, site, "#item=1922.1133", "item")
    button = page.locator("button.original")
    assert button.inner_text() == f"Show the original (from {site['cdn']})"
    asked.clear()
    button.click()
    page.wait_for_function("() => { const i = document.querySelector('article img.large[data-source=url]');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    assert [u for u in asked if site["cdn"] in u and "/cdn/" in u]


def test_each_views_state_is_in_the_address_and_survives_a_reload(page, site):
    open_view(page, site, "#view=map", "map")
    page.select_option("#color-by", "type")
    page.wait_for_function("() => document.querySelectorAll('.legend span').length === 4")
    assert "color=type" in page.url
    page.reload()
    page.wait_for_selector("main[data-ready='map']", timeout=15000)
    assert page.eval_on_selector("#color-by", "s => s.value") == "type"
    page.wait_for_function("() => document.querySelectorAll('.legend span').length === 4")

    open_view(page, site, "", "collection")
    page.fill("#search", "portrait")
    page.press("#search", "Enter")
    page.wait_for_function("() => document.querySelector('main').dataset.ready === 'collection' && "
                           "document.querySelector('h2.result-count').dataset.count !== undefined")
    page.check("input[data-facet='type'][data-value='Painting']")
    page.wait_for_function("() => document.querySelector('input[data-facet=type][data-value=Painting]').checked")
    count = page.get_attribute("h2.result-count", "data-count")
    page.reload()
    page.wait_for_selector("main[data-ready='collection']", timeout=15000)
    page.wait_for_function(f"() => document.querySelector('h2.result-count').dataset.count === '{count}'")
    assert page.is_checked("input[data-facet='type'][data-value='Painting']")
    assert page.input_value("#search") == "portrait"


def test_facet_counts_follow_the_current_selection(page, site):
    open_view(page, site, "", "collection")
    whole = {r["type"] for r in site["records"]}
    counts = lambda: page.eval_on_selector_all(  # noqa: E731
        "input[data-facet='type']", "xs => Object.fromEntries(xs.map(x => [x.dataset.value, "
        "x.closest('label').querySelector('.count').textContent]))")
    assert counts() == {t: str(sum(r["type"] == t for r in site["records"])) for t in whole}
    page.fill("#search", "sharkey")
    page.press("#search", "Enter")
    page.wait_for_function("() => document.querySelector('h2.result-count').dataset.count === '1'")
    page.wait_for_function("() => document.querySelector(\"input[data-value='Painting']\")"
                           ".closest('label').querySelector('.count').textContent === '1'")
    assert counts() == {t: "1" if t == "Painting" else "0" for t in whole}  # Stag at Sharkey's is a painting


def test_csv_cells_are_never_formulas(page, site):
    open_view(page, site, "", "collection")
    page.wait_for_function("() => document.querySelector('h2.result-count').dataset.count === '36'")
    with page.expect_download() as download:
        page.click("button.csv")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert len(rows) == 36
    for item_id, formula in FORMULAS.items():
        assert rows[item_id]["title"] == "'" + formula  # shown as text by Excel, LibreOffice and Sheets
    assert all(not v.startswith(("=", "+", "-", "@")) for r in rows.values() for v in r.values() if v)


def test_neighbours_say_how_strong_they_are_with_the_score_on_hover(page, site):
    twin, other = sorted(site["pair"])
    open_view(page, site, f"#item={twin}", "item")
    page.wait_for_function("() => document.querySelectorAll('#neighbours a.card').length === 20")
    cards = page.eval_on_selector_all("#neighbours a.card", "cs => cs.map(c => [c.dataset.id, c.dataset.strength, "
                                      "+c.dataset.percentile, c.querySelector('.score').textContent, "
                                      "c.querySelector('.score').title, +c.dataset.score])")
    assert cards[0][0] == other and cards[0][1] == "near-duplicate"  # the planted pair
    labels = {"near-duplicate", "very strong", "strong", "moderate", "weak"}
    for _, label, share, text, hover, score in cards:
        assert label in labels and text.startswith(label + " · top ") and hover == f"cosine {score:.3f}"
    shares = [c[2] for c in cards]
    assert shares == sorted(shares, reverse=True) and shares[-1] < shares[1]
    assert {c[1] for c in cards[1:]} - {"near-duplicate"}  # the others are graded, not all the same word
    shot(page, site, "strengths")


def test_a_sharded_index_opens_in_the_explorer_with_its_own_neighbours(page, tmp_path):
    """The explorer reads a sharded artifact through the consumer's reader: items from every shard,
    each with the index's neighbours."""
    import imgsim
    from test_index import clustered

    ids = [f"obj-{i}" for i in range(900)]
    out = tmp_path / "out"
    imgsim.build_index(str(out), ids=ids, vectors=clustered(900, dim=16, seed=4), neighbors_k=6, run_id="sh",
                       index_shards=3, metadata={"title": [f"Object {i}" for i in range(900)]})
    imgsim.explore(str(out), str(tmp_path / "site"), cache_dir=str(tmp_path / "cache"))
    index = imgsim.ImageIndex.open(str(out), cache_dir=str(tmp_path / "cache2"))
    assert index.sharded
    httpd = serve_directory(tmp_path / "site")
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        for item_id in ("obj-0", "obj-450", "obj-899"):
            page.goto(f"{base}/index.html#item={item_id}")
            page.wait_for_selector(f"article[data-id='{item_id}']", timeout=15000)
            page.wait_for_function("() => document.querySelectorAll('#neighbours a.card').length === 6")
            shown = page.eval_on_selector_all("#neighbours a.card", "cs => cs.map(c => c.dataset.id)")
            assert shown == [m.id for m in index.neighbors(item_id)]
            assert page.inner_text("article h1") == f"Object {item_id.split('-')[1]}"
        page.goto(f"{base}/index.html#view=map")
        page.wait_for_selector("#map[data-points='900']", timeout=15000)
    finally:
        httpd.shutdown()
        httpd.server_close()
