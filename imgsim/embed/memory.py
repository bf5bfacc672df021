"""A per-process memory budget for decoding, so that no catalogue can exhaust a worker.

A worker process decodes on many download threads at once (--download-threads),
and one image within the pixel cap can take hundreds of megabytes decoded
(a 9400x9400 RGBA PNG of 370 KB is 700 MB at its peak). The budget admits a
decode only when its estimated peak (imgsim.embed.decode.decode_cost) fits in
what is left; other threads wait (they are only decoding, so the wait is
bounded by the decodes in progress). Small images pass at once. The worst
image times the thread count therefore stays under --decode-memory-mb per
process, whatever the catalogue holds.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

from imgsim.failures import StageError

MB = 1024 * 1024
# A decode that reserved this much hands its freed memory back to the system when it ends.
RELEASE_FROM = 32 * MB
# glibc malloc arenas for a process that decodes on many threads (see limit_arenas).
DECODE_ARENAS = 2
# Enough for the worst image within Pillow's default pixel cap (imgsim.embed.decode.max_decode_cost),
# so that at defaults decoding adds at most about 1.5 GB to a worker process.
DEFAULT_DECODE_MEMORY_MB = 1200


class DecodeBudget:
    """At most `limit_bytes` of decoding in flight in this process; thread-safe."""

    def __init__(self, limit_bytes: int):
        if limit_bytes < 1:
            raise ValueError("the decode budget must be positive")
        self.limit = limit_bytes
        self._in_use = 0
        self._peak = 0
        self._waiting = 0
        self._changed = threading.Condition()

    @property
    def peak(self) -> int:
        """The most bytes reserved at once so far (for tests and benchmarks)."""
        with self._changed:
            return self._peak

    @property
    def waiting(self) -> int:
        """How many decodes are waiting for room now."""
        with self._changed:
            return self._waiting

    def wait_for_waiters(self, count: int, timeout: float) -> bool:
        """Until `count` decodes wait for room (True), or timeout seconds pass (False): what a test
        orders threads by, instead of sleeping."""
        with self._changed:
            return self._changed.wait_for(lambda: self._waiting >= count, timeout)

    @contextmanager
    def reserve(self, cost: int):
        """Hold `cost` bytes of the budget while decoding; waits until they are free."""
        if cost > self.limit:
            raise StageError("decompression_bomb", f"decoding would take {cost // MB} MB, more than the "
                             f"{self.limit // MB} MB decode budget (--decode-memory-mb)")
        with self._changed:
            if self._in_use + cost > self.limit:
                self._waiting += 1
                self._changed.notify_all()
                try:
                    while self._in_use + cost > self.limit:
                        self._changed.wait()
                finally:
                    self._waiting -= 1
            self._in_use += cost
            self._peak = max(self._peak, self._in_use)
        try:
            yield
        finally:
            if cost >= RELEASE_FROM:
                release_to_system()
            with self._changed:
                self._in_use -= cost
                self._changed.notify_all()


def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def release_to_system() -> None:
    """glibc keeps what a decode freed in the malloc arena of the thread that freed it, for reuse:
    with 16 download threads, a worker held 2.6 GB resident under a 1.2 GB budget. malloc_trim
    returns the free pages of every arena to the system (a no-op elsewhere than glibc)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def limit_arenas(arenas: int = DECODE_ARENAS) -> None:
    """Cap glibc's malloc arenas for this process (M_ARENA_MAX), for the threads created from now
    on: each thread otherwise gets an arena of its own, which keeps memory a large decode freed
    (measured: 16 threads of 16-megapixel decodes, 1,460 MB resident for a 1,170 MB budget peak,
    1,223 MB with two arenas). Call it before the download threads start."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
