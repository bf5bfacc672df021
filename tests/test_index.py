"""The index artifact without Beam: ScaNN configuration, recall, tables, publishing, consuming."""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgsim.embed.signature import ModelSignature
from imgsim.index import artifact
from imgsim.index import build as indexer
from imgsim.index.artifact import ArtifactError
from imgsim.index.build import build_and_publish
from imgsim.embed.reproduce import ModelMismatch
from imgsim.index.consumer import ImageIndex
from imgsim.index.latest import read_latest
from imgsim.index.exact import connected_groups, exact_neighbors_and_pairs, recall_at_k, top_k
from imgsim.index.searcher import IndexOptions
from imgsim.runs.layout import RunLayout
from imgsim.runs.outputs import embeddings_schema
from imgsim.storage import ObjectStore, sha256_file

SIGNATURE = ModelSignature("vgg16", "pool", 16, "test", "sha256:" + "0" * 64, "vgg16-caffe/pad/224/v1", "fp32")


def clustered(n, dim=16, clusters=20, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    v = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def embeddings_table(vectors, ids=None, signature=SIGNATURE):
    signature = ModelSignature(**{**signature.to_dict(), "dim": vectors.shape[1]})
    n = len(vectors)
    ids = ids or [f"item-{i}" for i in range(n)]
    schema = embeddings_schema(signature, pa.schema([("title", pa.string())]))
    return pa.table({"id": ids, "url": [f"http://x/{i}.jpg" for i in ids], "sha256": ["0" * 64] * n,
                     "width": pa.array([100] * n, pa.int32()), "height": pa.array([80] * n, pa.int32()),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
                     "etag": [None] * n, "last_modified": [None] * n,
                     "title": [f"title {i}" for i in ids]}, schema=schema)


def publish_table(table, output, run_id, settings=indexer.IndexSettings(), generation=None, store=None):
    store = store or ObjectStore()
    if generation is None:
        latest = read_latest(store, output)
        generation = latest.generation if latest else 0
    return build_and_publish(store, [table], settings, RunLayout(output, run_id), generation, {"kind": "test"}, {})


@pytest.mark.parametrize("n, mode", [(1_000, "brute_force"), (50_000, "ah"), (400_000, "tree_ah")])
def test_configuration_follows_collection_size(n, mode):
    config = IndexOptions().resolve(n, k=10)
    assert config.mode == mode
    if mode == "tree_ah":
        assert config.num_leaves == round(np.sqrt(n)) and 1 <= config.leaves_to_search < config.num_leaves
    if mode != "brute_force":
        assert config.reorder >= 100
    assert IndexOptions(mode="brute_force").resolve(n, 10).mode == "brute_force"  # overridable


def test_exact_neighbors_and_pairs_match_a_naive_computation():
    v = clustered(300)
    v[5] = v[7]  # an exact duplicate pair
    neighbors, pairs = exact_neighbors_and_pairs(v, k=5, pair_threshold=0.999)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(neighbors.scores, -np.sort(-sims, axis=1)[:, :5], atol=1e-6)
    assert neighbors.rows[5, 0] == 7 and neighbors.rows[7, 0] == 5
    assert (5, 7) in {(int(a), int(b)) for a, b, _ in pairs}
    assert all(a < b for a, b, _ in pairs)


@pytest.mark.parametrize("m, n, k", [(30, 12, 3), (40, 3000, 20), (60, 40000, 10)])
def test_top_k_equals_a_full_sort_ties_to_the_lower_index(m, n, k):
    """Wide rows take the candidate cut (chunk maxima); narrow ones argpartition: both exact."""
    rng = np.random.default_rng(m)
    sims = rng.standard_normal((m, n)).astype(np.float32)
    sims[:, :n // 3] = np.round(sims[:, :n // 3], 1)  # many ties
    sims[0] = 0.5  # a row of one value
    sims[1, ::2] = -np.inf  # an item is not its own neighbour: excluded entries
    rows, values = top_k(sims, k)
    expected = np.lexsort((np.broadcast_to(np.arange(n), sims.shape), -sims), axis=1)[:, :k]
    assert np.array_equal(rows, expected) and np.array_equal(values, np.take_along_axis(sims, expected, 1))


def test_groups_join_pairs_transitively():
    pairs = np.array([[0, 1, 0.99], [1, 4, 0.98], [6, 7, 0.97]])
    assert connected_groups(pairs) == [[0, 1, 4], [6, 7]]


def test_recall_counts_ties_within_tolerance():
    v = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]  # rows 0 and 1 are identical
    q = v[[2]]
    # exact top-1 of q is row 2; answering row 2 is right, answering 0 is wrong
    assert recall_at_k(v, q, np.array([[2]]), k=1) == 1.0
    assert recall_at_k(v, q, np.array([[0]]), k=1) == 0.0
    # for query row 0 (self excluded) rows 1 is the exact answer; nothing else ties
    assert recall_at_k(v, v[[0]], np.array([[1]]), k=1, exclude_self=np.array([0])) == 1.0


def test_ah_index_meets_the_recall_floor_and_a_crippled_tree_is_refused(tmp_path):
    v = clustered(5_000, dim=32, clusters=200, spread=0.5)
    table = embeddings_table(v)
    # the configuration auto chooses from 20,000 items (test_configuration_follows_collection_size)
    report = publish_table(table, str(tmp_path / "out"), "ah", indexer.IndexSettings(options=IndexOptions(mode="ah")))
    assert report["scann"]["mode"] == "ah" and report["recall"]["value"] >= 0.95

    crippled = indexer.IndexSettings(options=IndexOptions(mode="tree_ah", num_leaves=100, leaves_to_search=1,
                                                          reorder=10))
    before = open(tmp_path / "out" / "LATEST", "rb").read()
    with pytest.raises(indexer.RecallTooLow, match="at best .*the configured parameters.* below --min-recall 0.95"):
        publish_table(table, str(tmp_path / "out"), "bad", crippled)
    assert open(tmp_path / "out" / "LATEST", "rb").read() == before
    assert not (tmp_path / "out" / "runs" / "bad").exists()


@pytest.fixture
def published(tmp_path):
    v = clustered(500)
    v[10] = v[11]
    out = str(tmp_path / "out")
    report = publish_table(embeddings_table(v), out, "r1", indexer.IndexSettings(duplicate_threshold=0.999))
    return {"out": out, "vectors": v, "report": report}


def test_artifact_layout_and_manifest(published):
    index_dir = os.path.join(published["out"], "runs", "r1", "index")
    manifest = json.load(open(os.path.join(index_dir, "manifest.json")))
    assert manifest["format_version"] == 1 and manifest["run_id"] == "r1" and manifest["count"] == 500
    assert manifest["model_signature"]["dim"] == 16 and manifest["dimension"] == 16
    assert manifest["scann"]["version"] == "1.4.2" and manifest["recall"]["value"] == 1.0
    for name in ("ids.parquet", "neighbors.parquet", "groups.parquet", "scann/scann_config.pb"):
        assert manifest["files"][name]["sha256"] == sha256_file(os.path.join(index_dir, name))
    assert not any(name.endswith(".pkl") for name in manifest["files"])
    neighbors = {r["id"]: r for r in pq.read_table(os.path.join(index_dir, "neighbors.parquet")).to_pylist()}
    assert neighbors["item-10"]["neighbor_ids"][0] == "item-11" and len(neighbors["item-0"]["neighbor_ids"]) == 20
    ids = pq.read_table(os.path.join(index_dir, "ids.parquet")).column("id").to_pylist()
    assert ids == sorted(ids)  # in id order, whatever order the rows came in
    groups = pq.read_table(os.path.join(index_dir, "groups.parquet")).to_pylist()
    assert {(g["id"], g["group_size"]) for g in groups} >= {("item-10", 2), ("item-11", 2)}
    latest = json.load(open(os.path.join(published["out"], "LATEST")))
    assert latest["run_id"] == "r1" and latest["index"] == "runs/r1/index"
    assert published["report"]["latest_updated"]


def test_similar_leaves_the_item_out_and_rank_1_is_the_best_other(published, tmp_path):
    index = ImageIndex.open(published["out"], cache_dir=str(tmp_path / "cache"))
    assert len(index) == 500 and index.run_id == "r1"
    matches = index.similar("item-3", k=5)
    v = published["vectors"]
    sims = v @ v[3]
    sims[3] = -np.inf
    assert [m.id for m in matches] == [f"item-{i}" for i in np.argsort(-sims, kind="stable")[:5]]
    assert [m.rank for m in matches] == [1, 2, 3, 4, 5]
    assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    assert matches[0].metadata["title"] == f"title {matches[0].id}"
    assert matches[0].metadata["url"] == f"http://x/{matches[0].id}.jpg"
    with_self = index.similar("item-3", k=5, include_self=True)
    assert with_self[0].id == "item-3" and with_self[0].rank == 0 and with_self[0].score == pytest.approx(1.0, abs=1e-5)
    assert [m.id for m in with_self[1:]] == [m.id for m in matches] and [m.rank for m in with_self] == list(range(6))
    raw = published["vectors"][[3, 4]] * 7.0  # un-normalised queries are normalised
    assert [r[0].id for r in index.search(raw, k=1)] == ["item-3", "item-4"]
    assert index.neighbors("item-10")[0].id == "item-11"
    with pytest.raises(KeyError):
        index.similar("nope")


def test_consumer_refuses_an_artifact_whose_checksum_does_not_match(published, tmp_path):
    ids = os.path.join(published["out"], "runs", "r1", "index", "ids.parquet")
    with open(ids, "r+b") as f:
        f.seek(100)
        f.write(b"tampered")
    with pytest.raises(ArtifactError, match="ids.parquet does not match the manifest"):
        ImageIndex.open(published["out"], cache_dir=str(tmp_path / "cache2"))


def test_consumer_refuses_pickles_and_odd_paths(published, tmp_path):
    index_dir = os.path.join(published["out"], "runs", "r1", "index")
    manifest = json.load(open(os.path.join(index_dir, "manifest.json")))
    for bad in ("scann/scann_docids.pkl", "../../etc/passwd"):
        tampered = {**manifest, "files": {**manifest["files"], bad: {"sha256": "0" * 64, "bytes": 1}}}
        with pytest.raises(ArtifactError, match="will not load"):
            artifact.Manifest.parse(tampered)


def test_malformed_latest_is_a_clear_error(tmp_path):
    (tmp_path / "LATEST").write_text("{not json")
    with pytest.raises(ArtifactError, match="LATEST is malformed"):
        read_latest(ObjectStore(), str(tmp_path))


def test_a_concurrent_publisher_is_detected_and_never_overwritten(tmp_path):
    out = str(tmp_path / "out")
    publish_table(embeddings_table(clustered(50, seed=1)), out, "first")
    seen = read_latest(ObjectStore(), out)  # run "slow" starts and reads LATEST
    publish_table(embeddings_table(clustered(50, seed=2)), out, "fast")  # another run publishes meanwhile
    report = publish_table(embeddings_table(clustered(50, seed=3)), out, "slow", generation=seen.generation)
    assert report["published"] and not report["latest_updated"] and "LATEST changed" in report["latest"]
    assert read_latest(ObjectStore(), out).run_id == "fast"
    assert os.path.exists(os.path.join(out, "runs", "slow", "index", "manifest.json"))  # complete, not pointed at


class FailingStore(ObjectStore):
    """Real local storage that fails on the n-th upload, like a network error mid-publish."""

    def __init__(self, fail_at):
        super().__init__()
        self.uploads = 0
        self.fail_at = fail_at

    def upload_file(self, local_path, path):
        self.uploads += 1
        if self.uploads == self.fail_at:
            raise ConnectionError("simulated network failure")
        super().upload_file(local_path, path)


def test_a_run_that_fails_mid_publish_leaves_latest_untouched(tmp_path):
    out = str(tmp_path / "out")
    publish_table(embeddings_table(clustered(50, seed=1)), out, "good")
    before = open(os.path.join(out, "LATEST"), "rb").read()
    with pytest.raises(ConnectionError):
        publish_table(embeddings_table(clustered(50, seed=2)), out, "broken", store=FailingStore(fail_at=3))
    assert open(os.path.join(out, "LATEST"), "rb").read() == before
    assert ImageIndex.open(out, cache_dir=str(tmp_path / "c")).run_id == "good"


def finish_run(output, run_id):
    """What the pipeline's last step does after publishing: the run's summary.json (it is finished)."""
    with open(RunLayout(output, run_id).summary_path, "w") as f:
        json.dump({"counts": {}}, f)


def test_keep_runs_prunes_old_runs_but_not_the_latest(tmp_path):
    out = str(tmp_path / "out")
    for run in ("r1", "r2", "r3"):
        publish_table(embeddings_table(clustered(30)), out, run, indexer.IndexSettings(keep_runs=2))
        finish_run(out, run)
    assert sorted(os.listdir(os.path.join(out, "runs"))) == ["r2", "r3"]


def test_mixed_model_signatures_cannot_share_an_index():
    a = embeddings_table(clustered(10))
    b = embeddings_table(clustered(10), ids=[f"b{i}" for i in range(10)],
                         signature=ModelSignature(**{**SIGNATURE.to_dict(), "precision": "bf16"}))
    with pytest.raises(indexer.IndexInputError, match="precision"):
        indexer.combine_embeddings([a, b])


def test_search_image_refuses_weights_that_differ(published, tmp_path):
    index = ImageIndex.open(published["out"], cache_dir=str(tmp_path / "cache"))
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"different weights")
    with pytest.raises(ModelMismatch, match="not the ones this index was built with"):
        index.search_image(b"irrelevant", weights=str(other))


