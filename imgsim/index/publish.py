"""Publishing an index artifact, checking a published one, and moving LATEST back.

Publishing uploads the files (manifest last), reads the index back from where
it landed, verifies every checksum, loads ScaNN and self-queries it, and only
then replaces LATEST, with a compare-and-swap against the version read when
the run started: a run never silently overwrites a LATEST it did not see.
`verify` runs the same checks on any published run (`imgsim verify`), and
`rollback` points LATEST at an earlier run through the same compare-and-swap
(`imgsim rollback`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from typing import Callable, Optional

from imgsim.index.artifact import (MANIFEST, ArtifactError, Manifest, check_no_links, fetch_artifact, fetch_files,
                                   file_problem, local_files, parse_manifest, read_manifest, self_query_check,
                                   self_query_shard, verify_local)
from imgsim.index.latest import Latest, latest_path, read_latest, swap_latest
from imgsim.runs.layout import RunLayout, check_run_id, runs_dir
from imgsim.storage import ObjectStore, PreconditionFailed, WriterBusy, is_gcs, join


@dataclasses.dataclass(frozen=True)
class PublishResult:
    index_dir: str
    manifest_sha256: str
    latest_updated: bool
    latest_detail: str


def publish(store: ObjectStore, staging: str, layout: RunLayout, expected_latest_generation: int,
            keep_runs: Optional[int] = None) -> PublishResult:
    """Upload the staged artifact, validate it where it landed, then compare-and-swap LATEST."""
    with open(os.path.join(staging, MANIFEST), "rb") as f:
        manifest_bytes = f.read()
    index_dir = layout.index_dir
    for rel in local_files(staging):
        if rel != MANIFEST:
            store.upload_file(os.path.join(staging, *rel.split("/")), join(index_dir, rel))
    store.write_bytes(join(index_dir, MANIFEST), manifest_bytes, content_type="application/json")
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    manifest = verify(store, index_dir, manifest_sha)  # what landed is what was staged
    return _swap(store, layout, manifest_sha, manifest.format_version, expected_latest_generation, keep_runs)


def publish_manifest(store: ObjectStore, layout: RunLayout, manifest_bytes: bytes, expected_latest_generation: int,
                     keep_runs: Optional[int] = None) -> PublishResult:
    """Publish an artifact whose files are already in place, each verified where it landed by the
    worker that wrote it (a sharded index built by the pipeline): write the manifest, check it as
    it landed, then compare-and-swap LATEST."""
    index_dir = layout.index_dir
    parse_manifest(manifest_bytes, join(index_dir, MANIFEST))
    store.write_bytes(join(index_dir, MANIFEST), manifest_bytes, content_type="application/json")
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    _, manifest = read_manifest(store, index_dir, manifest_sha)
    return _swap(store, layout, manifest_sha, manifest.format_version, expected_latest_generation, keep_runs)


def _swap(store: ObjectStore, layout: RunLayout, manifest_sha: str, format_version: int,
          expected_latest_generation: int, keep_runs: Optional[int]) -> PublishResult:
    index_dir = layout.index_dir
    try:
        swap_latest(store, layout.output, Latest.for_run(layout.run_id, manifest_sha, format_version),
                    expected_latest_generation)
    except WriterBusy as e:
        return PublishResult(index_dir, manifest_sha, False,
                             f"another publisher was replacing LATEST at that moment, so it was left as it is "
                             f"({e}); this run's index is complete at {index_dir} (imgsim rollback --run-id "
                             f"{layout.run_id} points LATEST at it)")
    except PreconditionFailed as e:
        return PublishResult(index_dir, manifest_sha, False,
                             f"LATEST changed while this run was working, so it was left as it is ({e}); "
                             f"this run's index is complete at {index_dir}")
    pruned = prune_runs(store, layout.output, keep_runs, publishing=layout.run_id) if keep_runs else []
    detail = f"LATEST now points at run {layout.run_id}"
    if pruned:
        detail += f"; pruned runs {', '.join(pruned)}"
    return PublishResult(index_dir, manifest_sha, True, detail)


def land_files(store: ObjectStore, staging: str, index_dir: str, files: dict,
               then: Optional[Callable[[str], None]] = None) -> None:
    """Upload staged files (artifact path -> {sha256, bytes}) into index_dir and check each as it
    landed (a gs:// file is read back); ArtifactError when one differs. then(root): a further check
    of the landed files, given a local directory holding them (index_dir, or the copy read back)."""
    for rel in files:
        store.upload_file(os.path.join(staging, *rel.split("/")), join(index_dir, rel))
    if not is_gcs(index_dir):
        _check_landed(index_dir, files, then, index_dir)
        return
    check_dir = tempfile.mkdtemp(prefix="imgsim-landed-")
    try:
        for rel in files:
            os.makedirs(os.path.dirname(os.path.join(check_dir, *rel.split("/"))), exist_ok=True)
            store.download_to_file(join(index_dir, rel), os.path.join(check_dir, *rel.split("/")))
        _check_landed(check_dir, files, then, index_dir)
    finally:
        shutil.rmtree(check_dir, ignore_errors=True)


def _check_landed(root: str, files: dict, then, index_dir: str) -> None:
    problem = next((p for p in (file_problem(root, rel, meta) for rel, meta in files.items()) if p), None)
    if problem:
        raise ArtifactError(f"{problem} (as uploaded to {index_dir})")
    if then is not None:
        then(root)


def verify(store: ObjectStore, index_dir: str, manifest_sha256: Optional[str] = None) -> Manifest:
    """Check a published artifact as a consumer would: the manifest (against manifest_sha256, LATEST's
    pin, when given), every file's size and checksum, the ScaNN assets, then load and self-query
    (a sharded index shard by shard, one in memory at a time).

    A gs:// artifact is read back into a temporary directory; a local one is checked where it is.
    Returns its manifest; raises ArtifactError."""
    if is_gcs(index_dir):
        check_dir = tempfile.mkdtemp(prefix="imgsim-verify-")
        try:
            manifest = fetch_artifact(store, index_dir, check_dir, manifest_sha256)
            if not manifest.sharded:
                self_query_check(check_dir, manifest)
                return manifest
            fetch_files(store, index_dir, check_dir, manifest.files)
            for entry in manifest.shards:
                fetch_files(store, index_dir, check_dir, entry.files)
                self_query_shard(check_dir, entry.shard, entry.count, manifest.signature.dim)
                shutil.rmtree(os.path.join(check_dir, *entry.dir.split("/")), ignore_errors=True)
        finally:
            shutil.rmtree(check_dir, ignore_errors=True)
        return manifest
    _, manifest = read_manifest(store, index_dir, manifest_sha256)
    verify_local(index_dir, manifest)
    self_query_check(index_dir, manifest)
    return manifest


def rollback(store: ObjectStore, output: str, run_id: str) -> Latest:
    """Point LATEST at an earlier published run, after verifying its artifact; compare-and-swap
    against the LATEST read here, which may be malformed (rollback is how it is repaired).
    Raises ArtifactError (no such index, damaged) or PreconditionFailed."""
    _, generation = store.read_with_generation(latest_path(output))
    index_dir = RunLayout(output, run_id).index_dir
    if not is_gcs(output):
        check_no_links(output, os.path.relpath(index_dir, output).replace(os.sep, "/"))
    if not store.exists(join(index_dir, MANIFEST)):
        raise ArtifactError(f"run {run_id!r} has no published index under {output}")
    manifest_bytes, manifest = read_manifest(store, index_dir)
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    verify(store, index_dir, manifest_sha)
    latest = Latest.for_run(run_id, manifest_sha, manifest.format_version)
    swap_latest(store, output, latest, generation)
    return latest


def prune_runs(store: ObjectStore, output: str, keep: int, publishing: str) -> list[str]:
    """Delete finished runs beyond the `keep` most recent; returns the run ids deleted.

    Only finished runs (their summary.json exists) are pruned or counted: a run without one may
    still be working, or be waiting for a restart that resumes from its checkpoint. The publishing
    run counts as one of the `keep` (its summary follows its index), and neither it nor the run
    LATEST points at is ever deleted. Nothing is pruned when LATEST cannot be read."""
    directory = runs_dir(output)
    prefix = directory.rstrip("/") + "/"
    paths = set(store.list(directory))
    candidates = {p[len(prefix):].split("/", 1)[0] for p in paths if p.startswith(prefix)}
    finished = sorted(r for r in candidates if _is_run_id(r) and RunLayout(output, r).summary_path in paths)
    try:
        latest = read_latest(store, output)
    except ArtifactError:
        return []
    protect = {latest.run_id} if latest else set()
    doomed = runs_to_prune(finished, keep, publishing, protect)
    for run in doomed:
        store.delete_prefix(join(directory, run))
    return doomed


def runs_to_prune(finished: list[str], keep: int, publishing: str, protect: set[str]) -> list[str]:
    """Of the finished runs, those beyond the `keep` most recent by run id order, counting the
    publishing run among them; never the publishing run or a protected one."""
    kept = set(sorted(set(finished) | {publishing})[-keep:]) | protect | {publishing}
    return [run for run in sorted(finished) if run not in kept]


def _is_run_id(name: str) -> bool:
    try:
        check_run_id(name)
    except ValueError:
        return False
    return True
