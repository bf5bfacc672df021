"""The index artifact's format: its files, its manifest, and checking them.

    OUT/runs/RUN_ID/index/
        scann/...            the ScaNN searcher, serialised with relative paths
        ids.parquet          row -> id, url, sha256, width, height, embedding, metadata
        neighbors.parquet    id -> neighbor_ids, scores (top k, best first, the item itself excluded)
        groups.parquet       group, id, group_size: near-duplicate groups
        manifest.json        format version, run, model signature, ScaNN config, recall, sha256 of every file

An artifact is trusted only as far as its manifest covers it: every listed
file must match its checksum, and nothing is unpickled (ScaNN's optional
scann_docids.pkl is never written and never accepted). Publishing lives in
imgsim.index.publish, the LATEST pointer in imgsim.index.latest.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.runs.outputs import vectors
from imgsim.storage import ObjectStore, join, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCANN_DIR = "scann"
FORBIDDEN_FILES = ("scann_docids.pkl",)


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
