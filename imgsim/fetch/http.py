"""Downloading one URL politely, safely and within bounds, without Beam.

A Fetcher turns a URL into bytes or a StageError with a stable reason code.
It owns one requests.Session (connection reuse) and enforces:
- connect and read timeouts per socket operation, plus an overall deadline
  per download that bounds all of it (DNS, the waits for host limits and
  robots.txt, connect, status line, headers, body, every redirect hop, retry
  and backoff): socket timeouts are capped by the time left, and the
  Fetcher's watchdog (imgsim.fetch.deadline) shuts down the sockets of a
  download that is still going at its deadline, so a server that trickles its
  answer one byte at a time cannot hold a worker thread;
- bounded retries with exponential backoff and jitter on connection errors,
  timeouts, 429 and 5xx, honouring Retry-After up to a cap;
- a byte cap enforced while streaming (Content-Length is checked first, but
  not trusted), and a response whose Content-Length or header lines break
  HTTP fails as protocol_error instead of being guessed at;
- redirects followed by hand, so that the scheme, the address guard and
  robots.txt are re-checked on every hop, with loops detected;
- the per-host limits of a shared HostLimiter. The time spent waiting on them
  and on retries is added to `Fetcher.throttled` for the Beam layer to report.
"""
from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import datetime
import email.utils
import hashlib
import http.client
import random
import re
import socket
import threading
import time
from typing import Callable, Mapping, Optional
from urllib.parse import urljoin

import requests
import urllib3

from imgsim import __version__
from imgsim.failures import StageError
from imgsim.fetch import netguard
from imgsim.fetch.deadline import BackgroundCalls, DeadlinePassed, Download, Watchdog
from imgsim.fetch.politeness import HostLimiter, Politeness, RobotsPolicy, ThrottleMeter

DEFAULT_USER_AGENT = (
    f"imgsim/{__version__} (image-similarity pipeline; +https://github.com/imgsim/imgsim)")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_DNS_TTL_SECONDS = 60.0
