"""Downloading one URL politely, safely and within bounds, without Beam.

A Fetcher turns a URL into bytes or a StageError with a stable reason code.
It owns one requests.Session (connection reuse) and enforces:
- connect and read timeouts per socket operation, plus an overall deadline
  per download (retries and waits included) checked between body reads, so a
  slow-loris trickle cannot hold a worker thread forever;
- bounded retries with exponential backoff and jitter on connection errors,
  timeouts, 429 and 5xx, honouring Retry-After up to a cap;
- a byte cap enforced while streaming (Content-Length is checked first, but
  not trusted);
- redirects followed by hand, so that the scheme, the address guard and
  robots.txt are re-checked on every hop, with loops detected;
- the per-host limits of a shared HostLimiter.
"""
from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import random
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
from imgsim.fetch.politeness import HostLimiter, Politeness, RobotsPolicy

DEFAULT_USER_AGENT = (
    f"imgsim/{__version__} (image-similarity pipeline; +https://github.com/imgsim/imgsim)")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_DNS_TTL_SECONDS = 60.0


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
        self._session = _make_session(config, pool_size)
        self._dns_lock = threading.Lock()
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}

    def close(self):
        self._session.close()

    def fetch(self, url: str, headers: Optional[Mapping[str, str]] = None) -> FetchResult:
        """GET url; a 304 answer to conditional headers returns an empty 304 result."""
        deadline = self._clock() + self.config.deadline
        attempts = 0
        while True:
            attempts += 1
            try:
                result = self._attempt(url, headers or {}, deadline)
                return dataclasses.replace(result, attempts=attempts)
            except _Retryable as retry:
                error = retry.error
                wait = self._wait_before_retry(attempts, retry.retry_after)
                if attempts > self.config.max_retries or self._clock() + wait >= deadline:
                    error.attempts = attempts
                    raise error from None
                self._sleep(wait)
            except StageError as error:
                error.attempts = attempts
                raise

    def _wait_before_retry(self, attempts: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.config.retry_after_max)
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempts - 1))
        return ceiling * (0.5 + self._rand() / 2)  # "equal jitter": spread, but never zero

    def _attempt(self, url: str, headers: Mapping[str, str], deadline: float) -> FetchResult:
        current, seen = url, {url}
        for _ in range(self.config.max_redirects + 1):
            _, host, port = netguard.split_url(current)
            addresses = self._resolve(host, port)
            if not self.config.allow_private_addresses:
                netguard.check_addresses(host, addresses)
            if self._robots is not None and not self._robots.allowed(current):
                raise StageError("robots_disallowed", current[:300])
            with self._limiter.slot(host, timeout=deadline - self._clock()):
                response = self._send(current, headers)
                try:
                    status = response.status_code
                    if status in REDIRECT_STATUSES:
                        location = response.headers.get("Location")
                        if not location:
                            raise StageError("invalid_url", f"{status} redirect without Location",
                                             http_status=status)
                        target = urljoin(current, location.strip())
                        if target in seen:
                            raise StageError("too_many_redirects", f"redirect loop at {target[:300]}",
                                             http_status=status)
                        seen.add(target)
                        current = target
                        continue
                    self._raise_for_status(response)
                    data = b"" if status == 304 else self._read_body(response, deadline)
                    if not data and status != 304:
                        raise StageError("empty_body", f"{status} with no bytes", http_status=status)
                    return FetchResult(data=data, status=status, attempts=1, url=current,
                                       etag=response.headers.get("ETag"),
                                       last_modified=response.headers.get("Last-Modified"))
                finally:
                    response.close()
        raise StageError("too_many_redirects", f"more than {self.config.max_redirects} redirects")

    def _send(self, url: str, headers: Mapping[str, str]) -> requests.Response:
        try:
            return self._session.get(
                url, headers=dict(headers), stream=True, allow_redirects=False,
                timeout=(self.config.connect_timeout, self.config.read_timeout))
        except netguard.BlockedPeer as e:
            raise StageError("blocked_address", str(e)) from None
        except requests.exceptions.Timeout as e:
            raise _Retryable(StageError("timeout", _short(e))) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                requests.exceptions.MissingSchema) as e:
            raise StageError("invalid_url", _short(e)) from None
        except (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError, OSError) as e:
            raise _Retryable(StageError("connection_error", _short(e))) from None

    def _raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status < 400 or status == 304:
            return
        if status in RETRY_STATUSES:
            reason = "http_rate_limited" if status == 429 else (
                "timeout" if status == 408 else "http_server_error")
            raise _Retryable(StageError(reason, f"HTTP {status}", http_status=status),
                             retry_after=_retry_after_seconds(response.headers.get("Retry-After")))
        if status in (404, 410):
            raise StageError("http_not_found", f"HTTP {status}", http_status=status)
        reason = "http_server_error" if status >= 500 else "http_client_error"
        raise StageError(reason, f"HTTP {status}", http_status=status)

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        cap = self.config.max_bytes
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit():
            check_size(int(declared), cap, f"Content-Length {declared}", response.status_code)
        body = bytearray()
        try:
            while True:
                if self._clock() > deadline:
                    raise StageError("deadline_exceeded",
                                     f"body not complete after {self.config.deadline:.0f}s "
                                     f"({len(body)} bytes read)", http_status=response.status_code)
                # read1: return what one socket read gives, so the deadline is checked often.
                chunk = response.raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                body += chunk
                check_size(len(body), cap, "body", response.status_code)
        except (urllib3.exceptions.ReadTimeoutError, socket.timeout) as e:
            raise _Retryable(StageError("timeout", _short(e), http_status=response.status_code)) from None
        except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as e:
            raise _Retryable(StageError("connection_error", _short(e),
                                        http_status=response.status_code)) from None
        return bytes(body)

    def _resolve(self, host: str, port: int) -> list[str]:
        key, now = (host, port), self._clock()
        with self._dns_lock:
            cached = self._dns.get(key)
        if cached and cached[0] > now:
            return cached[1]
        addresses = netguard.resolve(host, port)
        with self._dns_lock:
            self._dns[key] = (now + _DNS_TTL_SECONDS, addresses)
        return addresses


def _make_session(config: FetchConfig, pool_size: int) -> requests.Session:
    session = requests.Session()
    # No proxies or .netrc from the environment: credentials must never go to catalogue hosts,
    # and a proxy would hide the peer address that the guard checks.
    session.trust_env = False
    session.headers["User-Agent"] = config.user_agent
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size,
                                            max_retries=0)
    if not config.allow_private_addresses:
        adapter.poolmanager.pool_classes_by_scheme = netguard.guarded_pool_classes(
            lambda address: not netguard.is_blocked(address))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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
