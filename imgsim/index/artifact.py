"""The index artifact's format: its files, its manifest, and checking them.

    OUT/runs/RUN_ID/index/
        scann/...            the ScaNN searcher, serialised with relative paths
        ids.parquet          row -> id, url, sha256, width, height, embedding, metadata
        neighbors.parquet    id -> neighbor_ids, scores (top k, best first, the item itself excluded)
        groups.parquet       group, id, group_size: near-duplicate groups
        manifest.json        format version, run, model signature, ScaNN config, recall, sha256 of every file

An artifact is trusted only as far as its manifest covers it, and the manifest
only as far as LATEST's manifest_sha256 pins it (when opened through LATEST):
every listed file must have its size and checksum, nothing outside the listed
files is read, nothing is unpickled (ScaNN's optional scann_docids.pkl is never
written and never accepted), no symbolic link inside an artifact is followed,
and scann_assets.pbtxt may only name listed files under scann/ (ScaNN loads
whatever paths it names, absolute ones included, and checks none of them).
Publishing lives in imgsim.index.publish, the LATEST pointer in
imgsim.index.latest.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.embed.signature import ModelSignature
from imgsim.runs.layout import check_run_id
from imgsim.runs.outputs import vectors
from imgsim.storage import ObjectStore, is_gcs, join, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCANN_DIR = "scann"
SCANN_ASSETS = f"{SCANN_DIR}/scann_assets.pbtxt"
# what the consumer and ScaNN read: the manifest must cover each of them
REQUIRED_FILES = ("ids.parquet", "neighbors.parquet", "groups.parquet", f"{SCANN_DIR}/scann_config.pb", SCANN_ASSETS)
FORBIDDEN_FILES = ("scann_docids.pkl",)
_SHA256 = re.compile(r"[0-9a-f]{64}")
# one asset exactly as ScaNN 1.4 writes it with relative_path=True; a path without escapes or quotes
_ASSET = re.compile(r'\s*assets\s*\{\s*(?:asset_type:\s*[A-Z][A-Z0-9_]*\s+asset_path:\s*"(?P<path>[^"\\\x00-\x1f]*)"'
                    r'|asset_path:\s*"(?P<first>[^"\\\x00-\x1f]*)"\s+asset_type:\s*[A-Z][A-Z0-9_]*)\s*\}\s*')


class ArtifactError(Exception):
    """The artifact is missing, malformed or does not match its manifest."""


def local_files(root: str) -> list[str]:
    """Files under root as '/'-separated relative paths, sorted."""
    out = []
    for directory, _, files in os.walk(root):
        for name in files:
            out.append(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
    return sorted(out)


def write_manifest(staging: str, fields: dict) -> dict:
    """Checksum every staged file and write manifest.json beside them; returns the manifest."""
    files = {}
    for rel in local_files(staging):
        if rel == MANIFEST:
            continue
        if os.path.basename(rel) in FORBIDDEN_FILES:
            raise ArtifactError(f"refusing to publish {rel}: pickles are never part of the artifact")
        path = os.path.join(staging, rel)
        files[rel] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    manifest = {"format_version": FORMAT_VERSION, **fields, "files": files}
    with open(os.path.join(staging, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
    return manifest


# the manifest -----------------------------------------------------------------------------------

def parse_manifest(data: bytes, where: str = MANIFEST) -> dict:
    """The manifest in data, its shape checked (check_manifest); ArtifactError otherwise."""
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise ArtifactError(f"{where} is not JSON ({e}); republish the index or roll back to another run") from None
    check_manifest(manifest, where)
    return manifest


def check_manifest(manifest, where: str = MANIFEST) -> None:
    """Refuse a manifest of any other shape than imgsim writes, before anything relies on it."""
    def malformed(what: str) -> ArtifactError:
        return ArtifactError(f"{where} is malformed: {what}; republish the index or roll back to another run")

    if not isinstance(manifest, dict):
        raise malformed(f"it is a JSON {type(manifest).__name__}, not an object")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ArtifactError(f"{where}: unsupported artifact format {version!r} (this imgsim reads {FORMAT_VERSION})")
    run_id = manifest.get("run_id")
    if not isinstance(run_id, str):
        raise malformed(f"run_id is {run_id!r}, not a string")
    try:
        check_run_id(run_id)
        if not isinstance(manifest.get("model_signature"), dict):
            raise ValueError("model_signature is not an object")
        ModelSignature.from_dict(manifest["model_signature"])
    except (ValueError, TypeError) as e:
        raise malformed(str(e)) from None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise malformed("'files' must be an object mapping each file's name to its sha256 and bytes")
    for rel, meta in files.items():
        parts = rel.split("/")
        if (rel == MANIFEST or rel.startswith("/") or "\\" in rel or "\0" in rel
                or any(part in ("", ".", "..") for part in parts) or parts[-1] in FORBIDDEN_FILES):
            raise ArtifactError(f"{where} lists a file imgsim will not load: {rel!r}")
        if not isinstance(meta, dict):
            raise malformed(f"the entry of {rel} is {meta!r}, not an object")
        if not isinstance(meta.get("sha256"), str) or not _SHA256.fullmatch(meta["sha256"]):
            raise malformed(f"the sha256 of {rel} is {meta.get('sha256')!r}, not 64 hexadecimal digits")
        if type(meta.get("bytes")) is not int or meta["bytes"] < 0:
            raise malformed(f"the bytes of {rel} is {meta.get('bytes')!r}, not a size")
    missing = [rel for rel in REQUIRED_FILES if rel not in files]
    if missing:
        raise malformed(f"it does not list {', '.join(missing)}")


def read_manifest(store: ObjectStore, index_dir: str, manifest_sha256: Optional[str] = None) -> tuple[bytes, dict]:
    """The manifest's bytes and content; checked against manifest_sha256 (LATEST's pin) when given."""
    path = join(index_dir, MANIFEST)
    if is_gcs(index_dir):
        if not store.exists(path):
            raise ArtifactError(f"no index at {index_dir}: {MANIFEST} is missing")
        data = store.read_bytes(path)
    else:
        if not os.path.lexists(path):
            raise ArtifactError(f"no index at {index_dir}: {MANIFEST} is missing")
        with os.fdopen(open_inside(index_dir, MANIFEST), "rb") as f:
            data = f.read()
    if manifest_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != manifest_sha256:
            raise ArtifactError(f"{path} is not the manifest LATEST pins (sha256 {actual[:12]}… != manifest_sha256 "
                                f"{manifest_sha256[:12]}…): the index changed after it was published; republish "
                                "it, or roll back to a run that verifies")
    return data, parse_manifest(data, path)


def check_scann_assets(text: str, listed) -> list[str]:
    """The files scann_assets.pbtxt makes ScaNN load, as artifact paths; each must be a listed file.

    Only the form ScaNN writes is read (one `assets { asset_type: T asset_path: "name" }` after
    another, names without escapes): anything else could be read differently by ScaNN's parser."""
    where = SCANN_ASSETS
    names, pos = [], 0
    while text[pos:].strip():
        match = _ASSET.match(text, pos)
        if not match:
            raise ArtifactError(f"{where} is not in the form ScaNN writes (at character {pos}); "
                                "rebuild the index with imgsim")
        names.append(match["path"] if match["path"] is not None else match["first"])
        pos = match.end()
    out = []
    for name in names:
        parts = name.split("/")
        if name.startswith("/"):
            why = "an absolute path"
        elif any(part in ("", ".", "..") for part in parts):
            why = "a path that leaves scann/ or is empty"
        elif f"{SCANN_DIR}/{name}" not in listed:
            why = "a file the manifest does not list"
        else:
            out.append(f"{SCANN_DIR}/{name}")
            continue
        raise ArtifactError(f"{where} names the asset {name!r}, {why}: ScaNN would load it unchecked, "
                            "so the artifact is refused; rebuild the index with imgsim")
    return out


