"""Bounding one download by its deadline, whatever the server does.

Socket timeouts bound each socket operation, not a download: a server that
sends its status line, headers or body one byte every half second never trips
a read timeout, and a thread blocked in recv() cannot check a clock. So each
Fetcher has a `Watchdog`: one thread (not one per download) with a heap of
deadlines. `Watchdog.download(deadline)` is entered by Fetcher.fetch for the
whole download (every redirect hop and retry) and is the thread's current
download; the connection classes of imgsim.fetch.netguard attach themselves
to it whenever they connect or send a request. When the deadline passes, the
watchdog shuts down the attached connections' sockets (`shutdown(SHUT_RDWR)`),
so a blocked recv() returns at once and the download ends as
deadline_exceeded. A connection belongs to one download at a time: a pooled
connection taken by another download is attached to that one, and the
watchdog of the first no longer touches it.

`BackgroundCalls` runs blocking calls that offer no timeout of their own (DNS
lookups, a host's robots.txt) on a few daemon threads, so a caller can stop
waiting at its deadline; an abandoned call finishes (or not) on its own and
blocks nobody, not even the interpreter's exit.
"""
from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import queue
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TypeVar

T = TypeVar("T")

# An idle helper thread exits after this long; the next use starts a new one.
_IDLE_SECONDS = 10.0


class DeadlinePassed(Exception):
    """A connection was about to be used by a download whose deadline has passed.

    Deliberately not an OSError, so that urllib3 does not wrap it as a
    retryable connection error; fetch maps it to deadline_exceeded."""


class Download:
    """One download's deadline and the connections it is using now."""

    def __init__(self, deadline: float, lock: threading.Lock):
        self.deadline = deadline
        self._lock = lock  # the watchdog's: attaching and expiring never interleave
        self._connections: list = []
        self._expired = False
        self._finished = False

    @property
    def expired(self) -> bool:
        """True once the watchdog has found the deadline passed (its sockets are shut down)."""
        return self._expired

    def attach(self, connection) -> None:
        """Make this download the connection's owner; its socket is shut down if the deadline passes."""
        with self._lock:
            if self._expired:
                raise DeadlinePassed("the download's deadline has passed")
            connection.imgsim_download = self
            if connection not in self._connections:
                self._connections.append(connection)

    def release_connections(self) -> None:
        """Forget the connections used so far (between redirect hops and retries)."""
        with self._lock:
            for connection in self._connections:
                if connection.imgsim_download is self:
                    connection.imgsim_download = None
            self._connections.clear()

    def _expire(self) -> None:
        """Called with the lock held."""
        self._expired = True
        for connection in self._connections:
            if connection.imgsim_download is self:
                shutdown_socket(connection.sock)


def shutdown_socket(sock) -> None:
    """Shut a socket down for both directions, so a blocked recv() in another thread returns.

    socket.socket.shutdown is called on the instance directly: for a TLS
    socket that shuts the TCP connection down without touching the TLS state
    that the blocked thread is using."""
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # already closed or never connected
        pass


class Watchdog:
    """Ends the downloads whose deadline has passed; one per Fetcher, shared by its threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, Download]] = []
        self._order = itertools.count()
        self._local = threading.local()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    @contextmanager
    def download(self, deadline: float) -> Iterator[Download]:
        """The calling thread's current download until the block ends."""
        current = Download(deadline, self._condition)
        previous = getattr(self._local, "download", None)
        with self._condition:
            heapq.heappush(self._heap, (deadline, next(self._order), current))
            self._ensure_thread()
            if self._heap[0][2] is current:  # the earliest deadline now: the watchdog must wake sooner
                self._condition.notify()
        self._local.download = current
        try:
            yield current
        finally:
            self._local.download = previous
            current.release_connections()
            with self._condition:
                current._finished = True  # its heap entry is dropped when it comes up

    def attach(self, connection) -> None:
        """Attach a connection to the calling thread's current download, if it has one."""
        current = getattr(self._local, "download", None)
        if current is not None:
            current.attach(connection)

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="imgsim-download-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._condition:
            while not self._closed:
                now = self._clock()
                while self._heap and (self._heap[0][2]._finished or self._heap[0][0] <= now):
                    _, _, download = heapq.heappop(self._heap)
                    if not download._finished:
                        download._expire()
                if self._heap:
                    self._condition.wait(self._heap[0][0] - now)
                elif not self._condition.wait(_IDLE_SECONDS) and not self._heap:
                    break  # idle: the next download starts a new thread
            self._thread = None


class BackgroundCalls:
    """A few daemon threads for blocking calls that a caller may stop waiting for."""

    def __init__(self, workers: int = 4, name: str = "imgsim-background"):
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._workers = workers
        self._name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = 0
        self._idle = 0

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future:
        """fn's future: its result or exception. A caller may stop waiting (`result(timeout)`);
        fn then goes on in the background and its outcome goes to whoever else holds the future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._queue.put((fn, future))
            if self._idle == 0 and self._threads < self._workers:
                self._threads += 1
                threading.Thread(target=self._work, name=self._name, daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                fn, future = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._queue.empty():
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:  # handed to the caller, who decides
                    future.set_exception(e)
