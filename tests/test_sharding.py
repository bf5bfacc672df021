"""A sharded index without Beam: partitions, the top-k merge, planning, the recall gate over all
vectors, the consumer's fan-out, neighbours and groups against brute force, and the Vertex export.

The artifact is built in this process (imgsim.build_index's path) from the same functions the
pipeline runs on its workers; tests/test_index_pipeline.py builds one with Beam.
"""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

import imgsim
from imgsim.index import build as indexer
from imgsim.index.consumer import ImageIndex
from imgsim.index.exact import recall_at_k, top_k
from imgsim.index.fanout import Candidates, merge
from imgsim.index.kmeans import assign, split_oversized, train_centroids
from imgsim.index.latest import read_latest
from imgsim.index.searcher import IndexOptions
from imgsim.index.shard_neighbors import BATCH_ROWS, Offer, merged_batches, pack_offers
from imgsim.index.sharding import ShardingOptions
from imgsim.storage import ObjectStore, sha256_file
from test_index import clustered, embeddings_table, publish_table

N, DIM = 3000, 24


def brute_force(vectors, queries, k, exclude_self=False):
    sims = queries @ vectors.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return top_k(sims, k)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """One sharded index (4 shards, brute-force searchers, exact neighbours), built once."""
    vectors = clustered(N, dim=DIM, clusters=30, seed=3, spread=0.35)
    vectors[11] = vectors[10]  # an exact duplicate pair
    out = str(tmp_path_factory.mktemp("sharded") / "out")
    settings = indexer.IndexSettings(sharding=ShardingOptions(shards=4), duplicate_threshold=0.999)
    report = publish_table(embeddings_table(vectors), out, "r1", settings)
    return {"out": out, "vectors": vectors, "report": report,
            "index_dir": os.path.join(out, "runs", "r1", "index")}


def test_partitions_follow_the_clusters_and_oversized_ones_are_split():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3]
    sizes = (600, 200, 200)
    points = np.concatenate([c + 0.05 * rng.normal(size=(s, 8)) for c, s in zip(centres, sizes)]).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    truth = np.repeat([0, 1, 2], sizes)
    labels = assign(points, train_centroids(points, 3))
    assert all(len(set(labels[truth == c])) == 1 for c in range(3)) and len(set(labels)) == 3
    split = split_oversized(points, train_centroids(points, 3), max_share=0.4)
    shares = np.bincount(assign(points, split)) / len(points)
    assert len(split) >= 4 and shares.max() <= 0.4 and shares.min() > 0


def test_the_merge_keeps_the_best_scores_ties_to_the_lower_row():
    a = Candidates(np.array([[5, 9, -1]]), np.array([[0.9, 0.5, -np.inf]], np.float32))
    b = Candidates(np.array([[2, 7, 3]]), np.array([[0.9, 0.8, 0.1]], np.float32))
    merged = merge([a, b], 4)
    assert merged.rows.tolist() == [[2, 5, 7, 9]]
    assert merged.scores[0].tolist() == pytest.approx([0.9, 0.9, 0.8, 0.5])
    assert merge([a], 4).rows.tolist() == [[5, 9, -1, -1]]  # padded, never invented


