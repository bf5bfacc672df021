"""Being a good guest on other people's servers: per-host limits and robots.txt.

One instance of each class is shared by every download thread of a worker
process (the Beam layer shares them with ``apache_beam.utils.shared``), so the
limits hold per process; on Dataflow the whole job's load on a host is at most
the per-process limit times the number of worker processes.
"""
from __future__ import annotations

import dataclasses
import threading
import time
import urllib.robotparser
from contextlib import contextmanager
from typing import Callable, Optional
from urllib.parse import urlsplit

from imgsim.failures import StageError


class HostLimiter:
    """At most N requests in flight per host, and at most R request starts per second."""

    def __init__(self, max_connections_per_host: int = 4, max_requests_per_second: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if max_connections_per_host < 1:
            raise ValueError("max_connections_per_host must be at least 1")
        if max_requests_per_second < 0:
            raise ValueError("max_requests_per_second must not be negative")
        self._max_connections = max_connections_per_host
        self._interval = 1.0 / max_requests_per_second if max_requests_per_second else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}
        self._next_start: dict[str, float] = {}

    @contextmanager
    def slot(self, host: str, timeout: Optional[float] = None):
        """Hold one of the host's connection slots; waits for the rate limit before yielding."""
        with self._lock:
            semaphore = self._semaphores.setdefault(
                host, threading.BoundedSemaphore(self._max_connections))
        if not semaphore.acquire(timeout=timeout if timeout is None else max(0.0, timeout)):
            raise StageError("deadline_exceeded", f"waited {timeout:.1f}s for a free slot on {host}")
        try:
            if self._interval:
                with self._lock:
                    now = self._clock()
                    start = max(now, self._next_start.get(host, now))
                    self._next_start[host] = start + self._interval
                if start > now:
                    self._sleep(start - now)
            yield
        finally:
            semaphore.release()


class RobotsPolicy:
    """robots.txt per host (RFC 9309), fetched once per host and cached.

    ``fetch_text(url)`` returns (status, text) or raises StageError. As RFC 9309
    asks: 4xx means no rules (everything allowed); 5xx or an unreachable server
    means everything disallowed, until the entry expires.
    """

    def __init__(self, fetch_text: Callable[[str], tuple[int, str]], user_agent: str,
                 ttl_seconds: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self._fetch_text = fetch_text
        self._agent = user_agent.split("/", 1)[0]
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._rules: dict[str, tuple[float, urllib.robotparser.RobotFileParser]] = {}

    def allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            host_lock = self._host_locks.setdefault(origin, threading.Lock())
        with host_lock:  # one fetch per host, however many threads ask at once
            cached = self._rules.get(origin)
            if cached is None or cached[0] < self._clock():
                cached = (self._clock() + self._ttl, self._load(origin))
                self._rules[origin] = cached
        return cached[1].can_fetch(self._agent, url)

    def _load(self, origin: str) -> urllib.robotparser.RobotFileParser:
        parser = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
        try:
            status, text = self._fetch_text(origin + "/robots.txt")
        except StageError as e:
            status, text = (e.http_status or 503), ""
        if status >= 500:
            parser.disallow_all = True
        elif status >= 400:
            parser.allow_all = True
        else:
            parser.parse(text.splitlines())
        return parser


@dataclasses.dataclass(frozen=True)
class Politeness:
    """The per-process politeness state every download thread shares: host limits and robots rules.

    imgsim.fetch.http.shared_politeness builds one (robots.txt needs a fetcher)."""

    limiter: HostLimiter
    robots: Optional[RobotsPolicy] = None