def test_the_consumer_imports_and_answers_without_beam(published, tmp_path):
    code = f"""
import sys
class NoBeam:
    def find_spec(self, name, path=None, target=None):
        if name == "apache_beam" or name.startswith("apache_beam."):
            raise ImportError("apache_beam is not installed here")
sys.meta_path.insert(0, NoBeam())
from imgsim.index.consumer import ImageIndex
index = ImageIndex.open({published['out']!r}, cache_dir={str(tmp_path / 'nb')!r})
print(index.similar("item-1", k=1, include_self=True)[0].id)
print(index.search(index.vector("item-2")[None], k=1)[0][0].id)  # the ScaNN searcher, loaded
assert not any(m.startswith("apache_beam") for m in sys.modules)
# ScaNN came without TensorFlow (5 s and 500 MB a process)
assert "tensorflow" not in sys.modules and "scann" in sys.modules
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["item-1", "item-2"]


@pytest.mark.model  # imports TensorFlow
def test_tensorflow_still_imports_after_scann_came_without_it():
    code = """
import sys
from imgsim.index.scann_import import scann_ops_pybind
scann_ops_pybind()
assert "tensorflow" not in sys.modules and "scann" in sys.modules
import tensorflow
assert tensorflow.constant(1).numpy() == 1
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_building_and_querying_print_nothing_of_scanns_own(tmp_path):
    """ScaNN's C++ logs ("I0000 ... partitioner_factory_base.cc ...") reach stderr through its own
    absl, which no environment variable silences: a build and a query print none of them."""
    code = ("import numpy as np, imgsim; v = np.random.default_rng(0).normal(size=(3000, 16)).astype('float32');"
            f"imgsim.build_index({str(tmp_path / 'out')!r}, ids=[f'i{{i}}' for i in range(3000)], vectors=v,"
            " run_id='q', index_mode='tree_ah');"
            f"print(imgsim.ImageIndex.open({str(tmp_path / 'out')!r}, cache_dir={str(tmp_path / 'c')!r})"
            ".similar('i1', k=2)[0].id)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("i") and done.stderr == "", done.stderr[-2000:]
