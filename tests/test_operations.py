"""The operator's commands: `imgsim runs`, `imgsim rollback`, `imgsim verify`, on real artifacts."""
import json
import os

import pytest

from imgsim.cli import main
from imgsim.index import build as indexer
from imgsim.index.latest import read_latest
from imgsim.index.publish import runs_to_prune
from imgsim.storage import ObjectStore
from test_index import clustered, embeddings_table, finish_run, publish_table


def lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


@pytest.fixture
def output(tmp_path):
    """Two published runs (LATEST at the second), and one run interrupted before its summary."""
    out = str(tmp_path / "out")
    publish_table(embeddings_table(clustered(40, seed=1)), out, "20261101T030000Z")
    publish_table(embeddings_table(clustered(40, seed=2)), out, "20261102T030000Z")
    checkpoint = os.path.join(out, "runs", "20261103T030000Z", "checkpoint")
    os.makedirs(checkpoint)
    open(os.path.join(checkpoint, "part-1.parquet"), "wb").close()
    return out


def test_runs_lists_every_run_with_its_state(output, capsys):
    assert main(["runs", "--output", output, "--json"]) == 0
    runs = {r["run_id"]: r for r in lines(capsys)}
    assert list(runs) == ["20261101T030000Z", "20261102T030000Z", "20261103T030000Z"]
    assert runs["20261102T030000Z"]["latest"] and runs["20261102T030000Z"]["published"]
    assert not runs["20261101T030000Z"]["latest"] and runs["20261101T030000Z"]["published"]
    assert runs["20261103T030000Z"]["state"] == "unfinished" and runs["20261103T030000Z"]["checkpoint_files"] == 1
    assert not runs["20261103T030000Z"]["published"]
    assert main(["runs", "--output", output]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["RUN", "STATE", "PUBLISHED", "LATEST"]
    assert "*" in next(row for row in table if row.startswith("20261102T030000Z"))


def test_rollback_moves_latest_to_a_verified_earlier_run(output, capsys):
    assert main(["rollback", "--output", output, "--run-id", "20261101T030000Z"]) == 0
    assert lines(capsys)[0]["latest"] == "20261101T030000Z"
    latest = read_latest(ObjectStore(), output)
    assert latest.run_id == "20261101T030000Z" and latest.index == "runs/20261101T030000Z/index"
    from imgsim.index.consumer import ImageIndex

    assert ImageIndex.open(output, cache_dir=os.path.join(output, "..", "cache")).run_id == "20261101T030000Z"


def test_rollback_refuses_a_run_without_an_index_or_with_a_damaged_one(output, capsys):
    assert main(["rollback", "--output", output, "--run-id", "20261103T030000Z"]) == 2
    assert "has no published index" in capsys.readouterr().err
    ids = os.path.join(output, "runs", "20261101T030000Z", "index", "ids.parquet")
    with open(ids, "r+b") as f:
        f.seek(50)
        f.write(b"tampered")
    assert main(["rollback", "--output", output, "--run-id", "20261101T030000Z"]) == 2
    assert "does not match the manifest" in capsys.readouterr().err
    assert read_latest(ObjectStore(), output).run_id == "20261102T030000Z"  # untouched


def test_rollback_never_overwrites_a_latest_that_changed_meanwhile(output, monkeypatch, capsys):
    from imgsim.index import publish

    real_verify = publish.verify

    def verify_while_another_run_publishes(store, index_dir, manifest_sha256=None):
        manifest = real_verify(store, index_dir, manifest_sha256)
        monkeypatch.setattr(publish, "verify", real_verify)  # the other run publishes normally
        publish_table(embeddings_table(clustered(40, seed=3)), output, "20261104T030000Z")
        return manifest

    monkeypatch.setattr(publish, "verify", verify_while_another_run_publishes)
    assert main(["rollback", "--output", output, "--run-id", "20261101T030000Z"]) == 1
    assert "LATEST changed meanwhile" in capsys.readouterr().err
    assert read_latest(ObjectStore(), output).run_id == "20261104T030000Z"


def test_verify_checks_checksums_loading_and_self_query(output, capsys):
    assert main(["verify", "--index", output]) == 0
    report = lines(capsys)[0]
    assert report["verified"] and report["run_id"] == "20261102T030000Z" and report["count"] == 40
    neighbors = os.path.join(output, "runs", "20261102T030000Z", "index", "neighbors.parquet")
    with open(neighbors, "ab") as f:
        f.write(b"\0")
    assert main(["verify", "--index", output]) == 1
    assert "neighbors.parquet does not match the manifest" in capsys.readouterr().err
    assert main(["verify", "--index", output, "--run-id", "20261101T030000Z"]) == 0


def test_an_empty_output_root_has_no_runs(tmp_path, capsys):
    assert main(["runs", "--output", str(tmp_path)]) == 0
    assert "no runs under" in capsys.readouterr().out


def test_keep_runs_prunes_only_finished_runs_and_counts_only_them(tmp_path):
    """A run without its summary may still be working (or wait for a restart that resumes from its
    checkpoint): it is never pruned, and it does not take the place of a finished run."""
    out = str(tmp_path / "out")
    for run in ("20261101T030000Z", "20261102T030000Z"):
        publish_table(embeddings_table(clustered(30, seed=1)), out, run)
        finish_run(out, run)
    working = ("20261031T030000Z", "20261103T030000Z")  # restarted with an old --run-id; started later
    for run in working:
        checkpoint = os.path.join(out, "runs", run, "checkpoint")
        os.makedirs(checkpoint)
        with open(os.path.join(checkpoint, "part-1.parquet"), "wb") as f:
            f.write(b"rows")
    report = publish_table(embeddings_table(clustered(30, seed=2)), out, "20261104T030000Z",
                           indexer.IndexSettings(keep_runs=2))
    assert report["latest_updated"] and report["latest"].endswith("pruned runs 20261101T030000Z")
    assert sorted(os.listdir(os.path.join(out, "runs"))) == [
        "20261031T030000Z", "20261102T030000Z", "20261103T030000Z", "20261104T030000Z"]
    for run in working:
        assert os.path.getsize(os.path.join(out, "runs", run, "checkpoint", "part-1.parquet")) == 4


def test_which_runs_are_pruned():
    finished = ["a1", "a2", "a3", "a4"]
    assert runs_to_prune(finished, keep=2, publishing="a5", protect=set()) == ["a1", "a2", "a3"]
    assert runs_to_prune(finished, keep=2, publishing="a5", protect={"a1"}) == ["a2", "a3"]  # LATEST's run
    assert runs_to_prune(finished, keep=3, publishing="a0", protect=set()) == ["a1"]  # an old --run-id
    assert runs_to_prune(finished, keep=9, publishing="a5", protect=set()) == []
