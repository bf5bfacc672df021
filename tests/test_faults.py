"""The fault-injection suite: a whole catalogue of broken, hostile and awkward rows through one
pipeline run. Nothing is lost (every row ends embedded or failed), nothing gets in (odd schemes,
internal addresses, bombs), and each fault ends with its own reason. The faults are in fetching and
decoding, so the runs use the fake model (tests/fakes.py) and stay in the fast tier."""
import io

import numpy as np
import pytest
from PIL import Image

from catalogue_server import CatalogueServer
from conftest import jpeg, png
from fakes import FakeModelHandler
from pipeline_helpers import by_id, read_run, run_pipeline, write_manifest
from test_images import bomb_png


@pytest.fixture(scope="module")
def servers():
    main, other = CatalogueServer().start(), CatalogueServer().start()
    yield main, other
    main.stop()
    other.stop()


def awkward_images(photos) -> dict[str, tuple[bytes, str]]:
    cmyk = Image.new("CMYK", (300, 200), (0, 200, 200, 0))
    sixteen = Image.fromarray((np.linspace(0, 65535, 200 * 300).reshape(200, 300)).astype(np.uint16))
    palette = Image.new("P", (120, 120), 1)
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    palette.paste(0, (0, 0, 60, 120))
    gif = io.BytesIO()
    frames = [Image.new("RGB", (80, 80), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = jpeg(Image.open(io.BytesIO(photos["horses"])), exif=exif.tobytes())
    panorama = jpeg(Image.open(io.BytesIO(photos["kite"])).resize((6000, 300)))
    return {
        "cmyk_jpeg": (jpeg(cmyk), "image/jpeg"),
        "png_16_bit": (png(sixteen), "image/png"),
        "palette_transparent": (png(palette, transparency=0), "image/png"),
        "animated_gif": (gif.getvalue(), "image/gif"),
        "exif_rotated": (rotated, "image/jpeg"),
        "grayscale": (jpeg(Image.open(io.BytesIO(photos["giraffe"])).convert("L")), "image/jpeg"),
        "panorama": (panorama, "image/jpeg"),
    }


@pytest.fixture(scope="module")
def fault_run(servers, photos, notop_weights, tmp_path_factory):
    s, other = servers
    dog, eagle = photos["dog"], photos["eagle"]  # both under the 1 MB cap used here
    ok = lambda data: (lambda h: h.send(200, data, "image/jpeg"))  # noqa: E731
    big = b"\xff\xd8" + b"x" * (2 * 1024 * 1024)
    expected, rows = {}, []

    def add(row_id, url, outcome):
        rows.append({"id": row_id, "url": url})
        expected[row_id] = outcome

    add("ok", s.file("/ok.jpg", dog), "embedded")
    add("http_404", s.status("/404.jpg", 404), "http_not_found")
    add("http_410", s.status("/410.jpg", 410), "http_not_found")
    add("recovers_from_5xx", s.sequence("/flaky.jpg", [lambda h: h.send(500, b"x"), lambda h: h.send(503, b"x"),
                                                      ok(eagle)]), "embedded")
    add("retry_after_honoured", s.sequence("/429.jpg", [lambda h: h.send(429, b"", headers={"Retry-After": "30"}),
                                                        ok(dog)]), "embedded")
    add("always_503", s.status("/503.jpg", 503), "http_server_error")
    add("always_429", s.status("/429-forever.jpg", 429, Retry_After="1"), "http_rate_limited")
    add("connection_reset", s.route("/reset.jpg", lambda h: h.reset()), "connection_error")
    # The first attempt's read timeout (2 s) passes; the retry, begun by 3 s, meets the 4 s deadline.
    add("never_answers", s.route("/hang.jpg", lambda h: h.hang()), "timeout")
    add("slow_loris", s.route("/trickle.jpg", lambda h: h.trickle(every=0.05, total=10 ** 6)), "deadline_exceeded")
    add("slow_headers", s.route("/slow-head.jpg", lambda h: h.trickle_head(
        b"Content-Type: image/jpeg\r\nX-Padding: " + b"p" * 60 + b"\r\n\r\n", every=0.5,
        sent_at_once=b"HTTP/1.1 200 OK\r\n")), "deadline_exceeded")
    add("malformed_content_length", s.route("/odd-length.jpg", lambda h: h.raw(
        b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: \xb2\r\n\r\n" + dog)), "protocol_error")
    add("oversized_with_length", s.file("/big.jpg", big), "too_large")
    add("oversized_chunked", s.route("/big-chunked.jpg", lambda h: h.chunked(big)), "too_large")
    s.route("/hop2", lambda h: h.redirect("/ok.jpg"))
    add("redirect_chain", s.route("/hop1", lambda h: h.redirect(s.url("/hop2"), 301)), "embedded")
    s.route("/loop-b", lambda h: h.redirect("/loop-a"))
    add("redirect_loop", s.route("/loop-a", lambda h: h.redirect("/loop-b")), "too_many_redirects")
    for i in range(10):
        s.route(f"/chain{i}", lambda h, i=i: h.redirect(f"/chain{i + 1}"))
    add("redirect_chain_too_long", s.url("/chain0"), "too_many_redirects")
    add("redirect_to_file", s.route("/to-file", lambda h: h.redirect("file:///etc/passwd")), "unsupported_scheme")
    add("html_page", s.file("/page.jpg", b"<!doctype html><html><body>Login</body></html>", "text/html"),
        "not_an_image")
    add("empty_body", s.file("/empty.jpg", b""), "empty_body")
    add("truncated_jpeg", s.file("/truncated.jpg", dog[: len(dog) // 3]), "corrupt_image")
    add("decompression_bomb", s.file("/bomb.png", bomb_png(60_000, 60_000), "image/png"), "decompression_bomb")
    for name, (data, kind) in awkward_images(photos).items():
        add(name, s.file(f"/awkward/{name}", data, kind), "embedded")
    add("file_url", "file:///etc/passwd", "unsupported_scheme")
    add("ftp_url", "ftp://127.0.0.1/image.jpg", "unsupported_scheme")
    add("malformed_url", "http://exa mple.com:port/x.jpg", "invalid_url")
    add("no_host", "http:///x.jpg", "invalid_url")
    add("empty_url", "", "missing_url")
    add("unresolvable_host", "http://no-such-host.invalid/x.jpg", "dns_error")
    other.route("/robots.txt", lambda h: h.send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain"))
    add("robots_disallowed", other.file("/private/x.jpg", dog), "robots_disallowed")
    add("robots_allowed", other.file("/public/y.jpg", eagle), "embedded")
    rows.append({"id": "ok", "url": s.url("/404.jpg")})  # a repeated id: reported, processed once

    manifest = write_manifest(tmp_path_factory.mktemp("faults") / "catalogue.csv", rows)
    # Deadline 6 s with 1 s reads: two retries of a quick 5xx (backoff up to 1 s, then 2 s) always fit,
    # a server that never answers times out twice and gives up, a trickle hits the deadline.
    result = run_pipeline(
        "--input", manifest, "--output", str(tmp_path_factory.mktemp("out")), "--run-id", "faults",
        "--weights", notop_weights, "--layer", "pool", "--respect-robots",
        "--connect-timeout", "1", "--read-timeout", "1", "--download-deadline", "6", "--max-retries", "2",
        "--retry-after-max", "1", "--max-download-mb", "1", "--max-image-pixels", "100000000",
        "--decode-memory-mb", "1300",
        "--max-redirects", "5", "--no-index", handler=FakeModelHandler())
    return {"rows": rows, "expected": expected, "result": result, "servers": servers}


@pytest.mark.model  # the slow tier
def test_every_row_is_accounted_for_exactly_once(fault_run):
    result = fault_run["result"]
    embedded = result["embeddings"].column("id").to_pylist()
    failures = result["failures"].to_pylist()
    assert len(embedded) == len(set(embedded))
    assert len(embedded) + len(failures) == len(fault_run["rows"])
    summary = result["summary"]
    assert summary["accounted"] and summary["counts"]["input_rows"] == len(fault_run["rows"])
    assert summary["counts"]["failed"] == sum(summary["failures_by_reason"].values()) == len(failures)


@pytest.mark.model  # the slow tier
def test_each_fault_ends_as_expected(fault_run):
    result = fault_run["result"]
    outcome = {row_id: "embedded" for row_id in result["embeddings"].column("id").to_pylist()}
    for failure in result["failures"].to_pylist():
        if failure["reason"] != "duplicate_id":
            outcome[failure["id"]] = failure["reason"]
    wrong = {k: (v, outcome.get(k)) for k, v in fault_run["expected"].items() if outcome.get(k) != v}
    assert not wrong, wrong
    duplicates = [f for f in result["failures"].to_pylist() if f["reason"] == "duplicate_id"]
    assert [d["id"] for d in duplicates] == ["ok"]


def test_retries_are_bounded_and_recorded(fault_run):
    s, _ = fault_run["servers"]
    failures = {f["id"]: f for f in fault_run["result"]["failures"].to_pylist() if f["reason"] != "duplicate_id"}
    assert failures["always_503"]["attempts"] == 3 and failures["always_503"]["http_status"] == 503
    assert s.hits("/503.jpg") == 3 and s.hits("/flaky.jpg") == 3
    assert failures["http_404"]["attempts"] == 1 and s.hits("/404.jpg") == 1  # the duplicate row never fetched
    assert failures["slow_loris"]["detail"].startswith("body not complete")


def test_awkward_images_are_embedded_with_their_displayed_size(fault_run):
    rows = by_id(fault_run["result"]["embeddings"])
    assert (rows["exif_rotated"]["width"], rows["exif_rotated"]["height"]) == (512, 773)
    assert (rows["panorama"]["width"], rows["panorama"]["height"]) == (6000, 300)
    vectors = np.array([rows[k]["embedding"] for k in ("cmyk_jpeg", "png_16_bit", "palette_transparent",
                                                       "animated_gif", "grayscale")])
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_robots_txt_was_read_once_per_host(fault_run):
    _, other = fault_run["servers"]
    assert other.hits("/robots.txt") == 1 and other.hits("/private/x.jpg") == 0


def test_loopback_is_refused_unless_allowed(server, photos, notop_weights, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "dog", "url": server.file("/dog.jpg", photos["dog"])},
                                                   {"id": "meta", "url": "http://169.254.169.254/computeMetadata/v1/"}])
    run_pipeline("--input", manifest, "--output", str(tmp_path / "out"), "--run-id", "guarded",
                 "--weights", notop_weights, "--layer", "pool", "--no-index", allow_private_addresses=False,
                 handler=FakeModelHandler())
    failures = by_id(read_run(str(tmp_path / "out"), "guarded")["failures"])
    assert failures["dog"]["reason"] == failures["meta"]["reason"] == "blocked_address"
    assert "--allow-private-addresses" in failures["dog"]["detail"]
    assert server.hits("/dog.jpg") == 0
