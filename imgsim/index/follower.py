"""A long-lived process's index that follows LATEST: scheduled runs reach it without a restart.

    follower = IndexFollower.open("gs://bucket/imgsim", refresh_seconds=30)
    with follower.use() as served:          # the index a request started on, to its end
        served.index.similar("1915.534")

Every refresh_seconds a thread reads LATEST (run id and the manifest digest it pins). A new
artifact is opened (verified against its manifest and the pin), warmed with a probe query and
prepared (the service loads its model and finds its explorer), then swapped in under a lock:
requests in flight finish on the index they started on, new ones get the new one, and the old
one is closed when its last request ends. An artifact that fails any of that is not served:
the old one stays, and health() says which run waits and why (`pending_run_id`,
`refresh_error`). A rollback is a LATEST change like any other. Pinned to a run id, or opened on
an index directory, nothing is followed.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
from typing import Any, Callable, Iterator, Optional

from imgsim.index.artifact import MANIFEST
from imgsim.index.consumer import ImageIndex
from imgsim.index.latest import read_latest
from imgsim.storage import ObjectStore, join

_LOG = logging.getLogger("imgsim.follow")


class Served:
    """One opened artifact and what was prepared for it, counted while requests use it."""

    def __init__(self, index: ImageIndex, extras: Any):
        self.index = index
        self.extras = extras
        self.users = 0
        self.retired = False


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class IndexFollower:
    def __init__(self, location: str, *, run_id: Optional[str] = None, cache_dir: Optional[str] = None,
                 store: Optional[ObjectStore] = None, refresh_seconds: float = 30.0,
                 prepare: Callable[[ImageIndex], Any] = lambda index: None):
        if refresh_seconds <= 0:
            raise ValueError("refresh_seconds must be positive")
        self.location = location
        self.run_id = run_id
        self.refresh_seconds = refresh_seconds
        self._cache_dir = cache_dir
        self._store = store or ObjectStore()
        self._prepare = prepare
        self._lock = threading.Lock()
        self._current: Optional[Served] = None
        self._pointer: Optional[tuple] = None  # (run id, manifest sha256) of LATEST as served
        self._pending: Optional[str] = None
        self._error: Optional[str] = None
        self._checked_at: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def open(cls, location: str, **options) -> "IndexFollower":
        """A follower with its first index opened and prepared (errors raise, as ImageIndex.open's
        do), and, unless pinned, its refresh thread started."""
        follower = cls(location, **options)
        follower.load()
        if follower.follows:
            follower.start()
        return follower

    @classmethod
    def serving(cls, served: Served) -> "IndexFollower":
        """A follower that serves one prepared artifact and follows nothing (a --workers worker:
        its parent follows LATEST)."""
        follower = cls(served.index.source, run_id=served.index.run_id)
        follower._current = served
        return follower

    @property
    def follows(self) -> bool:
        """Whether LATEST is followed: not when pinned to a run, nor opened on an index directory."""
        return self.run_id is None and not self._store.exists(join(self.location, MANIFEST))

    def load(self) -> None:
        """Open and serve the index the location names now."""
        latest = read_latest(self._store, self.location) if self.follows else None
        self._swap(self._opened(latest.run_id if latest else self.run_id,
                                latest.manifest_sha256 if latest else None),
                   (latest.run_id, latest.manifest_sha256) if latest else None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="imgsim-follow-latest", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            current, self._current = self._current, None
        if current is not None:
            self._retire(current)

    @contextlib.contextmanager
    def use(self) -> Iterator[Served]:
        """The artifact served now, held until the block ends (a swap meanwhile waits for it)."""
        with self._lock:
            served = self._current
            if served is None:
                raise RuntimeError("the index follower is closed")
            served.users += 1
        try:
            yield served
        finally:
            with self._lock:
                served.users -= 1
                done = served.retired and served.users == 0
            if done:
                served.index.close()

    def refresh(self) -> bool:
        """Check LATEST once; True when a new artifact was swapped in."""
        self._checked_at = _now()
        try:
            latest = read_latest(self._store, self.location)
        except Exception as e:  # a malformed or unreadable pointer: keep serving, say why
            self._error = f"LATEST cannot be read ({e})"
            return False
        if latest is None:
            return False
        pointer = (latest.run_id, latest.manifest_sha256)
        if pointer == self._pointer:
            if self._pending is None:
                self._error = None
            return False
        try:
            served = self._opened(latest.run_id, latest.manifest_sha256)
        except Exception as e:
            if (self._pending, self._error) != (latest.run_id, str(e)):
                _LOG.warning("LATEST names run %s, which is not served: %s", latest.run_id, e)
            self._pending, self._error = latest.run_id, f"{type(e).__name__}: {e}"
            return False
        previous = self._swap(served, pointer)
        _LOG.info("now serving run %s (was %s)", latest.run_id, previous)
        return True

    def health(self) -> dict:
        with self._lock:
            current = self._current
        return {"run_id": current.index.run_id if current else None, "follows_latest": self.follows,
                "pending_run_id": self._pending, "refresh_error": self._error, "checked_at": self._checked_at,
                "refresh_seconds": self.refresh_seconds if self.follows else None}

    # internals --------------------------------------------------------------------------------
    def _opened(self, run_id: Optional[str], manifest_sha256: Optional[str]) -> Served:
        index = ImageIndex.open(self.location, run_id=run_id, cache_dir=self._cache_dir, store=self._store,
                                manifest_sha256=manifest_sha256)
        try:
            index.warm()
            extras = self._prepare(index)
        except Exception:
            index.close()
            raise
        return Served(index, extras)

    def _swap(self, served: Served, pointer: Optional[tuple]) -> Optional[str]:
        with self._lock:
            previous, self._current = self._current, served
            self._pointer = pointer
            self._pending = self._error = None
        if previous is None:
            return None
        self._retire(previous)
        return previous.index.run_id

    def _retire(self, served: Served) -> None:
        with self._lock:
            served.retired = True
            done = served.users == 0
        if done:
            served.index.close()

    def _follow(self) -> None:
        yield_cpu()
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception as e:  # never let the thread die: the service keeps serving
                self._error = f"{type(e).__name__}: {e}"
                _LOG.exception("refreshing from LATEST failed")


def yield_cpu() -> None:
    """Run this thread (and the threads it starts: ScaNN's loaders) below the request threads'
    priority: opening a new artifact competes for the same cores as the answers being served, and
    the answers should win (Linux schedules threads as tasks, each with its own niceness)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass
