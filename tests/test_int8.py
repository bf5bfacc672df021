"""int8 through OpenVINO: one calibration per run, named in the signature, gated on agreement with fp32.

Real runs over real clip art served on 127.0.0.1, with the real weights, OpenVINO and NNCF; small
calibration samples keep them to tens of seconds.
"""
import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgsim.cli import main
from imgsim.embed.reproduce import ModelMismatch
from imgsim.index.consumer import ImageIndex
from imgsim.storage import sha256_file
from pipeline_helpers import read_run, write_manifest

pytestmark = pytest.mark.model

INT8 = ["--backend", "openvino", "--precision", "int8", "--calibration-size", "16"]


def clip_art_rows(server, paths) -> list[dict]:
    return [{"id": p.name, "url": server.file(f"/clip/{p.name}", p.read_bytes(), "image/png")} for p in paths]


@pytest.fixture
def catalogue(server, shared, tmp_path):
    every = sorted((shared / "data" / "openclipart").glob("*.png"))
    paths = every[::7][:40]
    rows = clip_art_rows(server, paths)
    more = clip_art_rows(server, [p for p in every if p not in paths][::3][:60])
    return {"manifest": write_manifest(tmp_path / "m.csv", rows), "out": str(tmp_path / "out"), "paths": paths,
            "grown": write_manifest(tmp_path / "grown.csv", rows + more), "more": more}


def run(catalogue, notop_weights, run_id, *extra, manifest=None):
    return main(["run", "--input", manifest or catalogue["manifest"], "--output", catalogue["out"], "--run-id", run_id,
                 "--weights", notop_weights, "--layer", "pool", "--allow-private-addresses",
                 "--progress-interval", "0", "-q", *extra])


def ir_sha256(directory) -> str:
    digest = hashlib.sha256()
    for name in ("model.xml", "model.bin"):
        digest.update(open(os.path.join(directory, name), "rb").read())
    return "sha256:" + digest.hexdigest()


def test_an_int8_run_names_its_calibration_and_its_index_embeds_queries_with_it(catalogue, notop_weights, tmp_path):
    assert run(catalogue, notop_weights, "fp32") == 0
    assert run(catalogue, notop_weights, "int8", *INT8) == 0
    result = read_run(catalogue["out"], "int8")
    model_dir = os.path.join(catalogue["out"], "runs", "int8", "model")
    signature = result["signature"]
    assert (signature.precision, signature.backend) == ("int8", "openvino")
    assert signature.quantization == ir_sha256(model_dir)
    summary = result["summary"]
    agreement = summary["model"]["int8_agreement"]
    assert agreement["images"] == 16 and agreement["top10_overlap"] >= 0.9 and agreement["mean_cosine"] > 0.99
    # an fp32 run's vectors were not reused: another precision, backend and calibration
    assert summary["counts"]["new"] + summary["counts"]["changed"] == 40 and summary["counts"]["reused"] == 0
    assert "used another model" in summary["reuse"]["notes"][0] and "quantization" in summary["reuse"]["notes"][0]

    manifest = json.load(open(os.path.join(catalogue["out"], "runs", "int8", "index", "manifest.json")))
    assert {"model/model.xml", "model/model.bin"} <= set(manifest["files"])
    assert manifest["model"]["int8_agreement"] == agreement
    index = ImageIndex.open(catalogue["out"], cache_dir=str(tmp_path / "cache"))
    query = catalogue["paths"][3]
    best = index.search_image(str(query), k=3)[0]
    assert best.id == query.name and best.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ModelMismatch, match="use backend 'openvino'"):
        index.search_image(str(query), k=3, backend="keras")

    # a fresh output on the same collection takes the calibration from imgsim's cache
    other = {**catalogue, "out": str(tmp_path / "other-out")}
    assert run(other, notop_weights, "int8", *INT8) == 0
    again = read_run(other["out"], "int8")
    assert again["signature"].quantization == signature.quantization
    assert "(calibrated before: " in again["summary"]["model"]["calibration"]


def test_an_incremental_int8_run_keeps_the_calibration_and_reuses_unchanged_images(catalogue, notop_weights,
                                                                                    shared, tmp_path):
    assert run(catalogue, notop_weights, "r1", *INT8) == 0
    # r2: the same 40 images and 60 more (embedded with r1's calibration), in a sharded index
    assert run(catalogue, notop_weights, "r2", *INT8, "--index-shards", "2", manifest=catalogue["grown"]) == 0
    first, second = read_run(catalogue["out"], "r1"), read_run(catalogue["out"], "r2")
    assert second["signature"].quantization == first["signature"].quantization
    assert second["summary"]["counts"]["reused"] == 40 and second["summary"]["counts"]["new"] == 60
    assert second["summary"]["model"]["calibration"] == "reused from run r1"
    # the sharded artifact carries the quantised model too, fetched when a query first needs it
    manifest = json.load(open(os.path.join(catalogue["out"], "runs", "r2", "index", "manifest.json")))
    assert manifest["format_version"] == 2 and len(manifest["shards"]) == 2
    assert manifest["files"]["model/model.bin"]["sha256"] == sha256_file(
        os.path.join(catalogue["out"], "runs", "r1", "model", "model.bin"))
    index = ImageIndex.open(catalogue["out"], cache_dir=str(tmp_path / "cache"))
    for query in (catalogue["paths"][5], shared / "data" / "openclipart" / catalogue["more"][7]["id"]):
        best = index.search_image(str(query), k=3)[0]  # reused by r2, and embedded by it
        assert best.id == query.name and best.score == pytest.approx(1.0, abs=1e-4)
    # --full calibrates again: a new quantised model, so everything is embedded again
    assert run(catalogue, notop_weights, "r3", *INT8, "--full") == 0
    third = read_run(catalogue["out"], "r3")
    assert third["summary"]["counts"]["reused"] == 0 and third["summary"]["model"]["calibration"].startswith("the first")


def test_a_calibration_that_does_not_represent_the_collection_is_refused(catalogue, notop_weights, tmp_path, capsys):
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(16):
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 64, 3), 120 + i, np.uint8)).save(buf, "PNG")
        (blank / f"{i}.png").write_bytes(buf.getvalue())
    capsys.readouterr()
    assert run(catalogue, notop_weights, "bad", *INT8, "--calibration", str(blank / "*.png")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "below --min-int8-agreement 0.9" in err[0] and "--calibration" in err[0], err
    assert not os.path.exists(os.path.join(catalogue["out"], "runs", "bad", "summary.json"))


def test_the_openvino_backend_without_its_extra_is_a_one_line_error(tmp_path):
    code = """
import sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openvino", "nncf"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Missing())
from imgsim.cli import main
sys.exit(main(["run", "--input", "cma", "--output", "o", "--backend", "openvino"]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "pip install 'imgsim[openvino]'" in err[0], proc.stderr
