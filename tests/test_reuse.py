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


def test_an_unchanged_catalogue_is_reused_without_bodies_or_inference(server, catalogue, notop_weights):
    out, manifest = catalogue["out"], catalogue["manifest"]
    first = run_fake("--input", manifest, *base_args(out, "r1", notop_weights))
    assert first["summary"]["counts"]["new"] == 6
    bodies = dict(server.bodies_sent)

    second = run_fake("--input", manifest, *base_args(out, "r2", notop_weights))
    counts = second["summary"]["counts"]
    assert (counts["reused"], counts["new"], counts["changed"], counts["deleted"]) == (6, 0, 0, 0)
    assert server.bodies_sent == bodies  # no image body was sent again: every answer was a 304
    assert sum(server.not_modified.values()) == 6
    assert second["metrics"].get("embedded", 0) == 0 and second["metrics"].get("reused_not_modified") == 6
    assert second["summary"]["reuse"]["sources"][0]["from"] == "run r1 (LATEST)"
    assert neighbors_of(out, "r2") == neighbors_of(out, "r1")
    # the thumbnails come along from r1's packs: same bytes, not a single body downloaded to make them
    assert thumbnails_of(out, "r2") == thumbnails_of(out, "r1") and len(thumbnails_of(out, "r1")) == 6
    assert by_id(second["embeddings"])["dog"]["embedding"] == by_id(first["embeddings"])["dog"]["embedding"]


def test_only_changed_added_and_moved_images_are_embedded_again(server, catalogue, photos, notop_weights, tmp_path):
    out, rows = catalogue["out"], catalogue["rows"]
    run_fake("--input", catalogue["manifest"], *base_args(out, "r1", notop_weights))

    flipped = jpeg(Image.open(io.BytesIO(photos["dog"])).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    server.file("/img/dog.jpg", flipped)  # same URL, new bytes
    rows = [r for r in rows if r["id"] != "scream"]  # removed from the collection
    rows.append({"id": "kite", "url": server.file("/img/kite.jpg", photos["kite"]), "title": "kite"})  # added
    moved = next(r for r in rows if r["id"] == "eagle")
    moved["url"] = server.file("/moved/eagle.jpg", photos["eagle"])  # a new URL is a new download
    next(r for r in rows if r["id"] == "person")["title"] = "a person, retitled"  # metadata only
    manifest = write_manifest(tmp_path / "m2.csv", rows)

    second = run_fake("--input", manifest, *base_args(out, "r2", notop_weights))
    counts = second["summary"]["counts"]
    assert (counts["new"], counts["changed"], counts["reused"], counts["deleted"]) == (1, 2, 3, 1)
    assert second["metrics"]["embedded"] == 3  # inference for dog, eagle and kite only
    embedded = by_id(second["embeddings"])
    assert set(embedded) == {"dog", "eagle", "giraffe", "horses", "person", "kite"}
    assert embedded["person"]["title"] == "a person, retitled"
    assert embedded["dog"]["sha256"] != by_id(read_run(str(out), "r1")["embeddings"])["dog"]["sha256"]
    thumbnails, before = thumbnails_of(out, "r2"), thumbnails_of(out, "r1")
    assert {i: t[0] for i, t in thumbnails.items()} == {i: r["sha256"] for i, r in embedded.items()}
    assert thumbnails["dog"] != before["dog"] and thumbnails["giraffe"] == before["giraffe"]  # made again / kept


def test_servers_without_validators_are_compared_by_sha256(server, photos, notop_weights, tmp_path):
    rows = [{"id": n, "url": server.file(f"/plain/{n}.jpg", photos[n], validators=False)} for n in ("dog", "eagle")]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    run_fake("--input", manifest, *base_args(tmp_path / "out", "r1", notop_weights))
    second = run_fake("--input", manifest, *base_args(tmp_path / "out", "r2", notop_weights))
    assert second["summary"]["counts"]["reused"] == 2
    assert second["metrics"]["reused_same_bytes"] == 2 and second["metrics"].get("embedded", 0) == 0


def test_full_and_a_model_change_embed_everything_again(catalogue, notop_weights):
    out, manifest = catalogue["out"], catalogue["manifest"]
    run_fake("--input", manifest, *base_args(out, "r1", notop_weights))
    full = run_fake("--input", manifest, *base_args(out, "r2", notop_weights), "--full")
    assert full["summary"]["counts"]["new"] == 6 and full["summary"]["counts"]["reused"] == 0
    cropped = run_fake("--input", manifest, *base_args(out, "r3", notop_weights), "--resize", "crop")
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
