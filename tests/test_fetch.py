"""The downloader against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""
import dataclasses
import datetime
import email.utils
import socket
import threading
import time
from typing import Callable

import pytest

from catalogue_server import CatalogueServer
from imgsim.fetch import netguard
from imgsim.failures import StageError
from imgsim.fetch.http import DEFAULT_USER_AGENT, Fetcher, FetchConfig, shared_politeness
from imgsim.fetch.politeness import HostLimiter, Politeness, ThrottleMeter

FAST = FetchConfig(connect_timeout=2, read_timeout=2, deadline=10, max_retries=2, backoff_base=1.0,
                   backoff_max=8, retry_after_max=5, allow_private_addresses=True,
                   max_requests_per_second_per_host=0)


class Sleeps(list):
    """Records the waits a Fetcher asks for instead of sleeping."""

    def __call__(self, seconds):
        self.append(seconds)


def fetcher(config=FAST, **kw):
    sleeps = Sleeps()
    return Fetcher(config, sleep=sleeps, **kw), sleeps


def failure(f, url):
    with pytest.raises(StageError) as info:
        f.fetch(url)
    return info.value


def test_downloads_bytes_with_a_descriptive_user_agent(server, photos):
    url = server.file("/dog.jpg", photos["dog"])
    f, _ = fetcher()
    result = f.fetch(url)
    assert result.data == photos["dog"] and result.status == 200 and result.attempts == 1
    assert server.requests_to("/dog.jpg")[0]["headers"]["User-Agent"] == DEFAULT_USER_AGENT
    assert "imgsim/" in DEFAULT_USER_AGENT and "+http" in DEFAULT_USER_AGENT


@pytest.mark.parametrize("code", [404, 410])
def test_gone_is_not_retried(server, code):
    url = server.status("/gone", code)
    f, sleeps = fetcher()
    error = failure(f, url)
    assert (error.reason, error.http_status, error.attempts) == ("http_not_found", code, 1)
    assert server.hits("/gone") == 1 and not sleeps


def test_other_4xx_is_a_client_error(server):
    error = failure(fetcher()[0], server.status("/forbidden", 403))
    assert (error.reason, error.http_status) == ("http_client_error", 403)


def test_5xx_recovers_on_retry_with_exponential_backoff_and_jitter(server, photos):
    url = server.sequence("/flaky", [lambda h: h.send(503, b"busy"), lambda h: h.send(500, b"oops"),
                                     lambda h: h.send(200, photos["dog"], "image/jpeg")])
    f, sleeps = fetcher()
    result = f.fetch(url)
    assert result.attempts == 3 and result.data == photos["dog"]
    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0  # equal jitter around 1 s, then 2 s


def test_retry_after_is_honoured_and_capped(server, photos):
    url = server.sequence("/limited", [lambda h: h.send(429, b"", headers={"Retry-After": "3"}),
                                       lambda h: h.send(429, b"", headers={"Retry-After": "3600"}),
                                       lambda h: h.send(200, photos["dog"], "image/jpeg")])
    f, sleeps = fetcher()
    assert f.fetch(url).attempts == 3
    assert sleeps == [3.0, 5.0]  # the second wait is capped at retry_after_max


def test_persistent_503_gives_up_after_bounded_retries(server):
    error = failure(fetcher()[0], server.status("/down", 503))
    assert (error.reason, error.http_status, error.attempts) == ("http_server_error", 503, 3)
    assert server.hits("/down") == 3


def test_persistent_429_is_rate_limited(server):
    error = failure(fetcher()[0], server.status("/slow-down", 429, Retry_After="1"))
    assert (error.reason, error.attempts) == ("http_rate_limited", 3)


def test_connection_reset_is_retried_then_reported(server):
    url = server.route("/reset", lambda h: h.reset())
    error = failure(fetcher()[0], url)
    assert (error.reason, error.attempts) == ("connection_error", 3)


def test_a_server_that_never_answers_times_out(server):
    url = server.route("/hang", lambda h: h.hang())
    config = FetchConfig(connect_timeout=1, read_timeout=0.3, max_retries=1, allow_private_addresses=True)
    error = failure(fetcher(config)[0], url)
    assert (error.reason, error.attempts) == ("timeout", 2)


def test_a_trickling_body_hits_the_overall_deadline(server):
    url = server.route("/trickle", lambda h: h.trickle(every=0.05))
    config = FetchConfig(read_timeout=5, deadline=0.8, allow_private_addresses=True)
    error = failure(fetcher(config)[0], url)
    assert error.reason == "deadline_exceeded" and error.http_status == 200


def test_byte_cap_with_content_length_stops_before_the_body(server):
    url = server.file("/huge", b"x" * 200_000)
    error = failure(fetcher(FetchConfig(max_bytes=100_000, allow_private_addresses=True))[0], url)
    assert error.reason == "too_large" and "Content-Length" in error.detail


def test_byte_cap_without_content_length_stops_while_streaming(server):
    url = server.route("/huge-chunked", lambda h: h.chunked(b"x" * 500_000))
    error = failure(fetcher(FetchConfig(max_bytes=100_000, allow_private_addresses=True))[0], url)
    assert error.reason == "too_large" and "Content-Length" not in error.detail


def test_a_chunked_body_under_the_cap_arrives_whole(server, photos):
    url = server.route("/chunked", lambda h: h.chunked(photos["kite"], piece=1000))
    assert fetcher()[0].fetch(url).data == photos["kite"]


def test_empty_body(server):
    assert failure(fetcher()[0], server.file("/empty", b"")).reason == "empty_body"


def test_redirects_are_followed_and_capped(server, photos):
    final = server.file("/final.jpg", photos["dog"])
    server.route("/hop2", lambda h: h.redirect("/final.jpg"))
    start = server.route("/hop1", lambda h: h.redirect(server.url("/hop2"), 301))
    result = fetcher()[0].fetch(start)
    assert result.data == photos["dog"] and result.url == final

    for i in range(8):
        server.route(f"/chain{i}", lambda h, i=i: h.redirect(f"/chain{i + 1}"))
    error = failure(fetcher()[0], server.url("/chain0"))
    assert error.reason == "too_many_redirects"


def test_redirect_loops_are_detected(server):
    server.route("/a", lambda h: h.redirect("/b"))
    server.route("/b", lambda h: h.redirect("/a"))
    error = failure(fetcher()[0], server.url("/a"))
    assert error.reason == "too_many_redirects" and "loop" in error.detail


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg"])
def test_redirects_to_other_schemes_are_refused(server, target):
    url = server.route("/sneaky", lambda h: h.redirect(target))
    assert failure(fetcher()[0], url).reason == "unsupported_scheme"


@pytest.mark.parametrize("url, reason", [
    ("", "invalid_url"), ("   ", "invalid_url"), ("not a url", "invalid_url"),
    ("http://", "invalid_url"), ("http://host:notaport/x", "invalid_url"),
    ("file:///etc/passwd", "unsupported_scheme"), ("ftp://example.org/a.jpg", "unsupported_scheme"),
    ("data:image/png;base64,AAAA", "unsupported_scheme"),
    ("http://no-such-host.invalid/a.jpg", "dns_error"),
])
def test_odd_urls_fail_with_a_reason(url, reason):
    assert failure(fetcher()[0], url).reason == reason


def test_loopback_is_refused_without_allow_private_addresses(server, photos):
    url = server.file("/dog.jpg", photos["dog"])
    error = failure(fetcher(FetchConfig())[0], url)
    assert error.reason == "blocked_address" and "--allow-private-addresses" in error.detail
    assert server.hits("/dog.jpg") == 0


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254",
                                     "::1", "fe80::1", "224.0.0.1", "0.0.0.0", "100.64.0.1", "::ffff:127.0.0.1"])
def test_non_public_addresses_are_blocked(address):
    assert netguard.is_blocked(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "151.101.1.69", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert not netguard.is_blocked(address)


def test_the_connected_peer_is_checked_even_when_dns_said_public(server, photos, monkeypatch):
    """DNS rebinding: the name resolved to a public address, the socket reached loopback."""
    url = server.file("/dog.jpg", photos["dog"])
    monkeypatch.setattr(netguard, "resolve", lambda host, port: ["93.184.216.34"])
    error = failure(fetcher(FetchConfig())[0], url)
    assert error.reason == "blocked_address" and "127.0.0.1" in error.detail


def test_conditional_get_returns_304_without_a_body(server):
    def respond(h):
        if h.headers.get("If-None-Match") == '"v1"':
            h.send(304, b"")
        else:
            h.send(200, b"data", headers={"ETag": '"v1"'})
    url = server.route("/cond", respond)
    f, _ = fetcher()
    first = f.fetch(url)
    assert first.etag == '"v1"'
    again = f.fetch(url, headers={"If-None-Match": first.etag})
    assert again.status == 304 and again.data == b""


def test_per_host_concurrency_is_capped(server):
    gate = threading.Event()

    def slow(h):
        gate.wait(0.3)
        h.send(200, b"ok", "text/plain")

    url = server.route("/slow", slow)
    config = FetchConfig(allow_private_addresses=True, max_connections_per_host=2,
                         max_requests_per_second_per_host=0)
    f = Fetcher(config, pool_size=8)
    threads = [threading.Thread(target=f.fetch, args=(url,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.hits("/slow") == 8 and server.max_in_flight == 2


def test_per_host_rate_limit_spaces_request_starts():
    now = [0.0]
    waits = []
    limiter = HostLimiter(4, max_requests_per_second=2, clock=lambda: now[0], sleep=waits.append)
    for _ in range(3):
        with limiter.slot("museum.example"):
            pass
    assert waits == [0.5, 1.0]  # requests two and three wait for their turn
    with limiter.slot("other.example"):
        pass
    assert waits == [0.5, 1.0]  # limits are per host


def test_robots_rules_are_honoured_per_rfc_9309(server, photos):

    config = FetchConfig(allow_private_addresses=True, respect_robots=True, max_requests_per_second_per_host=0)
    server.route("/robots.txt", lambda h: h.send(200, b"User-agent: imgsim\nDisallow: /secret/\n", "text/plain"))
    f = Fetcher(config, shared_politeness(config), pool_size=4)
    assert failure(f, server.file("/secret/a.jpg", photos["dog"])).reason == "robots_disallowed"
    assert f.fetch(server.file("/open/a.jpg", photos["dog"])).status == 200
    assert server.hits("/robots.txt") == 1 and server.hits("/secret/a.jpg") == 0


@pytest.mark.parametrize("status, allowed", [(404, True), (401, True), (503, False)])
def test_robots_unavailable_means_allow_and_unreachable_means_disallow(server, photos, status, allowed):

    config = FetchConfig(allow_private_addresses=True, respect_robots=True, max_requests_per_second_per_host=0,
                         backoff_base=0.01)
    server.status("/robots.txt", status)
    f = Fetcher(config, shared_politeness(config), pool_size=2)
    url = server.file("/a.jpg", photos["dog"])
    if allowed:
        assert f.fetch(url).status == 200
    else:
        assert failure(f, url).reason == "robots_disallowed"


def test_a_robots_answer_that_comes_after_the_callers_deadline_is_a_deadline():
    """The race a loaded machine runs: a robots.txt fetch that timed out ("unreachable": disallow all)
    finishes while the caller's own deadline is up, and the caller's thread wakes late to find it.
    The caller's deadline ended that download, so it says so (not robots_disallowed)."""
    from imgsim.fetch import politeness

    def unreachable(url):
        raise StageError("deadline_exceeded", "robots.txt not complete")

    later = iter(range(0, 1000, 10))  # each reading of the clock is 10 s after the one before
    policy = politeness.RobotsPolicy(unreachable, DEFAULT_USER_AGENT, clock=lambda: float(next(later)))
    with pytest.raises(StageError, match="robots.txt not read within the deadline") as late:
        policy.allowed("http://example.org/a.jpg", timeout=5.0)
    assert late.value.reason == "deadline_exceeded"
    assert policy.allowed("http://example.org/b.jpg") is False  # without a deadline: the answer, disallow


