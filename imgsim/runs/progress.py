"""A progress line for local runs: how far along, how fast, and when it will end."""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional


class ProgressMeter:
    """Thread-safe counts of finished rows; `line()` formats them for a person."""

    def __init__(self, total: Optional[int] = None, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self.total = total
        self.embedded = 0
        self.failed = 0
        self._last_report = self._started

    def due(self, interval: float) -> bool:
        """True at most once per interval, for whichever thread asks first."""
        with self._lock:
            now = self._clock()
            if now - self._last_report < interval:
                return False
            self._last_report = now
            return True

    def add(self, embedded: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.embedded += embedded
            self.failed += failed

    def line(self) -> str:
        with self._lock:
            embedded, failed, total = self.embedded, self.failed, self.total
        elapsed = max(self._clock() - self._started, 1e-9)
        done = embedded + failed
        rate = embedded / elapsed
        parts = [f"embedded {embedded:,}", f"failed {failed:,}"]
        if total:
            parts.insert(0, f"{done:,}/{total:,} rows ({100.0 * done / total:.1f}%)")
        parts.append(f"{rate:.1f} img/s")
        if total and done and done < total:
            parts.append(f"ETA {_duration((total - done) * elapsed / done)}")
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
