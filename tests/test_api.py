"""The Python API (`imgsim.run`, `imgsim.build_index`) and the package's front door."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import imgsim
from imgsim.config.flags import ConfigError
from imgsim.index.build import IndexInputError
from pipeline_helpers import write_manifest
from test_index import clustered


def test_importing_imgsim_loads_neither_beam_nor_tensorflow():
    code = ("import sys, imgsim; imgsim.__version__; "
            "print(sorted(m for m in ('apache_beam', 'tensorflow', 'keras', 'scann') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_version_and_module_entry_point():
    version = subprocess.run([sys.executable, "-m", "imgsim", "--version"], capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"imgsim {imgsim.__version__}"
    helped = subprocess.run([sys.executable, "-m", "imgsim", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0
    for command in ("run", "index", "query", "runs", "rollback", "verify"):
        assert f"    {command} " in helped.stdout, command


def test_build_index_from_vectors_in_memory(tmp_path):
    vectors = clustered(300, dim=24) * 3.0  # not unit length: normalised by build_index
    ids = [f"obj-{i}" for i in range(300)]
    titles = [f"Object {i}" for i in range(300)]
    report = imgsim.build_index(str(tmp_path / "out"), ids=ids, vectors=vectors, metadata={"title": titles},
                                run_id="mem", neighbors_k=5)
    assert report["published"] and report["latest_updated"] and report["count"] == 300
    index = imgsim.ImageIndex.open(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    best = index.similar("obj-7", k=3, include_self=True)
    assert best[0].id == "obj-7" and best[0].metadata["title"] == "Object 7" and best[0].rank == 0
    assert len(index.neighbors("obj-7")) == 5
    assert index.signature.model == "custom"
    with pytest.raises(Exception, match="cannot embed images comparably"):  # no VGG16 behind these vectors
        index.search_image(b"\xff\xd8", k=1)


def test_the_api_names_stay_functions_after_their_modules_load(tmp_path):
    """imgsim.explore and imgsim.serve were replaced by the subpackages of the same name once those
    were imported: a second imgsim.explore() raised "'module' object is not callable"."""
    imgsim.build_index(str(tmp_path / "out"), ids=[f"v{i}" for i in range(60)], vectors=clustered(60, dim=8),
                       run_id="api", neighbors_k=3)
    for attempt in ("first", "second"):
        report = imgsim.explore(str(tmp_path / "out"), str(tmp_path / f"site-{attempt}"))
        assert report["count"] == 60
    importlib.import_module("imgsim.service.server")  # the service's modules, loaded
    for name in imgsim.__all__:
        if name != "__version__":
            assert callable(getattr(imgsim, name)), name


@pytest.mark.parametrize("kwargs, message", [
    ({"ids": ["a", "b"], "vectors": np.zeros((2, 4))}, "finite and non-zero"),
    ({"ids": ["a"], "vectors": np.ones((2, 4))}, "1 ids for 2 vectors"),
    ({"ids": ["a", "b"], "vectors": np.ones((2, 4)), "metadata": {"url": ["x", "y"]}}, "rename the metadata"),
    ({}, "either embeddings"),
    ({"ids": ["a", "b"], "vectors": np.ones((2, 4)), "neighbors_k": 0}, "--neighbors-k must be at least 1"),
])
def test_build_index_refuses_bad_input_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        imgsim.build_index(str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_build_index_from_embeddings_files(tmp_path):
    from imgsim.api import vectors_table

    (tmp_path / "emb").mkdir()
    for part in range(2):
        pq.write_table(vectors_table([f"p{part}-{n}" for n in range(30)], clustered(30, seed=part)),
                       tmp_path / "emb" / f"part-{part}.parquet")
    report = imgsim.build_index(str(tmp_path / "out"), embeddings=str(tmp_path / "emb" / "*.parquet"), run_id="r1")
    assert report["count"] == 60 and report["latest_updated"]
    pq.write_table(pa.table({"id": ["x"]}), tmp_path / "emb" / "stray.parquet")
    with pytest.raises(IndexInputError, match="not an imgsim embeddings file"):
        imgsim.build_index(str(tmp_path / "out"), embeddings=str(tmp_path / "emb" / "*.parquet"))


def test_run_refuses_bad_options_with_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown layer 'fc9'"):
        imgsim.run(input="cma", output=str(tmp_path), layer="fc9")
    with pytest.raises(ConfigError, match="--download-threads takes a int"):
        imgsim.run(input="cma", output=str(tmp_path), download_threads="many")
    with pytest.raises(TypeError, match="no_such_option"):
        imgsim.run(input="cma", output=str(tmp_path), no_such_option=1)
    assert not os.listdir(tmp_path)


@pytest.mark.model
def test_run_returns_a_typed_summary(server, photos, notop_weights, tmp_path):
    rows = [{"id": n, "url": server.file(f"/{n}.jpg", photos[n]), "title": n} for n in ("dog", "kite", "eagle")]
    rows.append({"id": "gone", "url": server.status("/gone.jpg", 404), "title": "gone"})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    summary = imgsim.run(input=manifest, output=str(tmp_path / "out"), run_id="api", weights=notop_weights,
                         layer="pool", allow_private_addresses=True, progress_interval=0,
                         beam_options={"runner": "DirectRunner"})
    assert isinstance(summary, imgsim.RunSummary)
    assert summary.run_id == "api" and summary.accounted and summary.published and summary.problems() == []
    assert summary.counts["embedded"] == 3 and summary.failures_by_reason == {"http_not_found": 1}
    assert json.loads(open(summary.path).read())["run_id"] == "api"
    index = imgsim.ImageIndex.open(str(tmp_path / "out"), cache_dir=str(tmp_path / "c"))
    assert index.similar("kite", include_self=True)[0].id == "kite"
