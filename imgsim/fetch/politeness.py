"""Being a good guest on other people's servers: per-host limits and robots.txt.

One HostLimiter and one RobotsPolicy are shared by every download thread of a
worker process (the Beam layer shares them with ``apache_beam.utils.shared``),
so the limits hold per process; on Dataflow the whole job's load on a host is
at most the per-process limit times the number of worker processes. The time
downloads spend waiting on the limits is measured (ThrottleMeter) so that the
Beam layer can report it as throttled time.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import re
import threading
import time
from contextlib import contextmanager
from typing import Callable, Optional, Union
from urllib.parse import urlsplit

from protego import Protego

from imgsim.failures import StageError
from imgsim.fetch.deadline import BackgroundCalls


class ThrottleMeter:
    """Seconds spent waiting to be polite (host limits, Retry-After, backoff), thread-safe.

    Download threads add; the Beam layer takes whole seconds for the counter
    `cumulativeThrottlingSeconds`, which Dataflow's autoscaler reads: time a
    worker spends throttled is not a reason to add workers (more workers would
    only add load on the same hosts)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seconds = 0.0

    def add(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self._seconds += seconds

    def take_whole_seconds(self) -> int:
        """The whole seconds accumulated since the last call; the fraction is kept for the next."""
        with self._lock:
            whole = int(self._seconds)
            self._seconds -= whole
            return whole


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
    def slot(self, host: str, timeout: Optional[float] = None, meter: Optional[ThrottleMeter] = None):
        """Hold one of the host's connection slots; waits for the rate limit before yielding.

        With a timeout, neither wait goes past it (StageError deadline_exceeded).
        The time waited is added to `meter`."""
        meter = meter or ThrottleMeter()
        with self._lock:
            semaphore = self._semaphores.setdefault(
                host, threading.BoundedSemaphore(self._max_connections))
        asked = self._clock()
        acquired = semaphore.acquire(timeout=timeout if timeout is None else max(0.0, timeout))
        meter.add(self._clock() - asked)
        if not acquired:
            raise StageError("deadline_exceeded", f"waited {max(0.0, timeout):.1f}s for a free slot on {host}")
        try:
            if self._interval:
                with self._lock:
                    now = self._clock()
                    start = max(now, self._next_start.get(host, now))
                    left = None if timeout is None else timeout - (now - asked)
                    if left is not None and start - now > left:  # no turn within the deadline: none taken
                        raise StageError("deadline_exceeded", f"the rate limit for {host} allows no request "
                                         f"within the deadline (next in {start - now:.1f}s)")
                    self._next_start[host] = start + self._interval
                if start > now:
                    self._sleep(start - now)
                    meter.add(start - now)
            yield
        finally:
            semaphore.release()


class RobotsPolicy:
    """robots.txt per host (RFC 9309, parsed by Protego), fetched once per host and cached.

    ``fetch_text(url)`` returns (status, text) or raises StageError. As RFC 9309
    2.3.1 asks: a 4xx answer means no rules (everything allowed); a 5xx answer
    or an unreachable server means everything disallowed, until the entry
    expires. Rules are matched for our product token, the user agent's first
    word (``imgsim`` in ``imgsim/0.1 (...)``): the longest matching path wins,
    Allow wins a tie, ``*`` and ``$`` are wildcards, and percent-encoding is
    normalised before comparing.

    The fetch runs on a background thread (`loads`), one per host however many
    threads ask at once; a caller waits no longer than its own `timeout` (its
    download's deadline, StageError deadline_exceeded), while the fetch goes on
    and its answer is cached for the rest.
    """

    def __init__(self, fetch_text: Callable[[str], tuple[int, str]], user_agent: str,
                 ttl_seconds: float = 3600.0, clock: Callable[[], float] = time.monotonic,
                 loads: Optional[BackgroundCalls] = None):
        self._fetch_text = fetch_text
        self._agent = product_token(user_agent)
        self._ttl = ttl_seconds
        self._clock = clock
        self._loads = loads or BackgroundCalls(workers=4, name="imgsim-robots")
        self._lock = threading.Lock()
        self._rules: dict[str, tuple[float, Union[bool, Protego]]] = {}
        self._loading: dict[str, concurrent.futures.Future] = {}

    def allowed(self, url: str, timeout: Optional[float] = None) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            cached = self._rules.get(origin)
            if cached is not None and cached[0] >= self._clock():
                return _allows(cached[1], url, self._agent)
            future = self._loading.get(origin)
            if future is None:  # one fetch per host, however many threads ask at once
                future = self._loads.submit(lambda: self._load_and_keep(origin))
                self._loading[origin] = future
        started = self._clock()
        try:
            rules = future.result(timeout=None if timeout is None else max(0.0, timeout))
        except concurrent.futures.TimeoutError:
            rules = None
        # A thread woken late (a loaded machine) can find the fetch finished after its own deadline:
        # the deadline ended that wait, not the answer (a robots.txt that timed out reads "disallow").
        if rules is None or (timeout is not None and self._clock() - started > timeout):
            raise StageError("deadline_exceeded", f"{origin}/robots.txt not read within the deadline")
        return _allows(rules, url, self._agent)

    def _load_and_keep(self, origin: str) -> Union[bool, Protego]:
        try:
            rules = self._load(origin)
            with self._lock:
                self._rules[origin] = (self._clock() + self._ttl, rules)
            return rules
        finally:
            with self._lock:
                self._loading.pop(origin, None)

    def _load(self, origin: str) -> Union[bool, Protego]:
        """True (allow all), False (disallow all) or the parsed rules."""
        try:
            status, text = self._fetch_text(origin + "/robots.txt")
        except StageError as e:
            # An answer of 4xx is "unavailable"; anything else that failed (no answer, 5xx, a body that
            # broke off or broke HTTP) is "unreachable". 429 asks us to back off: no licence to crawl.
            status = e.http_status if e.http_status and 400 <= e.http_status < 500 else 503
            text = ""
        if status >= 500 or status == 429:
            return False
        if status >= 400:
            return True
        return Protego.parse(text)


def product_token(user_agent: str) -> str:
    """The user agent's first word, as robots.txt groups name crawlers (RFC 9309 2.2.1: letters, _ and -)."""
    match = re.match(r"[A-Za-z_-]+", user_agent.strip())
    return match.group(0) if match else "*"


def _allows(rules: Union[bool, Protego], url: str, agent: str) -> bool:
    return rules if isinstance(rules, bool) else rules.can_fetch(url, agent)


@dataclasses.dataclass(frozen=True)
class Politeness:
    """The per-process politeness state every download thread shares: host limits and robots rules.

    imgsim.fetch.http.shared_politeness builds one (robots.txt needs a fetcher)."""

    limiter: HostLimiter
    robots: Optional[RobotsPolicy] = None