# Socket timeouts end this long after the deadline, so that the watchdog ends a download first.
_DEADLINE_SLACK = 0.25
_DIGITS = re.compile(r"[0-9]+")  # ASCII only, unlike str.isdigit and int()


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 120.0
    max_bytes: int = 50 * 1024 * 1024
    max_retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT
    allow_private_addresses: bool = False
    max_connections_per_host: int = 8
    max_requests_per_second_per_host: float = 20.0
    respect_robots: bool = False

    def __post_init__(self):
        for name in ("connect_timeout", "read_timeout", "deadline"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if self.max_retries < 0 or self.max_redirects < 0:
            raise ValueError("max_retries and max_redirects must not be negative")


@dataclasses.dataclass(frozen=True)
class FetchResult:
    data: bytes
    status: int
    attempts: int
    url: str  # after redirects
    etag: Optional[str] = None
    last_modified: Optional[str] = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class _Retryable(Exception):
    def __init__(self, error: StageError, retry_after: Optional[float] = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class Fetcher:
    """Thread-safe: one Fetcher serves all download threads of a DoFn instance."""

    def __init__(self, config: FetchConfig = FetchConfig(), politeness: Optional[Politeness] = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random, pool_size: int = 16):
        """politeness: shared host limits and robots rules (default: limits of this Fetcher's own)."""
        self.config = config
        politeness = politeness or Politeness(HostLimiter(config.max_connections_per_host,
                                                          config.max_requests_per_second_per_host))
        self._limiter = politeness.limiter
        self._robots = politeness.robots
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self.throttled = ThrottleMeter()
        self._watchdog = Watchdog(clock)
        self._lookups = BackgroundCalls(workers=4, name="imgsim-dns")
        self._session = _make_session(config, pool_size, self._watchdog.attach)
        self._dns_lock = threading.Lock()
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._dns_lookups: dict[tuple[str, int], concurrent.futures.Future] = {}

    def close(self):
        self._watchdog.close()
        self._session.close()

    def limited_by(self, limiter: HostLimiter) -> "Fetcher":
        """This Fetcher (its connections, DNS cache, robots rules and throttle meter) under other
        host limits: a lane's share (imgsim.fetch.lanes). Close only the original."""
        view = copy.copy(self)
        view._limiter = limiter
        return view

    def fetch(self, url: str, headers: Optional[Mapping[str, str]] = None) -> FetchResult:
        """GET url; a 304 answer to conditional headers returns an empty 304 result.

        The whole download (DNS, waits for the host's limits and robots.txt,
        connect, status, headers, body, every redirect hop, retry and backoff)
        ends within config.deadline, plus the moment the watchdog needs."""
        deadline = self._clock() + self.config.deadline
        attempts = 0
        with self._watchdog.download(deadline) as download:
            while True:
                attempts += 1
                try:
                    result = self._attempt(url, headers or {}, download)
                    if download.expired:  # a body read until close may have been cut short
                        raise self._past_deadline("the download")
                    return dataclasses.replace(result, attempts=attempts)
                except _Retryable as retry:
                    error = self._past_deadline("the download") if self._is_past(download) else retry.error
                    wait = self._wait_before_retry(attempts, retry.retry_after)
                    # Retry only when a whole attempt (the wait, then up to a read timeout) still fits
                    # before the deadline: a retry the deadline would cut short proves nothing, and
                    # the reason then depends on the jitter instead of on what the server did.
                    if (error is not retry.error or attempts > self.config.max_retries
                            or self._clock() + wait + self.config.read_timeout + _DEADLINE_SLACK > deadline):
                        error.attempts = attempts
                        raise error from None
                    self._sleep(wait)
                    self.throttled.add(wait)
                except StageError as error:
                    error.attempts = attempts
                    raise
                except Exception:
                    # Whatever a socket shut down by the watchdog made a library raise.
                    if not self._is_past(download):
                        raise
                    error = self._past_deadline("the download")
                    error.attempts = attempts
                    raise error from None

    def _wait_before_retry(self, attempts: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.config.retry_after_max)
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempts - 1))
        return ceiling * (0.5 + self._rand() / 2)  # "equal jitter": spread, but never zero

    def _attempt(self, url: str, headers: Mapping[str, str], download: Download) -> FetchResult:
        current, seen = url, {url}
        for _ in range(self.config.max_redirects + 1):
            _, host, port = netguard.split_url(current)
            addresses = self._resolve(host, port, download)
            if not self.config.allow_private_addresses:
                netguard.check_addresses(host, addresses)
            if self._robots is not None and not self._robots.allowed(current, timeout=self._left(download)):
                raise StageError("robots_disallowed", current[:300])
            with self._limiter.slot(host, timeout=self._left(download), meter=self.throttled):
                try:
                    response = self._send(current, headers, download)
                    try:
                        status = response.status_code
                        if status in REDIRECT_STATUSES:
                            current = self._redirect_target(current, response, seen)
                            continue
                        self._raise_for_status(response)
                        data = b"" if status == 304 else self._read_body(response, download)
                        if not data and status != 304:
                            raise StageError("empty_body", f"{status} with no bytes", http_status=status)
                        return FetchResult(data=data, status=status, attempts=1, url=current,
                                           etag=response.headers.get("ETag"),
                                           last_modified=response.headers.get("Last-Modified"))
                    finally:
                        response.close()
                finally:
                    download.release_connections()
        raise StageError("too_many_redirects", f"more than {self.config.max_redirects} redirects")

    @staticmethod
    def _redirect_target(current: str, response: requests.Response, seen: set) -> str:
        status = response.status_code
        location = response.headers.get("Location")
        if not location:
            raise StageError("invalid_url", f"{status} redirect without Location", http_status=status)
        try:
            target = urljoin(current, location.strip())
        except ValueError as e:
            raise StageError("invalid_url", f"{status} redirect to a malformed Location: {e}",
                             http_status=status) from None
        if target in seen:
            raise StageError("too_many_redirects", f"redirect loop at {target[:300]}", http_status=status)
        seen.add(target)
        return target

    def _send(self, url: str, headers: Mapping[str, str], download: Download) -> requests.Response:
        left = self._left(download)
        if left <= 0:
            raise self._past_deadline("the download")
        # Socket timeouts never outlast the deadline; a little slack lets the watchdog, which
        # fires exactly at the deadline, be the one that ends a download that is still going.
        timeout = (min(self.config.connect_timeout, left + _DEADLINE_SLACK),
                   min(self.config.read_timeout, left + _DEADLINE_SLACK))
        try:
            response = self._session.get(url, headers=dict(headers), stream=True, allow_redirects=False,
                                         timeout=timeout)
        except UnicodeDecodeError as e:  # requests decodes a redirect's Location as UTF-8, even unfollowed
            raise StageError("invalid_url", f"redirect to a Location that is not UTF-8 ({_short(e)})") from None
        except netguard.BlockedPeer as e:
            raise StageError("blocked_address", str(e)) from None
        except DeadlinePassed:
            raise self._past_deadline("the response") from None
        except requests.exceptions.RequestException as e:
            if self._is_past(download):
                raise self._past_deadline("the response") from None
            if isinstance(e, requests.exceptions.Timeout):
                raise _Retryable(StageError("timeout", _short(e))) from None
            if isinstance(e, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                              requests.exceptions.MissingSchema)):
                raise StageError("invalid_url", _short(e)) from None
            if isinstance(e, requests.exceptions.InvalidHeader) or _broke_http(e):
                raise StageError("protocol_error", _short(e)) from None
            if isinstance(e, requests.exceptions.ConnectionError):
                raise _Retryable(StageError("connection_error", _short(e))) from None
            raise
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if self._is_past(download):
                raise self._past_deadline("the response") from None
            raise _Retryable(StageError("connection_error", _short(e))) from None
        try:
            check_header_lines(response)
        except StageError:
            response.close()
            if self._is_past(download):  # the watchdog cut the headers short
                raise self._past_deadline("the response") from None
            raise
        return response

    def _raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status < 400 or status == 304:
            return
        if status in RETRY_STATUSES:
            reason = "http_rate_limited" if status == 429 else (
                "timeout" if status == 408 else "http_server_error")
            raise _Retryable(StageError(reason, f"HTTP {status}", http_status=status),
                             retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if status in (404, 410):
            raise StageError("http_not_found", f"HTTP {status}", http_status=status)
        reason = "http_server_error" if status >= 500 else "http_client_error"
        raise StageError(reason, f"HTTP {status}", http_status=status)

    def _read_body(self, response: requests.Response, download: Download) -> bytes:
        cap = self.config.max_bytes
        declared = content_length(response.headers.get("Content-Length"), response.status_code)
        if declared is not None:
            check_size(declared, cap, f"Content-Length {declared}", response.status_code)
        body = bytearray()

        def past_deadline() -> StageError:
            return StageError("deadline_exceeded", f"body not complete after {self.config.deadline:g}s "
                              f"({len(body)} bytes read)", http_status=response.status_code)

        try:
            while True:
                if self._is_past(download):
                    raise past_deadline()
                # read1: return what one socket read gives, so the deadline is checked often.
                chunk = response.raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                body += chunk
                check_size(len(body), cap, "body", response.status_code)
        except StageError:
            raise
        except Exception as e:
            if self._is_past(download):  # the watchdog shut the socket down
                raise past_deadline() from None
            if isinstance(e, (urllib3.exceptions.ReadTimeoutError, socket.timeout)):
                raise _Retryable(StageError("timeout", _short(e), http_status=response.status_code)) from None
            if isinstance(e, (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError)):
                raise _Retryable(StageError("connection_error", _short(e),
                                            http_status=response.status_code)) from None
            raise
        if self._is_past(download):  # a body read until close ends early when its socket is shut down
            raise past_deadline()
        return bytes(body)

    def _resolve(self, host: str, port: int, download: Download) -> list[str]:
        key = (host, port)
        with self._dns_lock:
            cached = self._dns.get(key)
            if cached and cached[0] > self._clock():
                return cached[1]
            # getaddrinfo has no timeout of its own: it runs on a background thread, one lookup per
            # host however many downloads need it, and each waits no longer than its deadline (an
            # abandoned lookup finishes on its daemon thread and fills the cache for the next one).
            lookup = self._dns_lookups.get(key)
            if lookup is None:
                lookup = self._lookups.submit(lambda: self._lookup(key))
                self._dns_lookups[key] = lookup
        try:
            return lookup.result(timeout=max(0.0, self._left(download)))
        except StageError as e:  # the lookup's own error, shared by every download that waited for it
            raise StageError(e.reason, e.detail, e.http_status) from None
        except TimeoutError:
            raise StageError("deadline_exceeded", f"DNS lookup of {host} not done after "
                             f"{self.config.deadline:g}s") from None

    def _lookup(self, key: tuple[str, int]) -> list[str]:
        try:
            addresses = netguard.resolve(*key)
            with self._dns_lock:
                self._dns[key] = (self._clock() + _DNS_TTL_SECONDS, addresses)
            return addresses
        finally:
            with self._dns_lock:
                self._dns_lookups.pop(key, None)

    def _left(self, download: Download) -> float:
        return download.deadline - self._clock()

    def _is_past(self, download: Download) -> bool:
        return download.expired or self._clock() >= download.deadline

    def _past_deadline(self, what: str) -> StageError:
        return StageError("deadline_exceeded", f"{what} not complete after {self.config.deadline:g}s")


def _make_session(config: FetchConfig, pool_size: int, attach: Callable[[object], None]) -> requests.Session:
    session = requests.Session()
    # No proxies or .netrc from the environment: credentials must never go to catalogue hosts,
    # and a proxy would hide the peer address that the guard checks.
    session.trust_env = False
    session.headers["User-Agent"] = config.user_agent
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size,
                                            max_retries=0)
    # Always our connection classes: they tie each connection to its download's deadline;
    # the peer check allows everything when private addresses are allowed.
    allowed = ((lambda address: True) if config.allow_private_addresses
               else (lambda address: not netguard.is_blocked(address)))
    adapter.poolmanager.pool_classes_by_scheme = netguard.guarded_pool_classes(allowed, attach)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def check_header_lines(response: requests.Response) -> None:
    """protocol_error for a response whose header lines did not all parse: Python's parser stops at
    the first malformed line (a name such as `²`) and drops every header after it, Content-Length
    included, so what follows cannot be trusted. urllib3 only logs this."""
    message = getattr(getattr(response.raw, "_original_response", None), "msg", None)
    if not isinstance(message, http.client.HTTPMessage) or message.is_multipart():
        return
    unparsed = message.get_payload()
    if isinstance(unparsed, (bytes, str)) and unparsed.strip():
        first = unparsed.strip().splitlines()[0]
        raise StageError("protocol_error", f"malformed header line {first[:100]!r}: the headers after it "
                         "would be lost", http_status=response.status_code)