# reading an artifact's files --------------------------------------------------------------------

def open_inside(root: str, rel: str) -> int:
    """A read-only descriptor of the regular file rel under root, reached without following any
    symbolic link below root (each directory is opened relative to the last, so nothing can be
    swapped in between). ArtifactError if rel is missing, a link, or not a regular file."""
    parts = rel.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                raise ArtifactError(f"the artifact lacks {rel}") from None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                        os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise ArtifactError(f"{'/'.join(parts[:i + 1])} in {root} is a symbolic link; imgsim never "
                                        "follows links in an artifact: put the file itself there") from None
                raise ArtifactError(f"{rel} in {root} cannot be read ({e.strerror})") from None
            os.close(fd)
            fd = child
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"{rel} in {root} is not a regular file")
        opened, fd = fd, -1
        return opened
    finally:
        if fd >= 0:
            os.close(fd)


def file_problem(root: str, rel: str, meta: dict) -> Optional[str]:
    """Why rel under root does not match its manifest entry (size, then sha256), or None."""
    with os.fdopen(open_inside(root, rel), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != meta["bytes"]:
            return (f"{rel} does not match the manifest: it has {size:,} bytes, the manifest lists "
                    f"{meta['bytes']:,}; the artifact is damaged or was altered")
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != meta["sha256"]:
        return (f"{rel} does not match the manifest (sha256 {actual[:12]}… != {meta['sha256'][:12]}…): "
                "the artifact is damaged or was altered")
    return None


def fetch_artifact(store: ObjectStore, index_dir: str, local_dir: str,
                   manifest_sha256: Optional[str] = None) -> dict:
    """Copy the artifact at index_dir into local_dir (reusing files that still match) and verify it all.

    A local artifact holding a symbolic link is refused. In local_dir, links and anything else
    in the way are removed, never followed, and each file is replaced whole (storage writes
    through a temporary file), so processes sharing the cache never see half a file."""
    manifest_bytes, manifest = read_manifest(store, index_dir, manifest_sha256)
    for rel, meta in manifest["files"].items():
        if not is_gcs(index_dir):
            os.close(open_inside(index_dir, rel))
        target = _cache_path(local_dir, rel)
        try:
            if file_problem(local_dir, rel, meta) is None:
                continue
        except ArtifactError:
            pass  # missing, or something in the way that _cache_path removed meanwhile
        store.download_to_file(join(index_dir, rel), target)
    verify_local(local_dir, manifest)
    store.write_bytes(os.path.join(local_dir, MANIFEST), manifest_bytes, content_type="application/json")
    return manifest


def _cache_path(local_dir: str, rel: str) -> str:
    """rel's path in the cache, every directory on the way a real one and nothing but a regular
    file (or nothing) at the end: a symbolic link in the way is removed, never followed."""
    parts = rel.split("/")
    directory = local_dir
    for part in [None, *parts[:-1]]:
        directory = directory if part is None else os.path.join(directory, part)
        try:
            mode = os.lstat(directory).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISDIR(mode):
            _remove(directory)
        os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, parts[-1])
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(mode):
        _remove(target)
    return target


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass  # another process sharing the cache removed it first


