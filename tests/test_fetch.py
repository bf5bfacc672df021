"""The downloader against a real HTTP server on 127.0.0.1 that misbehaves on purpose."""
import threading

import pytest

from imgsim.fetch import netguard
from imgsim.failures import StageError
from imgsim.fetch.http import DEFAULT_USER_AGENT, Fetcher, FetchConfig, shared_politeness
from imgsim.fetch.politeness import HostLimiter

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


# --- address guard: IPv6 forms that embed an IPv4 address ------------------------------------------

@pytest.mark.parametrize("address", [
    "::127.0.0.1", "::10.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::c0a8:101",  # NAT64: loopback, metadata server, private
    "64:ff9b:1::808:808",  # local-use NAT64 (RFC 8215) is never public
    "2002:c0a8:0101::", "2002:7f00:1::1", "2002:a9fe:a9fe::",  # 6to4 of 192.168.1.1, 127.0.0.1, 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client is 127.0.0.1
    "::ffff:10.0.0.1",
])
def test_ipv6_addresses_that_embed_a_private_ipv4_address_are_blocked(address):
    assert netguard.is_blocked(address)


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:0808:0808::", "::ffff:8.8.8.8", "::8.8.8.8"])
def test_ipv6_addresses_that_embed_a_public_ipv4_address_are_public(address):
    assert not netguard.is_blocked(address)
