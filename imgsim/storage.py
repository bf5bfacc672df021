"""Local directories and gs:// buckets behind one small interface, without Beam.

The index artifact, the LATEST pointer and the consumer library use this
module; they must work where apache_beam is not installed. gs:// goes through
google-cloud-storage, which honours STORAGE_EMULATOR_HOST (the tests' local
emulator). Local writes go through a temporary file of their own (unique per
process and thread) in the target's directory and os.replace, so a reader,
or another process writing the same file, never sees half a file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
from typing import BinaryIO, Optional

from imgsim.lockfile import LockBusy, exclusive_lock

GCS_SCHEME = "gs://"


def cache_dir(*parts: str) -> str:
    """imgsim's one cache root (weights, index copies): $IMGSIM_CACHE_DIR, else $XDG_CACHE_HOME/imgsim,
    else ~/.cache/imgsim; parts name a subdirectory."""
    root = os.environ.get("IMGSIM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "imgsim")
    return os.path.join(root, *parts)


class PreconditionFailed(Exception):
    """A compare-and-swap write lost: the object changed since it was read."""


class WriterBusy(PreconditionFailed):
    """A compare-and-swap write found another live writer replacing the object at that moment."""


def is_gcs(path: str) -> bool:
    return path.startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    rest = uri[len(GCS_SCHEME):]
    bucket, _, name = rest.partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, name


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
        out = base.rstrip("/")
        for part in parts:
            out += "/" + part.strip("/")
        return out
    return os.path.join(base, *parts)


class ObjectStore:
    """Reads and writes paths that are either local or gs://. Creates its GCS client lazily."""

    def __init__(self, client=None):
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from google.cloud import storage  # only paid for when a gs:// path is used
            self._client = storage.Client()
        return self._client

    def _blob(self, uri: str):
        bucket, name = split_gcs(uri)
        return self.client.bucket(bucket).blob(name)

    # reading
    def exists(self, path: str) -> bool:
        if is_gcs(path):
            return self._blob(path).exists()
        return os.path.exists(path)

    def read_bytes(self, path: str) -> bytes:
        if is_gcs(path):
            return self._blob(path).download_as_bytes()
        with open(path, "rb") as f:
            return f.read()

    def open_read(self, path: str) -> BinaryIO:
        if is_gcs(path):
            return self._blob(path).open("rb")
        return open(path, "rb")

    def read_with_generation(self, path: str) -> tuple[Optional[bytes], int]:
        """(content, generation); (None, 0) when absent. Locally the generation is a content hash."""
        if is_gcs(path):
            from google.api_core.exceptions import NotFound
            from google.api_core.exceptions import PreconditionFailed as GcsPreconditionFailed
            blob = self._blob(path)
            for _ in range(5):  # metadata first, then the bytes of exactly that generation
                try:
                    blob.reload()
                    generation = int(blob.generation)
                    return blob.download_as_bytes(if_generation_match=generation), generation
                except NotFound:
                    return None, 0
                except GcsPreconditionFailed:
                    continue  # replaced between the two requests: read again
            raise PreconditionFailed(f"{path} keeps changing while being read")
        return _read_local_with_generation(path)

    def generation(self, path: str) -> Optional[int]:
        """The object's generation (local: a content hash), or None when absent."""
        if is_gcs(path):
            from google.api_core.exceptions import NotFound
            blob = self._blob(path)
            try:
                blob.reload()
            except NotFound:
                return None
            return int(blob.generation)
        data, generation = self.read_with_generation(path)
        return None if data is None else generation

    def download_to_file(self, path: str, local_path: str) -> None:
        """Copy to a local file, atomically: local_path is either absent, as it was, or complete."""
        with replacing(local_path) as f:
            if is_gcs(path):
                self._blob(path).download_to_file(f)
            else:
                with open(path, "rb") as source:
                    shutil.copyfileobj(source, f, 1 << 20)

    def list(self, prefix: str) -> list[str]:
        """Every object (file) under prefix, recursively, as full paths."""
        if is_gcs(prefix):
            bucket, name = split_gcs(prefix)
            if name and not name.endswith("/"):
                name += "/"
            return sorted(f"{GCS_SCHEME}{bucket}/{b.name}"
                          for b in self.client.list_blobs(bucket, prefix=name))
        out = []
        for root, _, files in os.walk(prefix):
            out.extend(os.path.join(root, f) for f in files)
        return sorted(out)

    def glob(self, pattern: str) -> list[str]:
        """Paths matching a glob ('*' does not cross '/', '**' does)."""
        base = fixed_prefix(pattern)
        regex = _glob_regex(pattern)
        return [p for p in self.list(base.rstrip("/") or ".") if regex.fullmatch(p)]

    # writing
    def write_bytes(self, path: str, data: bytes, content_type: str = "application/octet-stream",
                    if_generation_match: Optional[int] = None, cache_control: Optional[str] = None) -> None:
        """Write whole. if_generation_match: compare-and-swap (0 = must not exist yet); cache_control:
        the object's Cache-Control header on GCS (a local file has none)."""
        if is_gcs(path):
            from google.api_core.exceptions import PreconditionFailed as GcsPreconditionFailed
            kwargs = {} if if_generation_match is None else {"if_generation_match": if_generation_match}
            blob = self._blob(path)
            blob.content_type = content_type  # in the object's metadata too, parameters (charset) included
            if cache_control is not None:
                blob.cache_control = cache_control
            try:
                blob.upload_from_string(data, content_type=content_type, **kwargs)
            except GcsPreconditionFailed as e:
                raise PreconditionFailed(f"{path} changed since it was read ({e.message})") from None
            return
        replace = None if if_generation_match is None else (
            lambda tmp, target: _local_compare_and_swap(tmp, target, if_generation_match))
        with replacing(path, replace=replace, durable=True) as f:
            f.write(data)

    def upload_file(self, local_path: str, path: str) -> None:
        if is_gcs(path):
            self._blob(path).upload_from_filename(local_path)
        else:
            with replacing(path) as f, open(local_path, "rb") as source:
                shutil.copyfileobj(source, f, 1 << 20)

    def delete(self, path: str) -> None:
        """Delete one object (file); an absent one is not an error."""
        if is_gcs(path):
            from google.api_core.exceptions import NotFound
            try:
                self._blob(path).delete()
            except NotFound:
                pass
        elif os.path.exists(path):
            os.unlink(path)

    def delete_prefix(self, prefix: str) -> int:
        """Delete everything under prefix; returns how many objects went."""
        if is_gcs(prefix):
            paths = self.list(prefix)
            for path in paths:
                self._blob(path).delete()
            return len(paths)
        if not os.path.exists(prefix):
            return 0
        count = sum(len(files) for _, _, files in os.walk(prefix))
        shutil.rmtree(prefix)
        return count

    def check_writable(self, directory: str) -> None:
        """Write and delete a probe object; raises with the storage's own reason if it cannot."""
        probe = join(directory, f".imgsim-write-probe-{os.getpid()}")
        self.write_bytes(probe, b"probe")
        if is_gcs(probe):
            self._blob(probe).delete()
        else:
            os.unlink(probe)