def content_length(value: Optional[str], http_status: Optional[int] = None) -> Optional[int]:
    """A Content-Length header as a number of bytes; None when absent.

    Only ASCII digits (``str.isdigit`` takes "²", ``int`` takes "١٢" and "1_000"), and
    a list only of equal values (RFC 9110 8.6); anything else is StageError
    protocol_error, since the framing of the response cannot be trusted."""
    if value is None:
        return None
    values = {part.strip() for part in value.split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
        raise StageError("protocol_error", f"malformed Content-Length {value[:100]!r}", http_status=http_status)
    return int(values.pop())


def retry_after_seconds(value: Optional[str], now: Callable[[], float] = time.time) -> Optional[float]:
    """Retry-After as seconds to wait: delta-seconds, or an HTTP date in any zone (UTC when it names none).

    None when absent or malformed: Retry-After is advice, so a value that
    cannot be read is ignored and the retry waits the normal exponential
    backoff."""
    if not value:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" (RFC 5322: UTC, source zone unknown) parses as a naive datetime
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now())


def _broke_http(error: BaseException) -> bool:
    """Whether the response broke HTTP's syntax (status line, header lines), as http.client reports it.

    A connection that closed or broke off (RemoteDisconnected, IncompleteRead)
    is a connection error, not this."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        e = pending.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, http.client.HTTPException):
            return not isinstance(e, (http.client.RemoteDisconnected, http.client.IncompleteRead))
        pending.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        pending.extend(c for c in (e.__cause__, e.__context__) if c is not None)
    return False


def _short(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 300 else text[:297] + "..."


def shared_politeness(config: FetchConfig) -> Politeness:
    """The politeness state for one worker process: host limits, and robots.txt rules when asked.

    robots.txt itself is fetched by a Fetcher of its own (same limits and
    guard, no robots check, one retry), so asking for the rules never recurses.
    """
    limiter = HostLimiter(config.max_connections_per_host, config.max_requests_per_second_per_host)
    if not config.respect_robots:
        return Politeness(limiter)
    robots_config = dataclasses.replace(config, respect_robots=False, max_retries=1, max_bytes=512 * 1024)
    robots_fetcher = Fetcher(robots_config, Politeness(limiter), pool_size=4)

    def robots_text(url: str) -> tuple[int, str]:
        result = robots_fetcher.fetch(url)
        return result.status, result.data.decode("utf-8", errors="replace")

    return Politeness(limiter, RobotsPolicy(robots_text, config.user_agent))


def check_size(size: int, cap: int, what: str, http_status: Optional[int] = None) -> None:
    """StageError too_large when size exceeds the byte cap (downloads and storage reads alike)."""
    if size > cap:
        raise StageError("too_large", f"{what} exceeds {cap} bytes", http_status=http_status)
