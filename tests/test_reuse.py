"""Incremental runs and restarts: earlier embeddings stand in for downloads and inference."""
import io
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import jpeg
from fakes import FakeModelHandler
from pipeline_helpers import by_id, read_run, run_pipeline, write_manifest


def run_fake(*args):
    """Reuse decides per item, whatever the model: these runs use the fake one."""
    return run_pipeline(*args, handler=FakeModelHandler())


def base_args(out, run_id, weights):
    return ["--output", str(out), "--run-id", run_id, "--weights", weights, "--layer", "pool"]


def thumbnails_of(out, run_id):
    """{id: (sha256, thumbnail bytes)} from a run's thumbnail packs."""
    packs = (out / "runs" / run_id / "thumbnails").glob("*.parquet")
    return {r["id"]: (r["sha256"], r["thumbnail"]) for f in packs for r in pq.read_table(f).to_pylist()}


def neighbors_of(out, run_id):
    table = pq.read_table(os.path.join(out, "runs", run_id, "index", "neighbors.parquet"))
    return {r["id"]: r["neighbor_ids"] for r in table.to_pylist()}


@pytest.fixture
def catalogue(server, photos, tmp_path):
    names = ["dog", "eagle", "giraffe", "horses", "person", "scream"]
    rows = [{"id": n, "url": server.file(f"/img/{n}.jpg", photos[n]), "title": n} for n in names]
    return {"rows": rows, "manifest": write_manifest(tmp_path / "m.csv", rows), "out": tmp_path / "out"}


def image_bodies(server) -> dict:
    return {path: n for path, n in server.bodies_sent.items() if path.startswith("/img/")}


