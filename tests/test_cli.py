"""The `imgsim` command as a user runs it: a real subprocess over a real HTTP catalogue."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from imgsim.cli import main
from imgsim.runs.outputs import vectors
from pipeline_helpers import read_run, write_manifest


def imgsim(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "imgsim", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


@pytest.mark.model
def test_run_embeds_the_clip_art_benchmark_with_every_row_accounted(server, shared, notop_weights, tmp_path):
    """The README's main command over ~290 real images served by HTTP; neighbours share labels."""
    clipart = shared / "data" / "openclipart"
    labels = {r["file"]: r["label"] for r in csv.DictReader(open(clipart / "labels.csv"))}
    rows = [{"id": name, "url": server.file(f"/clipart/{name}", (clipart / name).read_bytes(), "image/png"),
             "label": label} for name, label in labels.items()]
    rows += [{"id": p.name, "url": server.file(f"/photos/{p.name}", p.read_bytes()), "label": "photo"}
             for p in sorted((shared / "data" / "photos").glob("*.jpg"))]
    rows.append({"id": "missing", "url": server.url("/clipart/missing.png"), "label": "none"})
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    proc = imgsim("run", "--input", manifest, "--output", str(tmp_path / "out"), "--weights", notop_weights,
                  "--layer", "pool", "--run-id", "bench", "--allow-private-addresses", "--progress-interval", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["accounted"] and report["counts"] == {"input_rows": len(rows), "embedded": len(rows) - 1,
                                                          "failed": 1, "new": len(rows) - 1, "changed": 0,
                                                          "reused": 0, "resumed": 0, "deleted": 0}
    assert report["index"]["published"] and report["index"]["latest_updated"]
    assert "progress:" in proc.stderr and "img/s" in proc.stderr

    result = read_run(str(tmp_path / "out"), "bench")
    table = result["embeddings"]
    got = {r["id"]: r["label"] for r in table.select(["id", "label"]).to_pylist()}
    clip = [i for i, name in enumerate(table.column("id").to_pylist()) if name in labels]
    v = vectors(table)[clip]
    names = [table.column("id")[i].as_py() for i in clip]
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    top5 = np.argsort(-sims, axis=1)[:, :5]
    precision_at_5 = np.mean([[got[names[j]] == got[names[i]] for j in row] for i, row in enumerate(top5)])
    assert precision_at_5 >= 0.5, precision_at_5  # reference ≈0.55; random weights ≈0.36

    # imgsim evaluate on the same run: the same precision@5 (the photos carry label "photo" too, so
    # they are left out of the labels file), and the near-duplicate benchmark on the shared photos
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("id,label\n" + "".join(f"{name},{label}\n" for name, label in labels.items()))
    proc = imgsim("evaluate", "--index", str(tmp_path / "out"), "--labels", str(labels_csv), "--near-duplicates",
                  str(shared / "data" / "photos" / "*.jpg"), "--report", str(tmp_path / "report.html"),
                  "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluation = json.loads(proc.stdout)
    assert abs(evaluation["precision_at_5"] - precision_at_5) < 0.005, (evaluation["precision_at_5"], precision_at_5)
    assert evaluation["labelled"] == len(labels)
    assert evaluation["near_duplicate_recall_at_1"] >= 0.95
    assert 0.5 <= evaluation["recommended_threshold"] < 1.0
    assert (tmp_path / "report.html").read_text().count("<svg") >= 3


@pytest.mark.parametrize("args, message", [
    (["--input", "nowhere.csv", "--output", "o"], "cannot open the manifest"),
    (["--input", "cma", "--output", "o", "--layer", "fc9"], "unknown layer"),
    (["--input", "cma", "--output", "o", "--precision", "fp8"], "unknown precision"),
    (["--input", "cma"], "--output is required"),
    (["--input", "cma", "--output", "o", "--weights", "missing.weights.h5"], "no such file"),
    (["--input", "cma", "--output", "o", "--max-batch-size", "0"], "--max-batch-size"),
    (["--input", "cma", "--output", "o", "--run-id", "../escape"], "--run-id"),
    (["--input", "cma", "--output", "o", "--bogus-flag"], "unknown option"),
    (["--input", "cma", "--output", "o", "--site-output", "gs://b/site"], "describe the explorer site: add --site"),
    (["--input", "cma", "--output", "o", "--title", "T"], "describe the explorer site: add --site"),
])
def test_bad_configuration_fails_fast_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("imgsim run: error:")


def test_unusable_inputs_and_outputs_fail_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "no_columns.csv").write_text("name,link\na,http://x/a.jpg\n")
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "LATEST").write_text("{half a pointer")
    cases = [(["--input", "no_columns.csv", "--output", "o"], "needs columns 'id' and 'url'"),
             (["--input", "cma", "--output", "a_file/out"], "is not writable"),
             (["--input", "cma", "--output", "out"], "LATEST is malformed")]
    for args, message in cases:
        assert main(["run", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)


@pytest.mark.model
def test_a_notop_file_with_an_fc_layer_fails_fast(tmp_path, capsys, notop_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--input", "cma", "--output", "o", "--weights", notop_weights, "--layer", "fc2"]) == 2
    assert "no fc1/fc2 weights" in capsys.readouterr().err


def test_help_lists_imgsim_and_beam_options(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--input" in out and "--allow-private-addresses" in out and "--runner DataflowRunner" in out


def test_imagenet_weights_that_cannot_be_downloaded_fail_fast_in_one_line(tmp_path, capsys, monkeypatch):
    """A local run resolves --weights imagenet before any work: no worker traceback on a machine offline."""
    from conftest import free_port
    from imgsim.embed import weights

    monkeypatch.setenv("IMGSIM_CACHE_DIR", str(tmp_path / "cache"))
    dead = f"http://127.0.0.1:{free_port()}/vgg16_notop.h5"
    monkeypatch.setattr(weights, "IMAGENET_NO_TOP", weights.RemoteWeights("vgg16_notop.h5", dead, "0" * 32))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--input", "cma", "--output", "o", "--layer", "pool"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download the ImageNet weights" in err[0] and dead in err[0], err


def test_manifest_columns_can_be_named_otherwise(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("accession,image,title\n1915.534,http://x/a.jpg,A\n")
    assert main(["run", "--input", "m.csv", "--output", "o", "--weights", "missing.weights.h5"]) == 2
    err = capsys.readouterr().err
    assert "needs columns 'id' and 'url'" in err and "--id-column" in err
    assert main(["run", "--input", "m.csv", "--output", "o", "--id-column", "accession", "--url-column", "image",
                 "--weights", "missing.weights.h5"]) == 2
    assert "missing.weights.h5': no such file" in capsys.readouterr().err  # the manifest passed


@pytest.mark.parametrize("argv, message", [
    (["query", "--index", "out"], "give exactly one of --id, --image and --outliers"),
    (["query", "--index", "out", "--id", "a", "--bogus"], "unknown option(s): --bogus"),
    (["rollback", "--output", "out"], "--run-id is required"),
    (["runs"], "--output is required"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_every_command_reports_bad_flags_in_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_log_level_and_quiet_are_accepted_by_every_command(tmp_path, capsys):
    assert main(["runs", "--output", str(tmp_path), "-q"]) == 0
    assert main(["runs", "--output", str(tmp_path), "--log-level", "DEBUG"]) == 0