def test_offers_packed_per_query_shard_merge_into_each_batchs_best():
    """Offers travel as one file per (unit, query shard); the merge takes each row's best over
    every file, keeps rows of a later batch apart, and leaves a row nobody answered empty."""
    count, k = BATCH_ROWS + 3, 2
    first = Offer(BATCH_ROWS, np.array([0, 1]), Candidates(np.array([[10, 11], [12, -1]]),
                                                          np.array([[0.9, 0.5], [0.8, -np.inf]], np.float32)))
    later = Offer(3, np.array([2]), Candidates(np.array([[20, 21]]), np.array([[0.7, 0.6]], np.float32)))
    other = Offer(BATCH_ROWS, np.array([0]), Candidates(np.array([[30, 31]]), np.array([[0.95, 0.1]], np.float32)))
    packs = [pack_offers([(0, first), (1, later)]), pack_offers([(0, other)]), pack_offers([])]
    batches = list(merged_batches(count, k, packs))
    assert [(b, rows.start, rows.stop) for b, rows, _ in batches] == [(0, 0, BATCH_ROWS), (1, BATCH_ROWS, count)]
    zero, one = batches[0][2], batches[1][2]
    assert zero.rows[0].tolist() == [30, 10] and zero.rows[1].tolist() == [12, -1]
    assert zero.rows[2].tolist() == [-1, -1] and not zero.valid[2:].any()
    assert one.rows.tolist() == [[-1, -1], [-1, -1], [20, 21]]
    np.testing.assert_allclose(one.scores[2], [0.7, 0.6])


def test_shards_are_planned_from_the_memory_budget_or_asked_for():
    small = ShardingOptions().plan(41_000, 4096)  # a museum's fc2 vectors: one searcher, as before
    assert small.shards == 1 and not small.sharded
    by_memory = ShardingOptions(memory_mb=64).plan(100_000, 512)
    assert by_memory.max_shard_items == 64 * 2 ** 20 // (16 * 512) and by_memory.shards == 16  # 80% full
    assert by_memory.max_share < 0.09 and by_memory.sample_size == 16 * 256
    assert ShardingOptions(shards=8).plan(100_000, 512).shards == 8
    assert ShardingOptions(shards=8).plan(120, 16).shards == 2  # at least 50 items a shard
    with pytest.raises(imgsim.ConfigError, match="re-order in float32"):
        imgsim.build_index("unused", ids=["a", "b"], vectors=np.ones((2, 4)), index_shards=2,
                           index_reorder_type="int8")