@pytest.mark.model  # the slow tier
def test_incremental_runs_redo_only_what_changed(server, catalogue, photos, notop_weights, tmp_path):
    """One catalogue's history over five runs (one history, to pay for five pipeline runs, not nine):
    unchanged, then changed, added, moved, retitled and removed items, then --full, then another model.
    Six items are served with validators (ETag, Last-Modified), two without (compared by sha256)."""
    out = catalogue["out"]
    rows = catalogue["rows"] + [{"id": f"plain-{n}", "url": server.file(f"/plain/{n}.jpg", photos[n], validators=False),
                                 "title": n} for n in ("dog", "eagle")]
    manifest = write_manifest(tmp_path / "m1.csv", rows)

    # r1: everything is new
    first = run_fake("--input", manifest, *base_args(out, "r1", notop_weights))
    assert first["summary"]["counts"]["new"] == 8
    bodies = image_bodies(server)

    # r2, nothing changed: reused without image bodies (304) or compared by sha256, no inference
    second = run_fake("--input", manifest, *base_args(out, "r2", notop_weights))
    counts = second["summary"]["counts"]
    assert (counts["reused"], counts["new"], counts["changed"], counts["deleted"]) == (8, 0, 0, 0)
    assert image_bodies(server) == bodies  # no image body was sent again: every answer was a 304
    assert sum(server.not_modified.values()) == 6
    assert second["metrics"].get("embedded", 0) == 0 and second["metrics"].get("reused_not_modified") == 6
    assert second["metrics"]["reused_same_bytes"] == 2  # the servers without validators
    assert second["summary"]["reuse"]["sources"][0]["from"] == "run r1 (LATEST)"
    assert neighbors_of(out, "r2") == neighbors_of(out, "r1")
    # the thumbnails come along from r1's packs: same bytes, not a single body downloaded to make them
    assert thumbnails_of(out, "r2") == thumbnails_of(out, "r1") and len(thumbnails_of(out, "r1")) == 8
    assert by_id(second["embeddings"])["dog"]["embedding"] == by_id(first["embeddings"])["dog"]["embedding"]

    # r3: only changed, added and moved images are embedded again
    flipped = jpeg(Image.open(io.BytesIO(photos["dog"])).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    server.file("/img/dog.jpg", flipped)  # same URL, new bytes
    rows = [r for r in rows if r["id"] != "scream"]  # removed from the collection
    rows.append({"id": "kite", "url": server.file("/img/kite.jpg", photos["kite"]), "title": "kite"})  # added
    moved = next(r for r in rows if r["id"] == "eagle")
    moved["url"] = server.file("/moved/eagle.jpg", photos["eagle"])  # a new URL is a new download
    next(r for r in rows if r["id"] == "person")["title"] = "a person, retitled"  # metadata only
    manifest = write_manifest(tmp_path / "m2.csv", rows)
    third = run_fake("--input", manifest, *base_args(out, "r3", notop_weights))
    counts = third["summary"]["counts"]
    assert (counts["new"], counts["changed"], counts["reused"], counts["deleted"]) == (1, 2, 5, 1)
    assert third["metrics"]["embedded"] == 3  # inference for dog, eagle and kite only
    embedded = by_id(third["embeddings"])
    assert set(embedded) == {"dog", "eagle", "giraffe", "horses", "person", "kite", "plain-dog", "plain-eagle"}
    assert embedded["person"]["title"] == "a person, retitled"
    assert embedded["dog"]["sha256"] != by_id(read_run(str(out), "r2")["embeddings"])["dog"]["sha256"]
    thumbnails, before = thumbnails_of(out, "r3"), thumbnails_of(out, "r2")
    assert {i: t[0] for i, t in thumbnails.items()} == {i: r["sha256"] for i, r in embedded.items()}
    assert thumbnails["dog"] != before["dog"] and thumbnails["giraffe"] == before["giraffe"]  # made again / kept

    # r4 --full and r5 with another model (crop instead of pad): everything is embedded again
    full = run_fake("--input", manifest, *base_args(out, "r4", notop_weights), "--full")
    assert full["summary"]["counts"]["new"] == 8 and full["summary"]["counts"]["reused"] == 0
    cropped = run_fake("--input", manifest, *base_args(out, "r5", notop_weights), "--resize", "crop")
    assert cropped["summary"]["counts"]["reused"] == 0
    assert "used another model" in cropped["summary"]["reuse"]["notes"][0]


@pytest.mark.model
def test_an_interrupted_run_resumes_without_redoing_finished_work(server, photos, notop_weights, tmp_path):
    """Kill a real `imgsim run` mid-way; the restart with the same --run-id fetches only what is missing."""
    release = threading.Event()

    def blocked(data):
        def respond(h):
            release.wait(120)
            h.send(200, data, "image/jpeg")
        return respond

    fast = ["dog", "eagle", "giraffe", "horses", "person", "scream"]
    rows = [{"id": n, "url": server.file(f"/fast/{n}.jpg", photos[n])} for n in fast]
    flipped = jpeg(Image.open(io.BytesIO(photos["dog"])).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    rows += [{"id": n, "url": server.route(f"/slow/{n}.jpg", blocked(data))}
             for n, data in (("kite", photos["kite"]), ("dog-flipped", flipped))]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "imgsim", "run", "--input", manifest, *base_args(out, "big", notop_weights),
            "--allow-private-addresses", "--checkpoint-rows", "2", "--max-batch-size", "2", "--min-batch-size", "2",
            "--progress-interval", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    checkpoint = out / "runs" / "big" / "checkpoint"
    deadline = time.time() + 240
    try:
        # Beam's BatchElements holds a full batch until the next element arrives, so with the
        # last two downloads blocked, four of the six fast images reach the checkpoint.
        while time.time() < deadline:
            files = list(checkpoint.glob("*.parquet")) if checkpoint.exists() else []
            if sum(pq.read_metadata(f).num_rows for f in files) >= 4:
                break
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.5)
        else:
            pytest.fail("the first attempt never checkpointed four images")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "runs" / "big" / "summary.json").exists()
    saved = {i for f in checkpoint.glob("*.parquet") for i in pq.read_table(f).column("id").to_pylist()}
    fetched_before = {n: server.hits(f"/fast/{n}.jpg") for n in saved}

    release.set()
    second = run_pipeline("--input", manifest, *base_args(out, "big", notop_weights))
    counts = second["summary"]["counts"]
    assert counts["resumed"] == len(saved) >= 4 and counts["new"] == 8 - len(saved) and counts["embedded"] == 8
    assert {n: server.hits(f"/fast/{n}.jpg") for n in saved} == fetched_before  # not a single request
    assert second["metrics"]["embedded"] == 8 - len(saved)
    assert second["summary"]["accounted"] and second["summary"]["index"]["published"]
    assert not (out / "runs" / "big" / "checkpoint").exists()  # cleared once the run completed
    thumbnails = thumbnails_of(out, "big")  # resumed rows keep the thumbnails the first attempt checkpointed
    assert {i: t[0] for i, t in thumbnails.items()} == {r["id"]: r["sha256"] for r in second["embeddings"].to_pylist()}


@pytest.mark.model
def test_a_restart_with_another_model_is_refused(catalogue, notop_weights, tmp_path):
    from imgsim.cli import main

    out = catalogue["out"]
    first = run_fake("--input", catalogue["manifest"], *base_args(out, "r1", notop_weights),
                         "--checkpoint-rows", "1")
    # make r1 look interrupted: a checkpoint but no summary
    run_dir = out / "runs" / "r1"
    os.makedirs(run_dir / "checkpoint")
    pq.write_table(first["embeddings"], run_dir / "checkpoint" / "part-x.parquet")
    os.remove(run_dir / "summary.json")
    code = main(["run", "--input", catalogue["manifest"], *base_args(out, "r1", notop_weights), "--resize", "crop",
                 "--allow-private-addresses"])
    assert code == 2
