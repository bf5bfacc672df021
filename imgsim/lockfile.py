"""An exclusive lock on a local file that names its holder and ends with its holder's process.

Why flock(2) and not "the lock file exists": a file created with O_EXCL outlives
a publisher that is killed while holding it, and then refuses every later
publisher forever, blaming a concurrent run that does not exist. The kernel
releases a flock when the process holding it ends, however it ends, so a dead
holder's lock is free at once and nothing has to guess whether it is stale.

The file itself only carries who took the lock and when (host, pid, time), so
that a writer who finds the lock taken can say by whom and since when, and one
who takes over a file still naming an earlier holder knows that holder died
inside its critical section. The holder removes the file before it lets go;
whoever locked a file that was removed meanwhile (it opened the old file just
before) sees that the path no longer names it and starts again, so two writers
never both believe they hold the lock.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Iterator, Optional


@dataclasses.dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    since: str  # UTC, ISO 8601

    @classmethod
    def this_process(cls) -> "LockOwner":
        return cls(socket.gethostname(), os.getpid(),
                   datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def parse(cls, data: bytes) -> Optional["LockOwner"]:
        """The record in a lock file; None when it is empty (free) or unreadable."""
        try:
            doc = json.loads(data)
            return cls(str(doc["host"]), int(doc["pid"]), str(doc["since"]))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    def describe(self) -> str:
        return f"process {self.pid} on {self.host} since {self.since}"


class LockBusy(Exception):
    """A live process holds the lock."""

    def __init__(self, path: str, owner: Optional[LockOwner]):
        who = owner.describe() if owner else "a process that has only just taken it"
        super().__init__(f"{path} is held by {who}")
        self.path = path
        self.owner = owner


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[Optional[LockOwner]]:
    """Hold the lock at path for the with-block, without waiting: LockBusy if a live process holds it.

    Yields the record of an earlier holder that died while holding the lock (its process ended
    inside its critical section), or None."""
    fd, previous = _acquire(path)
    try:
        yield previous
    finally:
        try:
            if _still_named(fd, path):  # (unless someone removed it by hand meanwhile)
                os.unlink(path)  # still holding it: whoever opened this file meanwhile will see it is gone
        finally:
            os.close(fd)  # releases the flock


def _acquire(path: str) -> tuple[int, Optional[LockOwner]]:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        fd = os.open(path, flags, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LockBusy(path, LockOwner.parse(os.pread(fd, 4096, 0))) from None
                raise OSError(e.errno, f"cannot lock {path} ({e.strerror}): local publishing needs a "
                                       "file system with flock") from None
            if not _still_named(fd, path):
                os.close(fd)  # its holder removed it after we opened it: lock the current file
                continue
            previous = LockOwner.parse(os.pread(fd, 4096, 0))
            os.ftruncate(fd, 0)
            os.pwrite(fd, LockOwner.this_process().to_json(), 0)
            return fd, previous
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _still_named(fd: int, path: str) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