def sha256_file(path: str) -> str:
    """The sha256 of a local file."""
    return file_digest(path, "sha256")


def file_digest(path: str, algorithm: str) -> str:
    """The hex digest (hashlib's algorithm name) of a local file, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fixed_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard, cut back to the last '/'."""
    cut = len(pattern)
    for ch in "*?[":
        i = pattern.find(ch)
        if i != -1:
            cut = min(cut, i)
    if cut == len(pattern):
        return pattern.rsplit("/", 1)[0] + "/" if "/" in pattern else ""
    head = pattern[:cut]
    return head[: head.rfind("/") + 1] if "/" in head else ""


def _glob_regex(pattern: str) -> "re.Pattern":
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i)
            if end == -1:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                body = pattern[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _read_local_with_generation(path: str) -> tuple[Optional[bytes], int]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, 0
    return data, _content_generation(data)


def _content_generation(data: bytes) -> int:
    """A local stand-in for GCS generations: timestamps are too coarse to tell two writes apart."""
    return int.from_bytes(hashlib.sha256(data).digest()[:7], "big") or 1


class replacing:
    """`with replacing(path) as f:` writes f to a temporary file of this process and thread beside
    path, then renames it over path (or calls replace(tmp, path)); on error the temporary goes.

    The temporary is created with mode 0o666 less the umask, as open() would create path itself."""

    def __init__(self, path: str, replace=None, durable: bool = False):
        self.path = path
        self.replace = replace or os.replace
        self.durable = durable

    def __enter__(self) -> BinaryIO:
        directory, name = os.path.split(self.path)
        os.makedirs(directory or ".", exist_ok=True)
        while True:
            self.tmp = os.path.join(directory, f".tmp-{os.getpid()}-{threading.get_ident()}-"
                                               f"{secrets.token_hex(4)}-{name}")
            try:
                fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                break
            except FileExistsError:
                continue
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                self.file.flush()
                if self.durable:
                    os.fsync(self.file.fileno())
            self.file.close()
            if kind is None:
                self.replace(self.tmp, self.path)
        finally:
            if os.path.lexists(self.tmp):
                os.unlink(self.tmp)


def _local_compare_and_swap(tmp: str, path: str, expected_generation: int) -> None:
    """Atomic rename under an exclusive lock on path + '.lock' (imgsim.lockfile), so two local
    writers cannot interleave, and a writer killed inside never blocks the next one."""
    lock_path = path + ".lock"
    try:
        with exclusive_lock(lock_path) as dead_holder:
            if dead_holder:
                logging.getLogger(__name__).warning(
                    "%s was left by %s, which died while replacing %s; the lock was free and is taken over",
                    lock_path, dead_holder.describe(), path)
            current = _read_local_with_generation(path)[1]
            if current != expected_generation:
                raise PreconditionFailed(
                    f"{path} changed since it was read (generation {current} != {expected_generation})")
            os.replace(tmp, path)
    except LockBusy as e:
        raise WriterBusy(f"{path} is being replaced by another writer right now ({e})") from None
