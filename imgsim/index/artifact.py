"""The index artifact's format: its files, its manifest, and checking them.

    OUT/runs/RUN_ID/index/
        scann/...            the ScaNN searcher, serialised with relative paths
        ids.parquet          row -> id, url, sha256, width, height, embedding, metadata
        neighbors.parquet    id -> neighbor_ids, scores (top k, best first, the item itself excluded)
        groups.parquet       group, id, group_size: near-duplicate groups
        manifest.json        format version, run, model signature, ScaNN config, recall, sha256 of every file

A sharded index (format 2) holds one searcher per shard instead:

    OUT/runs/RUN_ID/index/
        shards/NNNNN/scann/...         shard NNNNN's ScaNN searcher
        shards/NNNNN/ids.parquet       row -> id, url, sha256, width, height, metadata (no vectors)
        shards/NNNNN/vectors.npy       float32 (count, dim), row order
        neighbors/part-NNNNN-BBBBB.parquet   the neighbours of shard NNNNN's rows from BBBBB * 8192 on
        centroids.npy        float32 (shards, dim): row i is the i-th listed shard's centroid (routing)
        groups.parquet
        manifest.json        as above, plus `shards` (number, dir, count, offset, centroid row, scann,
                             files with sha256 and bytes) and `sharding` (how they were made, shards_to_search)

Rows are numbered shard after shard (offset + row in shard). A format 1 reader
refuses format 2 by its version; this one reads both.

Its names are spelled here and nowhere else, and a manifest is read once into
a typed `Manifest` (format 2: with its `ShardEntry`s) or refused.
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

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import stat
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.embed.signature import ModelSignature
from imgsim.index.tuning import SearchParams
from imgsim.runs.layout import check_run_id
from imgsim.runs.outputs import vectors
from imgsim.storage import ObjectStore, is_gcs, join, sha256_file

FORMAT_VERSION = 1  # one searcher
SHARDED_FORMAT_VERSION = 2  # one searcher per shard
READABLE_VERSIONS = (FORMAT_VERSION, SHARDED_FORMAT_VERSION)
MANIFEST = "manifest.json"
SCANN_DIR = "scann"
SCANN_ASSETS = f"{SCANN_DIR}/scann_assets.pbtxt"
IDS = "ids.parquet"  # the rows (format 1 with their vectors; a shard's, format 2, without)
NEIGHBORS = "neighbors.parquet"  # format 1; format 2 has parts (imgsim.index.shard_neighbors.part_name)
GROUPS = "groups.parquet"
# what the consumer and ScaNN read: the manifest must cover each of them
REQUIRED_FILES = (IDS, NEIGHBORS, GROUPS, f"{SCANN_DIR}/scann_config.pb", SCANN_ASSETS)
CENTROIDS = "centroids.npy"  # format 2: row i is the centroid of the i-th shard listed
VECTORS = "vectors.npy"  # a shard's vectors, float32 (count, dim), for exact search and re-ranking
MODEL_DIR = "model"  # an int8 run's quantised model (OpenVINO IR), to embed queries comparably
REQUIRED_SHARDED_FILES = (GROUPS, CENTROIDS)
REQUIRED_SHARD_FILES = (IDS, VECTORS, f"{SCANN_DIR}/scann_config.pb", SCANN_ASSETS)
_SHARD_DIR = re.compile(r"shards/[0-9]{5}")
FORBIDDEN_FILES = ("scann_docids.pkl",)
_SHA256 = re.compile(r"[0-9a-f]{64}")
EVERY_LEAF = 1 << 30  # leaves_to_search that searches every partition of a ScaNN tree (it is clamped)
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


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """One shard of a format 2 manifest: its number (and so its directory), rows, place among all
    rows, centroid row, ScaNN configuration, tuned search parameters and files."""

    shard: int
    count: int
    offset: int  # its first row's number among all rows (shard after shard)
    centroid: int  # its row in centroids.npy
    scann: dict
    files: dict  # artifact path -> {"sha256", "bytes"}, each inside dir
    search: Optional[dict] = None

    @property
    def dir(self) -> str:
        return shard_dir(self.shard)

    @property
    def scann_dir(self) -> str:
        return f"{self.dir}/{SCANN_DIR}"

    def path(self, name: str) -> str:
        """A file of the shard, as an artifact path."""
        return f"{self.dir}/{name}"

    @property
    def params(self) -> SearchParams:
        """The search parameters tuning chose for the shard (the configuration's when none)."""
        return SearchParams.from_dict(self.search)

    def to_dict(self) -> dict:
        return {"shard": self.shard, "dir": self.dir, "count": self.count, "offset": self.offset,
                "centroid": self.centroid, "scann": self.scann, **({"search": self.search} if self.search else {}),
                "files": self.files}

    @classmethod
    def parse(cls, raw, where: str, malformed, row: int, offset: int, last: int) -> "ShardEntry":
        """The row-th shard entry; offset: the rows before it; last: the number before it."""
        if not isinstance(raw, dict):
            raise malformed(f"a shard entry is {raw!r}, not an object")
        number = raw.get("shard")
        if type(number) is not int or number <= last:
            raise malformed(f"shard numbers must be increasing integers, not {number!r}")
        directory = raw.get("dir")
        if directory != shard_dir(number):
            raise ArtifactError(f"{where}: shard {number} names the directory {directory!r}; a shard lives in "
                                f"{shard_dir(number)} of its artifact and nowhere else")
        count, at = raw.get("count"), raw.get("offset")
        if type(count) is not int or count < 1 or type(at) is not int or at != offset:
            raise malformed(f"shard {number} has count {count!r} and offset {at!r} (expected offset {offset})")
        if raw.get("centroid") != row:
            raise malformed(f"shard {number}'s centroid is {raw.get('centroid')!r}, not its row in {CENTROIDS} "
                            f"({row})")
        _check_search(raw.get("search"), malformed)
        if not isinstance(raw.get("scann"), dict):
            raise malformed(f"shard {number} has no ScaNN configuration")
        files = raw.get("files")
        if not isinstance(files, dict) or not files:
            raise malformed(f"shard {number} lists no files")
        outside = [rel for rel in files if not isinstance(rel, str) or not rel.startswith(directory + "/")]
        if outside:
            raise ArtifactError(f"{where}: shard {number} lists {outside[0]!r}, outside its directory "
                                f"{directory}/; the artifact is refused")
        _check_file_entries(files, where, malformed)
        missing = [name for name in REQUIRED_SHARD_FILES if f"{directory}/{name}" not in files]
        if missing:
            raise malformed(f"shard {number} does not list {', '.join(missing)}")
        return cls(number, count, at, row, raw["scann"], files, raw.get("search"))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A checked manifest: what the format says (version, run, model, files, shards) typed, the
    rest (recall, neighbours, groups, filters, ... : reports) as written, by `section`."""

    document: dict  # the manifest as written
    format_version: int
    run_id: str
    signature: ModelSignature
    files: dict  # artifact path -> {"sha256", "bytes"} (a sharded artifact's shard files are with its shards)
    shards: tuple = ()  # ShardEntry, format 2
    shards_to_search: Optional[int] = None  # format 2

    @classmethod
    def parse(cls, document, where: str = MANIFEST) -> "Manifest":
        """Refuse a manifest of any other shape than imgsim writes, before anything relies on it."""
        def malformed(what: str) -> ArtifactError:
            return ArtifactError(f"{where} is malformed: {what}; republish the index or roll back to another run")

        if not isinstance(document, dict):
            raise malformed(f"it is a JSON {type(document).__name__}, not an object")
        version = document.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise ArtifactError(f"{where}: unsupported artifact format {version!r} (this imgsim reads "
                                f"{' and '.join(map(str, READABLE_VERSIONS))})")
        run_id = document.get("run_id")
        if not isinstance(run_id, str):
            raise malformed(f"run_id is {run_id!r}, not a string")
        try:
            check_run_id(run_id)
            if not isinstance(document.get("model_signature"), dict):
                raise ValueError("model_signature is not an object")
            signature = ModelSignature.from_dict(document["model_signature"])
        except (ValueError, TypeError) as e:
            raise malformed(str(e)) from None
        files = document.get("files")
        if not isinstance(files, dict) or not files:
            raise malformed("'files' must be an object mapping each file's name to its sha256 and bytes")
        _check_file_entries(files, where, malformed)
        if version == FORMAT_VERSION:
            missing = [rel for rel in REQUIRED_FILES if rel not in files]
            if missing:
                raise malformed(f"it does not list {', '.join(missing)}")
            scann = document.get("scann")
            _check_search(scann.get("search") if isinstance(scann, dict) else None, malformed)
            return cls(document, version, run_id, signature, files)
        shards, searched = _parse_shards(document, where, malformed)
        return cls(document, version, run_id, signature, files, shards, searched)

    @property
    def sharded(self) -> bool:
        return self.format_version == SHARDED_FORMAT_VERSION

    @property
    def count(self) -> int:
        return int(self.document["count"])

    def section(self, name: str) -> dict:
        """A report of the manifest (recall, neighbors, groups, filters, scann, sharding, build, ...),
        as written; empty when absent."""
        value = self.document.get(name)
        return value if isinstance(value, dict) else {}

    def entry(self, number: int) -> ShardEntry:
        return next(e for e in self.shards if e.shard == number)

    def all_files(self) -> dict:
        """Every file of the artifact, artifact path -> {sha256, bytes}."""
        files = dict(self.files)
        for entry in self.shards:
            files.update(entry.files)
        return files

    def scann_dirs(self) -> list[str]:
        """The directories holding a ScaNN searcher: scann, or each shard's."""
        return [entry.scann_dir for entry in self.shards] if self.sharded else [SCANN_DIR]

    def to_bytes(self) -> bytes:
        return encode_manifest(self.document)


def write_manifest(staging: str, fields: dict, shards: Optional[Sequence[ShardEntry]] = None) -> Manifest:
    """Checksum every staged file and write manifest.json beside them; returns the manifest.

    shards: a sharded artifact's shard entries (each listing its own files, which are left out of
    the top-level `files`): the manifest is then format 2."""
    files = {}
    for rel in local_files(staging):
        if rel == MANIFEST:
            continue
        if os.path.basename(rel) in FORBIDDEN_FILES:
            raise ArtifactError(f"refusing to publish {rel}: pickles are never part of the artifact")
        if shards is not None and rel.startswith("shards/"):
            continue
        path = os.path.join(staging, rel)
        files[rel] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    document = manifest_document(fields, files, shards)
    with open(os.path.join(staging, MANIFEST), "wb") as f:
        f.write(encode_manifest(document))
    return Manifest.parse(document)


def manifest_document(fields: dict, files: dict, shards: Optional[Sequence[ShardEntry]] = None) -> dict:
    if shards is None:
        return {"format_version": FORMAT_VERSION, **fields, "files": files}
    return {"format_version": SHARDED_FORMAT_VERSION, **fields, "shards": [e.to_dict() for e in shards],
            "files": files}


def encode_manifest(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=False).encode()


# the manifest -----------------------------------------------------------------------------------

def parse_manifest(data: bytes, where: str = MANIFEST) -> Manifest:
    """The manifest in data, its shape checked (Manifest.parse); ArtifactError otherwise."""
    try:
        document = json.loads(data)
    except ValueError as e:
        raise ArtifactError(f"{where} is not JSON ({e}); republish the index or roll back to another run") from None
    return Manifest.parse(document, where)


def _check_file_entries(files: dict, where: str, malformed) -> None:
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


def _parse_shards(document: dict, where: str, malformed) -> tuple[tuple, int]:
    """Format 2: the shard list (numbered directories, counts adding up, offsets, centroids, each
    shard's files inside its own directory), shards_to_search and every neighbours part listed."""
    from imgsim.index.shard_neighbors import part_names  # the parts' names: one module says them

    files = document["files"]
    raw = document.get("shards")
    if not isinstance(raw, list) or not raw:
        raise malformed("'shards' must be a non-empty list")
    stray = sorted(rel for rel in files if rel.startswith("shards/"))
    if stray:
        raise ArtifactError(f"{where} lists {stray[0]!r} outside its shard's entry; a shard's files are listed "
                            "with the shard")
    shards, offset, last = [], 0, -1
    for row, item in enumerate(raw):
        entry = ShardEntry.parse(item, where, malformed, row, offset, last)
        shards.append(entry)
        offset, last = offset + entry.count, entry.shard
    if document.get("count") != offset:
        raise malformed(f"count is {document.get('count')!r} but the shards hold {offset}")
    sharding = document.get("sharding")
    searched = sharding.get("shards_to_search") if isinstance(sharding, dict) else None
    if type(searched) is not int or not 1 <= searched <= len(shards):
        raise malformed(f"sharding.shards_to_search is {searched!r}, not between 1 and {len(shards)}")
    required = list(REQUIRED_SHARDED_FILES) + part_names([(e.shard, e.count) for e in shards])
    missing = [rel for rel in required if rel not in files]
    if missing:
        raise malformed(f"it does not list {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                                             else ""))
    return tuple(shards), searched


def _check_search(search, malformed) -> None:
    """The search parameters a consumer passes to ScaNN: positive integers only."""
    try:
        SearchParams.from_dict(search)
    except ValueError as e:
        raise malformed(str(e)) from None


def read_manifest(store: ObjectStore, index_dir: str, manifest_sha256: Optional[str] = None
                  ) -> tuple[bytes, Manifest]:
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


def check_scann_assets(text: str, listed, scann_dir: str = SCANN_DIR) -> list[str]:
    """The files scann_assets.pbtxt (in scann_dir) makes ScaNN load, as artifact paths; each must be
    a listed file in scann_dir.

    Only the form ScaNN writes is read (one `assets { asset_type: T asset_path: "name" }` after
    another, names without escapes): anything else could be read differently by ScaNN's parser."""
    where = f"{scann_dir}/scann_assets.pbtxt"
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
            why = f"a path that leaves {scann_dir}/ or is empty"
        elif f"{scann_dir}/{name}" not in listed:
            why = "a file the manifest does not list"
        else:
            out.append(f"{scann_dir}/{name}")
            continue
        raise ArtifactError(f"{where} names the asset {name!r}, {why}: ScaNN would load it unchecked, "
                            "so the artifact is refused; rebuild the index with imgsim")
    return out


# reading an artifact's files --------------------------------------------------------------------

def check_no_links(root: str, rel: str) -> None:
    """ArtifactError if any part of rel under the local directory root is a symbolic link: a run's
    directory that links into another output root would make LATEST, or a run id, open an index
    published elsewhere."""
    path = root
    for part in rel.split("/"):
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise ArtifactError(f"{os.path.relpath(path, root)} in {root} is a symbolic link; imgsim never follows "
                                "links in an output root: put the run itself there")


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
                   manifest_sha256: Optional[str] = None) -> Manifest:
    """Copy the artifact at index_dir into local_dir (reusing files that still match) and verify it all.

    A sharded artifact is fetched file by file when its files are first needed (fetch_files), so
    here only its manifest is read and checked. A local artifact holding a symbolic link is
    refused. In local_dir, links and anything else in the way are removed, never followed, and
    each file is replaced whole (storage writes through a temporary file), so processes sharing
    the cache never see half a file."""
    manifest_bytes, manifest = read_manifest(store, index_dir, manifest_sha256)
    if not manifest.sharded:
        fetch_files(store, index_dir, local_dir, manifest.files)
        verify_local(local_dir, manifest)
    os.makedirs(local_dir, exist_ok=True)
    store.write_bytes(os.path.join(local_dir, MANIFEST), manifest_bytes, content_type="application/json")
    return manifest


def fetch_files(store: ObjectStore, index_dir: str, local_dir: str, files: dict) -> None:
    """Copy the listed files (artifact path -> entry) into local_dir unless a matching copy is there,
    then check each against its entry; a searcher among them (its scann_assets.pbtxt) may name
    only files among them, in its own directory."""
    for rel, meta in files.items():
        if not is_gcs(index_dir):
            os.close(open_inside(index_dir, rel))
        target = _cache_path(local_dir, rel)
        try:
            if file_problem(local_dir, rel, meta) is None:
                continue
        except ArtifactError:
            pass  # missing, or something in the way that _cache_path removed meanwhile
        store.download_to_file(join(index_dir, rel), target)
    for rel, meta in files.items():
        problem = file_problem(local_dir, rel, meta)
        if problem:
            raise ArtifactError(problem)
    for rel in files:
        if rel == SCANN_ASSETS or rel.endswith(f"/{SCANN_ASSETS}"):
            _check_assets_file(local_dir, rel[:-len("/scann_assets.pbtxt")], set(files))


def _check_assets_file(local_dir: str, scann_dir: str, listed: set) -> None:
    rel = f"{scann_dir}/scann_assets.pbtxt"
    with os.fdopen(open_inside(local_dir, rel), "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{rel} is not text; rebuild the index with imgsim") from None
    check_scann_assets(text, listed, scann_dir)
    directory = os.path.join(local_dir, *scann_dir.split("/"))
    for name in local_files(directory):
        if os.path.basename(name) in FORBIDDEN_FILES:
            raise ArtifactError(f"refusing an artifact directory holding {scann_dir}/{name}")


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


def verify_local(local_dir: str, manifest: Manifest) -> None:
    """Every listed file present (no link on the way) with its size and checksum, each
    scann_assets.pbtxt naming only listed files of its own searcher, and no pickle anywhere."""
    files = manifest.all_files()
    for rel, meta in files.items():
        problem = file_problem(local_dir, rel, meta)
        if problem:
            raise ArtifactError(problem)
    for scann_dir in manifest.scann_dirs():
        _check_assets_file(local_dir, scann_dir, set(files))
    for rel in local_files(local_dir):
        if os.path.basename(rel) in FORBIDDEN_FILES:
            raise ArtifactError(f"refusing an artifact directory holding {rel}")


def load_searcher(local_dir: str, scann_dir: str = SCANN_DIR):
    from imgsim.index.scann_import import scann_ops_pybind

    try:
        return scann_ops_pybind().load_searcher(os.path.join(local_dir, *scann_dir.split("/")))
    except (RuntimeError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArtifactError(f"ScaNN cannot load the searcher in {os.path.join(local_dir, scann_dir)} ({reason}); "
                            "rebuild the index with imgsim") from None


def self_query_check(local_dir: str, manifest: Manifest, sample: int = 20) -> None:
    """Load the published index and query it with its own vectors: each must find itself first
    (or an exact duplicate scoring the same). A sharded index is checked shard by shard, one
    loaded at a time."""
    if manifest.sharded:
        for entry in manifest.shards:
            self_query_shard(local_dir, entry.shard, entry.count, manifest.signature.dim, sample)
        return
    table = pq.read_table(os.path.join(local_dir, IDS), columns=["row", "embedding"])
    data = vectors(table)
    if len(data):
        self_query(load_searcher(local_dir), data, sample)


def self_query_shard(local_dir: str, number: int, count: int, dim: int, sample: int = 20) -> None:
    """self_query_check for one shard's files under local_dir."""
    directory = shard_dir(number)
    data = load_vectors(os.path.join(local_dir, *directory.split("/"), VECTORS), count, dim, mmap=True)
    self_query(load_searcher(local_dir, f"{directory}/{SCANN_DIR}"), data, sample, f" (shard {number})")


def self_query(searcher, data: np.ndarray, sample: int = 20, where: str = "", tolerance: float = 1e-3,
               rows: Optional[Sequence[int]] = None) -> None:
    """Query a searcher with a spread of its own rows (or the rows given): each must come back
    first (or a duplicate scoring the same); ArtifactError otherwise. Every partition of a tree is
    searched: this checks that the searcher's rows are the artifact's vectors, not recall
    (measured while building): a tree searching its nearest 5% of partitions can miss a point's
    own, as it did for 2 of 20 sampled rows of a 238,000-item shard of the 2,000,000-vector
    benchmark."""
    if rows is None:
        rows = np.linspace(0, len(data) - 1, min(sample, len(data)))
    rows = np.unique(np.asarray(rows).astype(np.int64))
    if not len(rows):
        return
    queries = np.asarray(data[rows], np.float32)
    found, scores = searcher.search_batched(queries, final_num_neighbors=1, leaves_to_search=EVERY_LEAF)
    own = np.einsum("ij,ij->i", queries, queries)
    bad = [int(r) for r, f, s, o in zip(rows, found[:, 0], scores[:, 0], own) if f != r and s < o - tolerance]
    if bad:
        raise ArtifactError(f"the published index{where} does not find rows {bad[:5]} as their own nearest "
                            "neighbour")


def shard_dir(number: int) -> str:
    """A shard's directory inside the artifact: shards/00000, shards/00001, ..."""
    return f"shards/{number:05d}"


def load_vectors(path_or_file, count: int, dim: int, mmap: bool = False) -> np.ndarray:
    """A shard's vectors.npy, refused unless it is float32 (count, dim) in C order."""
    try:
        data = np.load(path_or_file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{VECTORS} cannot be read ({e}); rebuild the index with imgsim") from None
    if data.dtype != np.float32 or data.shape != (count, dim) or not data.flags.c_contiguous:
        raise ArtifactError(f"{VECTORS} holds {data.dtype} {data.shape}, not float32 ({count}, {dim}); "
                            "rebuild the index with imgsim")
    return data


def write_table(table: pa.Table, path: str, row_group_rows: Optional[int] = None) -> None:
    pq.write_table(table, path, compression="zstd", row_group_size=row_group_rows)