def verify_local(local_dir: str, manifest: dict) -> None:
    """Every listed file present (no link on the way) with its size and checksum, scann_assets.pbtxt
    naming only listed files, and no pickle anywhere."""
    check_manifest(manifest)
    files = manifest["files"]
    for rel, meta in files.items():
        problem = file_problem(local_dir, rel, meta)
        if problem:
            raise ArtifactError(problem)
    with os.fdopen(open_inside(local_dir, SCANN_ASSETS), "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{SCANN_ASSETS} is not text; rebuild the index with imgsim") from None
    check_scann_assets(text, set(files))
    for rel in local_files(local_dir):
        if os.path.basename(rel) in FORBIDDEN_FILES:
            raise ArtifactError(f"refusing an artifact directory holding {rel}")


def load_searcher(local_dir: str):
    from scann.scann_ops.py import scann_ops_pybind

    try:
        return scann_ops_pybind.load_searcher(os.path.join(local_dir, SCANN_DIR))
    except (RuntimeError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArtifactError(f"ScaNN cannot load the searcher in {local_dir} ({reason}); "
                            "rebuild the index with imgsim") from None


def self_query_check(local_dir: str, sample: int = 20, tolerance: float = 1e-3) -> None:
    """Load the published index and query it with its own vectors: each must find itself first
    (or an exact duplicate scoring the same)."""
    table = pq.read_table(os.path.join(local_dir, "ids.parquet"), columns=["row", "embedding"])
    data = vectors(table)
    if not len(data):
        return
    rows = np.unique(np.linspace(0, len(data) - 1, min(sample, len(data))).astype(np.int64))
    searcher = load_searcher(local_dir)
    found, scores = searcher.search_batched(data[rows], final_num_neighbors=1)
    own = np.einsum("ij,ij->i", data[rows], data[rows])
    bad = [int(r) for r, f, s, o in zip(rows, found[:, 0], scores[:, 0], own) if f != r and s < o - tolerance]
    if bad:
        raise ArtifactError(f"the published index does not find rows {bad[:5]} as their own nearest neighbour")


def write_table(table: pa.Table, path: str) -> None:
    pq.write_table(table, path, compression="zstd")