# --- the deadline bounds the whole download ------------------------------------------------------

DEADLINE = 2.0
MARGIN = 1.5  # the watchdog ends a download at its deadline; this allows for a loaded machine
STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
HEAD_REST = b"Content-Type: image/jpeg\r\nContent-Length: 3\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\nabc"


def deadline_config(**kw):
    """Read timeouts the trickles never trip (a byte every 0.5 s), a short deadline, retries left."""
    return dataclasses.replace(FAST, **{"connect_timeout": 2, "read_timeout": 2, "deadline": DEADLINE,
                                        "max_retries": 2, **kw})


def timed_failures(cases: dict) -> dict:
    """name -> (StageError or None, seconds) for (fetcher, url) cases fetched at the same time."""
    outcomes = {}

    def run(name, f, url):
        started = time.monotonic()
        try:
            f.fetch(url)
            outcomes[name] = (None, time.monotonic() - started)
        except StageError as e:
            outcomes[name] = (e, time.monotonic() - started)

    threads = [threading.Thread(target=run, args=(name, f, url)) for name, (f, url) in cases.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


@pytest.fixture
def silent_listener():
    """A TCP port whose kernel accepts connections (the backlog) but nobody ever reads or answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/never.jpg"


def test_the_deadline_bounds_every_stage_of_a_download(server, silent_listener):
    """Trickled status line, trickled headers, a redirect to a trickle, a server that never answers and
    a port that accepts and never reads (plain and TLS; timeouts longer than the deadline), a robots.txt
    that trickles: each ends as deadline_exceeded within the deadline, all at once."""
    server.route("/slow-status", lambda h: h.trickle_head(STATUS_LINE + HEAD_REST, every=0.5))
    server.route("/slow-headers", lambda h: h.trickle_head(HEAD_REST, every=0.5, sent_at_once=STATUS_LINE))
    server.route("/hop", lambda h: h.redirect("/slow-status"))
    server.route("/silent", lambda h: h.hang())
    robots_host = CatalogueServer().start()
    try:
        robots_host.route("/robots.txt", lambda h: h.trickle_head(STATUS_LINE + HEAD_REST, every=0.5))
        f = Fetcher(deadline_config(), sleep=Sleeps())
        patient = Fetcher(deadline_config(connect_timeout=30, read_timeout=30), sleep=Sleeps())
        robots = deadline_config(respect_robots=True)
        polite = Fetcher(robots, shared_politeness(robots), sleep=Sleeps())
        outcomes = timed_failures({
            "status line": (f, server.url("/slow-status")),
            "headers": (f, server.url("/slow-headers")),
            "redirect target": (f, server.url("/hop")),
            "never answers": (patient, server.url("/silent")),
            "never reads": (patient, silent_listener),
            "TLS handshake never answered": (patient, silent_listener.replace("http://", "https://")),
            "robots.txt": (polite, robots_host.url("/a.jpg")),
        })
    finally:
        robots_host.stop()
    wrong = {name: (e and e.reason, round(seconds, 2)) for name, (e, seconds) in outcomes.items()
             if e is None or e.reason != "deadline_exceeded" or not DEADLINE - 0.2 <= seconds <= DEADLINE + MARGIN}
    assert len(outcomes) == 7 and not wrong, wrong
    assert "not complete after 2s" in outcomes["status line"][0].detail
    assert server.hits("/slow-status") == 2 and server.hits("/hop") == 1  # the deadline ends retries too
    assert robots_host.hits("/a.jpg") == 0


def test_a_reused_connection_is_watched_too(server, photos):
    """The second download reuses the pooled keep-alive connection (no connect()): request() attaches it."""
    server.file("/dog.jpg", photos["dog"])
    ports = []

    def slow_after_dog(h):
        ports.append(h.client_address[1])
        h.trickle_head(HEAD_REST, every=0.5, sent_at_once=STATUS_LINE)

    def dog(h):
        ports.append(h.client_address[1])
        h.send(200, photos["dog"], "image/jpeg")

    server.route("/dog-logged.jpg", dog)
    server.route("/slow", slow_after_dog)
    f = Fetcher(deadline_config(max_retries=0, deadline=1.0), sleep=Sleeps())
    assert f.fetch(server.url("/dog-logged.jpg")).data == photos["dog"]
    started = time.monotonic()
    assert failure(f, server.url("/slow")).reason == "deadline_exceeded"
    assert time.monotonic() - started <= 1.0 + MARGIN
    assert len(ports) == 2 and ports[0] == ports[1], "the connection was not reused"


def test_a_dns_lookup_that_hangs_ends_at_the_deadline(monkeypatch):
    """getaddrinfo has no timeout; a resolver that never answers must not hold the download (nor close())."""
    release = threading.Event()
    monkeypatch.setattr(netguard, "resolve", lambda host, port: release.wait(30) and ["93.184.216.34"])
    f = Fetcher(dataclasses.replace(FAST, deadline=1.0), sleep=Sleeps())
    try:
        started = time.monotonic()
        error = failure(f, "http://stuck-resolver.example/a.jpg")
        assert error.reason == "deadline_exceeded" and "DNS" in error.detail
        assert time.monotonic() - started <= 1.0 + MARGIN
        f.close()  # the abandoned lookup blocks nothing
        assert time.monotonic() - started <= 1.0 + MARGIN
    finally:
        release.set()


def test_a_connection_made_after_the_deadline_is_not_used(server, monkeypatch):
    """urllib3 resolves the name again while connecting, beyond the watchdog's reach; a connection
    that opens after the deadline passed must end at once, not serve a trickle unwatched."""
    url = server.route("/slow", lambda h: h.trickle_head(HEAD_REST, every=0.5, sent_at_once=STATUS_LINE))
    real_getaddrinfo = socket.getaddrinfo

    def slow_in_urllib3(*args, **kwargs):
        if not threading.current_thread().name.startswith("imgsim-dns"):  # our own lookup stays fast
            time.sleep(1.0)
        return real_getaddrinfo(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_in_urllib3)
    f = Fetcher(deadline_config(deadline=0.5, connect_timeout=30, read_timeout=30), sleep=Sleeps())
    started = time.monotonic()
    assert failure(f, url).reason == "deadline_exceeded"
    assert time.monotonic() - started <= 1.0 + MARGIN
    assert server.hits("/slow") == 0


def test_the_rate_limit_wait_never_passes_the_deadline():
    now = [0.0]
    waits = []
    limiter = HostLimiter(1, max_requests_per_second=0.2, clock=lambda: now[0], sleep=waits.append)
    with limiter.slot("museum.example", timeout=1):
        pass
    with pytest.raises(StageError) as info:
        with limiter.slot("museum.example", timeout=1):
            pass
    assert info.value.reason == "deadline_exceeded" and waits == []  # refused at once, not slept
    with limiter.slot("museum.example", timeout=10):
        pass
    assert waits == [5.0]  # the refused request took no turn


# --- time spent throttled --------------------------------------------------------------------------

def test_the_throttle_meter_hands_over_whole_seconds_and_keeps_the_rest():
    now = [0.0]
    meter = ThrottleMeter()
    limiter = HostLimiter(4, max_requests_per_second=2, clock=lambda: now[0], sleep=lambda s: None)
    for _ in range(3):
        with limiter.slot("museum.example", meter=meter):
            pass
    assert meter.take_whole_seconds() == 1  # 0.5 + 1.0 waited
    assert meter.take_whole_seconds() == 0  # the half second is kept...
    with limiter.slot("museum.example", meter=meter):  # ...and joins the next wait, 1.5 s
        pass
    assert meter.take_whole_seconds() == 2 and meter.take_whole_seconds() == 0


def test_a_fetcher_counts_host_limit_waits_and_retry_sleeps_as_throttled(server, photos):
    url = server.file("/dog.jpg", photos["dog"])
    limited = server.sequence("/limited", [lambda h: h.send(429, b"", headers={"Retry-After": "3"}),
                                           lambda h: h.send(200, photos["dog"], "image/jpeg")])
    limiter = HostLimiter(8, max_requests_per_second=2, clock=lambda: 0.0, sleep=lambda s: None)  # time stands
    f = Fetcher(FAST, Politeness(limiter), sleep=Sleeps())
    for _ in range(3):
        f.fetch(url)  # the second and third wait 0.5 s and 1 s for their turn
    assert f.throttled.take_whole_seconds() == 1
    f.fetch(limited)  # 3 s of Retry-After, and two more turns (1.5 s, 2 s)
    assert f.throttled.take_whole_seconds() == 7


# --- odd header values ------------------------------------------------------------------------------

def raw_response(*header_lines: bytes, body: bytes = b"x" * 16, status: bytes = STATUS_LINE) -> Callable:
    return lambda h: h.raw(status + b"".join(line + b"\r\n" for line in header_lines) + b"\r\n" + body)


@pytest.mark.parametrize("value", ["\u00b2", "12, 13", "1_000", "-1", "0x10", " "])
def test_a_malformed_content_length_is_a_protocol_error(server, value):
    url = server.route("/odd", raw_response(b"Content-Type: image/jpeg", b"Content-Length: " + value.encode("latin-1")))
    f, sleeps = fetcher()
    error = failure(f, url)
    assert (error.reason, error.attempts) == ("protocol_error", 1) and "Content-Length" in error.detail
    assert server.hits("/odd") == 1 and not sleeps


@pytest.mark.parametrize("name", ["\u00b2".encode("utf-8"), b"bad name", b"\xff"])
def test_a_malformed_header_name_is_a_protocol_error_not_lost_headers(server, name):
    """Python's parser stops at a malformed header line and silently drops the rest (Content-Length
    included): the response cannot be trusted."""
    url = server.route("/odd-name", raw_response(b"Content-Type: image/jpeg", name + b": x",
                                                 b"Content-Length: 16"))
    f, sleeps = fetcher()
    error = failure(f, url)
    assert (error.reason, error.attempts) == ("protocol_error", 1), error
    assert "malformed header line" in error.detail and "headers after it would be lost" in error.detail
    assert server.hits("/odd-name") == 1 and not sleeps


def test_a_redirect_whose_location_is_not_utf8_fails_with_a_clear_reason(server):
    url = server.route("/moved", lambda h: h.raw(b"HTTP/1.1 302 Found\r\nLocation: /\xff\xfe(x.jpg\r\n"
                                                 b"Content-Length: 0\r\n\r\n"))
    error = failure(fetcher()[0], url)
    assert error.reason == "invalid_url" and "Location that is not UTF-8" in error.detail, error


def test_a_repeated_equal_content_length_is_fine(server):
    url = server.route("/twice", raw_response(b"Content-Length: 16, 16", b"Content-Length: 16"))
    assert fetcher()[0].fetch(url).data == b"x" * 16


@pytest.mark.parametrize("response", [
    raw_response(*[b"X-Header-%d: a" % i for i in range(150)]),  # more headers than http.client takes
    raw_response(b"X-Long: " + b"a" * 70_000),  # a header line longer than http.client takes
    raw_response(status=b"HTTP/1.1 two hundred OK\r\n"),  # a status line that is not one
], ids=["too many headers", "header line too long", "bad status line"])
def test_a_response_that_breaks_http_is_a_protocol_error(server, response):
    url = server.route("/broken", response)
    f, sleeps = fetcher()
    assert failure(f, url).reason == "protocol_error"
    assert server.hits("/broken") == 1 and not sleeps


def test_a_malformed_retry_after_falls_back_to_exponential_backoff(server, photos):
    url = server.sequence("/limited", [lambda h: h.send(429, b"", headers={"Retry-After": "\u00b2"}),
                                       lambda h: h.send(503, b"", headers={"Retry-After": "soon"}),
                                       lambda h: h.send(200, photos["dog"], "image/jpeg")])
    f, sleeps = fetcher()
    assert f.fetch(url).attempts == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0


@pytest.fixture
def eastern_time(monkeypatch):
    """A local zone five hours behind UTC, so that a date read in local time instead of UTC is noticed."""
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("zone", ["-0000", "GMT", "+0200", "-0700"])
def test_retry_after_dates_are_read_in_their_zone(server, photos, eastern_time, zone):
    def retry_in_3s(h):
        when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3)
        if zone == "-0000":
            value = email.utils.format_datetime(when.replace(tzinfo=None))  # "-0000": UTC, zone unknown
        elif zone == "GMT":
            value = email.utils.format_datetime(when, usegmt=True)
        else:
            hours = int(zone[:3])
            value = email.utils.format_datetime(when.astimezone(datetime.timezone(datetime.timedelta(hours=hours))))
        assert value.endswith(zone)
        h.send(503, b"", headers={"Retry-After": value})

    url = server.sequence("/later", [retry_in_3s, lambda h: h.send(200, photos["dog"], "image/jpeg")])
    f, sleeps = fetcher(dataclasses.replace(FAST, retry_after_max=60))
    assert f.fetch(url).attempts == 2
    assert 1.5 <= sleeps[0] <= 3.5, sleeps


def test_a_robots_txt_that_breaks_http_disallows_its_host(server, photos):
    """RFC 9309 2.3.1.4: a robots.txt that cannot be read (here: a malformed Content-Length) means
    disallow all; reported per URL as robots_disallowed, with robots.txt asked once."""
    config = FetchConfig(allow_private_addresses=True, respect_robots=True, max_requests_per_second_per_host=0)
    server.route("/robots.txt", raw_response(b"Content-Length: \xb2", body=b"User-agent: *\nAllow: /\n"))
    f = Fetcher(config, shared_politeness(config), pool_size=2)
    for name in ("a", "b"):
        assert failure(f, server.file(f"/{name}.jpg", photos["dog"])).reason == "robots_disallowed"
    assert server.hits("/robots.txt") == 1 and server.hits("/a.jpg") == 0


# --- address guard: IPv6 forms that embed an IPv4 address ------------------------------------------

@pytest.mark.parametrize("address", [
    "::127.0.0.1", "::10.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::c0a8:101",  # NAT64: loopback, metadata server, private
    "64:ff9b:1::808:808",  # local-use NAT64 (RFC 8215) is never public
    "2002:c0a8:0101::", "2002:7f00:1::1", "2002:a9fe:a9fe::",  # 6to4 of 192.168.1.1, 127.0.0.1, 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client is 127.0.0.1
    "::ffff:10.0.0.1",
    "::ffff:0:7f00:1", "::ffff:0:a00:1",  # IPv4-translated (SIIT, RFC 6145) loopback and private
    "fec0::1", "fec0:1234::5",  # site-local (deprecated, still routed inside some networks)
])
def test_ipv6_addresses_that_embed_a_private_ipv4_address_are_blocked(address):
    assert netguard.is_blocked(address)


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:0808:0808::", "::ffff:8.8.8.8", "::8.8.8.8",
                                     "::ffff:0:808:808"])
def test_ipv6_addresses_that_embed_a_public_ipv4_address_are_public(address):
    assert not netguard.is_blocked(address)


# --- robots.txt by RFC 9309 -------------------------------------------------------------------------

RFC_5_1 = """User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot
"""


@pytest.mark.parametrize("robots, checks", [
    (RFC_5_1, [  # RFC 9309 5.1: groups by product token, merged agents, an empty group, "*"
        ("foobot", "/example/page.html", True), ("foobot", "/example/allowed.gif", True),
        ("foobot", "/example/other.html", False), ("foobot", "/", False),
        ("barbot", "/example/page.html", False), ("bazbot", "/example/page.html", False),
        ("barbot", "/example/other.html", True), ("quxbot", "/example/page.html", True),
        ("imgsim", "/a/b.gif", False), ("imgsim", "/a/b.gif?size=2", True), ("imgsim", "/example/x.jpg", False),
        ("imgsim", "/publications/x.jpg", True),
    ]),
    ("User-Agent: foobot\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n", [  # 5.2
        ("foobot", "/example/page/", True), ("foobot", "/example/page/disallowed.gif", False),
    ]),
    ("User-agent: imgsim\nDisallow: /images/\nAllow: /images/public/\nDisallow: /*.jpg$\n", [
        ("imgsim", "/images/public/a.png", True),  # the longest match wins, not the first
        ("imgsim", "/images/private/a.png", False), ("imgsim", "/a/b.jpg", False), ("imgsim", "/a/b.jpeg", True),
        ("imgsim", "/a/b.jpg?size=2", True), ("imgsim", "/images/public/b.jpg", True),
    ]),
    ("User-agent: IMGSIM\nDisallow: /same/\nAllow: /same/\n", [  # allow wins a tie; agents match any case
        ("imgsim", "/same/a.jpg", True), ("imgsim", "/other/a.jpg", True),
    ]),
    ("User-agent: imgsim\nDisallow: /foo/bar/baz\nDisallow: /jp/\u30c4\nDisallow: /path/file-with-a-%2A.html\n"
     "Disallow: /path/foo-%24\n", [  # 2.2.2 and 2.2.3: percent-encoding is normalised on both sides
        ("imgsim", "/foo/bar/%62%61%7A", False), ("imgsim", "/jp/%E3%83%84", False),
        ("imgsim", "/path/file-with-a-*.html", False), ("imgsim", "/path/file-with-a-b.html", True),
        ("imgsim", "/path/foo-$", False), ("imgsim", "/path/foo-x", True),
    ]),
], ids=["rfc-5.1", "rfc-5.2-longest-match", "wildcards-and-order", "tie-and-case", "percent-encoding"])
def test_robots_txt_is_matched_as_rfc_9309_says(server, robots, checks):
    server.route("/robots.txt", lambda h: h.send(200, robots.encode(), "text/plain"))
    fetchers = {}
    for agent, path, allowed in checks:
        if agent not in fetchers:  # each crawler its own policy: robots.txt is read once per crawler
            config = dataclasses.replace(FAST, respect_robots=True, max_retries=0,
                                         user_agent=f"{agent}/1.0 (+https://example.org/{agent})")
            fetchers[agent] = Fetcher(config, shared_politeness(config))
        hits = server.hits(path.split("?")[0])
        error = failure(fetchers[agent], server.url(path))  # allowed paths reach the server: 404
        assert error.reason == ("http_not_found" if allowed else "robots_disallowed"), (agent, path)
        assert server.hits(path.split("?")[0]) - hits == (1 if allowed else 0) or "%" in path, (agent, path)
    assert server.hits("/robots.txt") == len(fetchers)