def test_the_sharded_artifact_lists_its_shards_with_their_checksums(sharded):
    manifest = json.load(open(os.path.join(sharded["index_dir"], "manifest.json")))
    assert manifest["format_version"] == 2 and manifest["count"] == N
    assert [e["dir"] for e in manifest["shards"]] == [f"shards/{n:05d}" for n in range(4)]
    assert sum(e["count"] for e in manifest["shards"]) == N
    for entry in manifest["shards"]:
        assert {f"{entry['dir']}/{name}" for name in ("ids.parquet", "vectors.npy", "scann/scann_config.pb")} \
            <= set(entry["files"])
        for rel, meta in entry["files"].items():
            assert meta["sha256"] == sha256_file(os.path.join(sharded["index_dir"], rel))
    parts = [rel for rel in manifest["files"] if rel.startswith("neighbors/")]
    assert len(parts) == sum(-(-e["count"] // BATCH_ROWS) for e in manifest["shards"])
    curve = manifest["sharding"]["recall_by_shards_searched"]
    searched = manifest["sharding"]["shards_to_search"]
    assert manifest["recall"]["value"] == curve[searched - 1] >= 0.95 and curve[-1] == max(curve)
    latest = json.load(open(os.path.join(sharded["out"], "LATEST")))
    assert latest["format_version"] == 2 and sharded["report"]["sharding"]["shards"] == 4


def test_the_consumer_fans_out_and_answers_like_brute_force(sharded, tmp_path):
    vectors = sharded["vectors"]
    index = ImageIndex.open(sharded["out"], cache_dir=str(tmp_path / "cache"))
    assert index.sharded and len(index) == N
    assert os.listdir(index.local_dir) == ["manifest.json"]  # shards are fetched when first needed
    held_out = clustered(300, dim=DIM, clusters=30, seed=3, spread=0.35)[::-1].copy()
    data = index.vectors()
    found = [[index.ids.index(m.id) for m in matches] for matches in index.search(held_out, k=10)]
    assert recall_at_k(data, held_out, np.array(found), 10) >= 0.95
    # searching every shard, brute-force shards are exact
    every = index.search(held_out[:50], k=10, shards_to_search=4)
    exact_rows, exact_scores = brute_force(data, held_out[:50], 10)
    assert np.allclose([[m.score for m in row] for row in every], exact_scores, atol=1e-5)
    # rows: ids and vectors agree with the input
    order = [int(i.split("-")[1]) for i in index.ids]
    assert np.array_equal(data, vectors[order])
    best = index.similar("item-42", k=3, include_self=True)
    assert best[0].id == "item-42" and best[0].metadata["title"] == "title item-42" and best[0].rank == 0
    assert np.array_equal(index.vector("item-42"), vectors[42])


def test_neighbours_and_groups_match_brute_force(sharded, tmp_path):
    vectors = sharded["vectors"]
    index = ImageIndex.open(sharded["out"], cache_dir=str(tmp_path / "cache"))
    rows, scores = brute_force(vectors, vectors, 20, exclude_self=True)
    for i in np.random.default_rng(1).choice(N, 40, replace=False).tolist() + [10]:
        got = index.neighbors(f"item-{i}")
        assert [m.score for m in got] == pytest.approx(scores[i].tolist(), abs=1e-5)
        assert {m.id for m in got if m.score > scores[i][-1] + 1e-5} == {
            f"item-{j}" for j, s in zip(rows[i], scores[i]) if s > scores[i][-1] + 1e-5}
    groups = index.groups().to_pylist()
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    expected = {f"item-{i}" for i in np.flatnonzero((sims >= 0.999).any(axis=1))}
    assert {g["id"] for g in groups} == expected and {"item-10", "item-11"} <= expected


def test_neighbours_come_from_the_index_above_the_exact_limit(tmp_path):
    vectors = clustered(2000, dim=DIM, clusters=20, seed=5, spread=0.35)
    settings = indexer.IndexSettings(sharding=ShardingOptions(shards=3), exact_neighbors_max=1000)
    publish_table(embeddings_table(vectors), str(tmp_path / "out"), "r1", settings)
    index = ImageIndex.open(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert index.manifest["neighbors"]["exact"] is False
    exact, _ = brute_force(vectors, vectors, 20, exclude_self=True)
    sample = np.random.default_rng(2).choice(2000, 100, replace=False)
    overlap = np.mean([len({m.id for m in index.neighbors(f"item-{i}")} & {f"item-{j}" for j in exact[i]}) / 20
                       for i in sample])
    assert overlap >= 0.9, overlap


def test_the_recall_gate_refuses_a_crippled_sharded_index(tmp_path):
    out = str(tmp_path / "out")
    vectors = clustered(3000, dim=32, clusters=200, seed=6, spread=0.5)
    publish_table(embeddings_table(vectors[:100]), out, "good")
    before = open(os.path.join(out, "LATEST"), "rb").read()
    crippled = indexer.IndexSettings(options=IndexOptions(mode="tree_ah", num_leaves=60, leaves_to_search=1,
                                                          reorder=10), sharding=ShardingOptions(shards=2))
    # leaves searched and re-ordering fixed by the user: tuning may not raise them
    with pytest.raises(indexer.RecallTooLow, match=r"recall@10 0\.\d+ at best \(searching 2 of 2 shards, the "
                       r"configured parameters\) is below --min-recall 0.95: .* --min-recall 0\.\d+ would publish it"):
        publish_table(embeddings_table(vectors), out, "bad", crippled)
    assert open(os.path.join(out, "LATEST"), "rb").read() == before
    assert not os.path.exists(os.path.join(out, "runs", "bad"))
    assert read_latest(ObjectStore(), out).run_id == "good"


def test_export_writes_vertex_vector_search_records(sharded, tmp_path):
    result = imgsim.export(sharded["out"], output=str(tmp_path / "vertex"), restricts=["title"], rows_per_file=1000,
                           cache_dir=str(tmp_path / "cache"))
    assert result["items"] == N and result["files"] == 3
    files = sorted(os.listdir(tmp_path / "vertex"))
    assert files == ["part-00000.json", "part-00001.json", "part-00002.json"]
    records = [json.loads(line) for name in files for line in open(tmp_path / "vertex" / name)]
    by_id = {r["id"]: r for r in records}
    assert len(by_id) == N
    record = by_id["item-7"]
    assert set(record) == {"id", "embedding", "restricts"}
    assert np.array_equal(np.array(record["embedding"], np.float32), sharded["vectors"][7])
    assert record["restricts"] == [{"namespace": "title", "allow": ["title item-7"]}]
    with pytest.raises(imgsim.ConfigError, match="not columns of the index"):
        imgsim.export(sharded["out"], output=str(tmp_path / "v2"), restricts=["nope"], cache_dir=str(tmp_path / "c"))


def test_build_index_shards_in_memory_vectors_without_beam(tmp_path):
    vectors = clustered(1200, dim=16, seed=8)
    report = imgsim.build_index(str(tmp_path / "out"), ids=[f"v{i}" for i in range(1200)], vectors=vectors,
                                index_shards=3, neighbors_k=5)
    assert report["sharding"]["shards"] == 3 and report["latest_updated"]
    index = imgsim.ImageIndex.open(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert index.similar("v5", k=1, include_self=True)[0].id == "v5" and len(index.neighbors("v5")) == 5
    table = pq.read_table(os.path.join(str(tmp_path / "out"), "runs", index.run_id, "index", "shards", "00000",
                                       "ids.parquet"))
    assert "embedding" not in table.column_names and table.column("id").to_pylist() == sorted(
        table.column("id").to_pylist())


def test_a_shards_tree_partitions_spherically_and_a_whole_collections_does_not():
    """A k-means shard lies in one cone: leaves must be ranked by direction alone (see IndexConfig)."""
    from imgsim.index.searcher import IndexOptions

    assert IndexOptions().resolve(300_000, k=10, shard=True).to_dict()["spherical"] is True
    assert "spherical" not in IndexOptions().resolve(300_000, k=10).to_dict()
    # a shard takes the tree from 20,000 items (its rows share a direction: see imgsim.index.searcher)
    assert IndexOptions().resolve(50_000, k=10, shard=True).to_dict()["mode"] == "tree_ah"
    assert IndexOptions().resolve(50_000, k=10).to_dict()["mode"] == "ah"
    assert IndexOptions().resolve(19_999, k=10, shard=True).to_dict()["mode"] == "brute_force"


def test_large_near_duplicate_groups_come_from_the_neighbour_lists_not_all_pairs(tmp_path, monkeypatch):
    """Six clusters of ~1,000 items that are all near-duplicates of each other (pairwise cosine
    ~0.96: 3 million pairs over the threshold): the groups are found from the pairs among each
    item's listed neighbours (at most n x k), so their memory is that of any collection, and they
    are reported with their sizes. (BENCHMARKS.md measures the build's memory at 200,000.)"""
    from benchmarks.shapes import shaped
    from imgsim.index import sharded as sharded_build

    seen = []
    original = sharded_build.groups_result

    def watched(pairs, threshold, ids_of):
        seen.append(len(pairs.rows))
        return original(pairs, threshold, ids_of)

    monkeypatch.setattr(sharded_build, "groups_result", watched)
    n = 6000
    report = imgsim.build_index(str(tmp_path / "dense"), ids=[f"i{i}" for i in range(n)],
                                vectors=shaped(n, 32, "dense", clusters=6, seed=8), run_id="d", index_shards=3)
    k = ImageIndex.open(str(tmp_path / "dense"), cache_dir=str(tmp_path / "c")).manifest["neighbors"]["k"]
    assert seen and seen[0] <= n * k < 6 * 1000 * 999 // 2  # pairs among the neighbour lists, never all pairs
    groups = report["groups"]
    assert groups["count"] == 6 and groups["items"] == n and 900 <= min(groups["largest"]) <= max(groups["largest"]) <= 1100
