"""The index artifact: its files, its manifest, publishing it, and the LATEST pointer.

    OUT/runs/RUN_ID/index/
        scann/...            the ScaNN searcher, serialised with relative paths
        ids.parquet          row -> id, url, sha256, width, height, embedding, metadata
        neighbors.parquet    id -> neighbor_ids, scores (top k, best first, the item itself excluded)
        groups.parquet       group, id, group_size: near-duplicate groups
        manifest.json        format version, run, model signature, ScaNN config, recall, sha256 of every file
    OUT/LATEST               {"run_id", "index", "created", "manifest_sha256"}

Publishing uploads the files (manifest last), reads the index back from where
it landed, verifies every checksum, loads ScaNN and self-queries it, and only
then replaces LATEST, with a compare-and-swap against the version read when
the run started: a run never silently overwrites a LATEST it did not see.
Nothing here unpickles: ScaNN's optional scann_docids.pkl is never written
and never accepted.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.storage import ObjectStore, PreconditionFailed, is_gcs, join, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCANN_DIR = "scann"
FORBIDDEN_FILES = ("scann_docids.pkl",)


class ArtifactError(Exception):
    """The artifact is missing, malformed or does not match its manifest."""


@dataclasses.dataclass(frozen=True)
class Latest:
    run_id: str
    index: str  # relative to the output root
    created: str
    manifest_sha256: str
    generation: int = 0

    @classmethod
    def parse(cls, data: bytes, generation: int = 0, where: str = "LATEST") -> "Latest":
        try:
            doc = json.loads(data)
            return cls(run_id=str(doc["run_id"]), index=str(doc["index"]), created=str(doc["created"]),
                       manifest_sha256=str(doc["manifest_sha256"]), generation=generation)
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{where} is malformed ({type(e).__name__}: {e}); "
                                "fix or delete it (it must name run_id, index, created, manifest_sha256)") from None

    def to_json(self) -> bytes:
        doc = {"run_id": self.run_id, "index": self.index, "created": self.created,
               "manifest_sha256": self.manifest_sha256, "format_version": FORMAT_VERSION}
        return json.dumps(doc, indent=2).encode()


def read_latest(store: ObjectStore, output: str) -> Optional[Latest]:
    """LATEST under output, or None when nothing was published yet; ArtifactError when malformed."""
    path = join(output, "LATEST")
    data, generation = store.read_with_generation(path)
    return None if data is None else Latest.parse(data, generation, path)


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


def check_manifest(manifest: dict) -> None:
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"unsupported artifact format {manifest.get('format_version')!r} "
                            f"(this imgsim reads {FORMAT_VERSION})")
    for rel in manifest.get("files", {}):
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or os.path.basename(rel) in FORBIDDEN_FILES:
            raise ArtifactError(f"the manifest lists a file imgsim will not load: {rel!r}")


def fetch_artifact(store: ObjectStore, index_dir: str, local_dir: str) -> dict:
    """Copy the artifact at index_dir into local_dir (reusing verified files) and verify it all."""
    manifest_bytes = store.read_bytes(join(index_dir, MANIFEST))
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as e:
        raise ArtifactError(f"{join(index_dir, MANIFEST)} is not JSON ({e})") from None
    check_manifest(manifest)
    for rel, meta in manifest["files"].items():
        target = os.path.join(local_dir, *rel.split("/"))
        if os.path.exists(target) and sha256_file(target) == meta["sha256"]:
            continue
        store.download_to_file(join(index_dir, rel), target)
    verify_local(local_dir, manifest)
    with open(os.path.join(local_dir, MANIFEST), "wb") as f:
        f.write(manifest_bytes)
    return manifest


def verify_local(local_dir: str, manifest: dict) -> None:
    """Every listed file present with its checksum, and no pickle anywhere."""
    check_manifest(manifest)
    for rel, meta in manifest["files"].items():
        path = os.path.join(local_dir, *rel.split("/"))
        if not os.path.isfile(path):
            raise ArtifactError(f"the artifact lacks {rel}")
        actual = sha256_file(path)
        if actual != meta["sha256"]:
            raise ArtifactError(f"{rel} does not match the manifest (sha256 {actual[:12]}… != "
                                f"{meta['sha256'][:12]}…): the artifact is damaged or was altered")
    for rel in local_files(local_dir):
        if os.path.basename(rel) in FORBIDDEN_FILES:
            raise ArtifactError(f"refusing an artifact directory holding {rel}")


def load_searcher(local_dir: str):
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind.load_searcher(os.path.join(local_dir, SCANN_DIR))


def self_query_check(local_dir: str, sample: int = 20, tolerance: float = 1e-3) -> None:
    """Load the published index and query it with its own vectors: each must find itself first
    (or an exact duplicate scoring the same)."""
    from imgsim.outputs import vectors

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


@dataclasses.dataclass(frozen=True)
class PublishResult:
    index_dir: str
    manifest_sha256: str
    latest_updated: bool
    latest_detail: str


def publish(staging: str, output: str, run_id: str, index_dir: str, expected_latest_generation: int,
            store: Optional[ObjectStore] = None, keep_runs: Optional[int] = None) -> PublishResult:
    """Upload the staged artifact, validate it where it landed, then compare-and-swap LATEST."""
    store = store or ObjectStore()
    with open(os.path.join(staging, MANIFEST), "rb") as f:
        manifest_bytes = f.read()
    for rel in local_files(staging):
        if rel != MANIFEST:
            store.upload_file(os.path.join(staging, *rel.split("/")), join(index_dir, rel))
    store.write_bytes(join(index_dir, MANIFEST), manifest_bytes, content_type="application/json")

    if is_gcs(index_dir):  # read back what landed in the bucket, as a consumer would
        check_dir = tempfile.mkdtemp(prefix="imgsim-validate-")
        try:
            fetch_artifact(store, index_dir, check_dir)
            self_query_check(check_dir)
        finally:
            shutil.rmtree(check_dir, ignore_errors=True)
    else:  # a local artifact is checked where it is, without copying it
        verify_local(index_dir, json.loads(manifest_bytes))
        self_query_check(index_dir)

    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    latest = Latest(run_id=run_id, index=f"runs/{run_id}/index", created=_now(), manifest_sha256=manifest_sha)
    try:
        store.write_bytes(join(output, "LATEST"), latest.to_json(), content_type="application/json",
                          if_generation_match=expected_latest_generation)
    except PreconditionFailed as e:
        return PublishResult(index_dir, manifest_sha, False,
                             f"LATEST changed while this run was working, so it was left as it is ({e}); "
                             f"this run's index is complete at {index_dir}")
    pruned = prune_runs(store, output, keep_runs, protect={run_id}) if keep_runs else []
    detail = f"LATEST now points at run {run_id}"
    if pruned:
        detail += f"; pruned runs {', '.join(pruned)}"
    return PublishResult(index_dir, manifest_sha, True, detail)


def prune_runs(store: ObjectStore, output: str, keep: int, protect: set[str]) -> list[str]:
    """Delete all but the `keep` most recent runs (by run id order), never a protected one."""
    runs_dir = join(output, "runs")
    prefix = runs_dir.rstrip("/") + "/"
    run_ids = sorted({p[len(prefix):].split("/", 1)[0] for p in store.list(runs_dir) if p.startswith(prefix)})
    doomed = [r for r in run_ids[:-keep] if r not in protect] if keep < len(run_ids) else []
    for run in doomed:
        store.delete_prefix(join(runs_dir, run))
    return doomed


def write_table(table: pa.Table, path: str) -> None:
    pq.write_table(table, path, compression="zstd")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
