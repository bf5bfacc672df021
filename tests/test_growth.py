"""Growing a published sharded index (imgsim.index.growth, transforms/grow_index.py): a grown
shard's searcher holds exactly the rows its files say, and `imgsim index` over a collection with
new, changed and deleted items grows the published index, on two DirectRunner worker processes,
into the neighbours, groups and recall a full rebuild gives."""
import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgsim.cli import main
from imgsim.index import artifact
from imgsim.index.growth import _swap_removed, grow_shard
from imgsim.index.searcher import IndexOptions
from imgsim.index.shard_build import stage_shard
from imgsim.index.tuning import RecallQueries
from test_index import clustered, embeddings_table
from test_index_pipeline import TWO_WORKERS


def with_hashes(table, vectors):
    """Each row's sha256 from its vector, as a changed image would change it."""
    hashes = [hashlib.sha256(v.tobytes()).hexdigest() for v in vectors]
    return table.set_column(table.schema.get_field_index("sha256"), "sha256", pa.array(hashes, pa.string()))


def write_collection(directory, ids, vectors, files=3, row_group_rows=200):
    os.makedirs(directory, exist_ok=True)
    per = -(-len(ids) // files)
    for part in range(files):
        rows = slice(part * per, (part + 1) * per)
        table = with_hashes(embeddings_table(vectors[rows], ids=list(ids[rows])), vectors[rows])
        pq.write_table(table, os.path.join(directory, f"part-{part}.parquet"), row_group_size=row_group_rows)
    return os.path.join(directory, "*.parquet")


def test_swap_removal_mirrors_scann():
    kept, deletes = _swap_removed(6, [1, 5, 0])
    # delete position 1 (last row 5 moves there), then row 5 (now at 1; row 4 moves there), then row 0 (row 3 moves)
    assert deletes == [1, 1, 0] and kept.tolist() == [3, 4, 2]


@pytest.mark.parametrize("mode", ["brute_force", "tree_ah"])
def test_a_grown_shard_holds_exactly_the_rows_its_files_list(tmp_path, mode):
    vectors = clustered(1500, dim=16, seed=3)
    table = embeddings_table(vectors[:1400], ids=[f"item-{i}" for i in range(1400)])
    queries = RecallQueries.drawn(["item-1"], vectors[1:2])
    options = IndexOptions(mode=mode)
    staged = stage_shard(table, 0, options, queries, 10, str(tmp_path / "base"))
    entry = artifact.ShardEntry(0, staged.count, 0, 0, staged.config, staged.files)
    added = embeddings_table(vectors[1400:], ids=[f"item-{i}" for i in range(1400, 1500)])
    removed = list(range(0, 1400, 37))
    [grown] = grow_shard(str(tmp_path / "base"), entry, 16, removed, added.drop_columns(["embedding"]),
                         vectors[1400:], np.zeros(1400, bool), options, queries, 10, str(tmp_path / "new"),
                         max_items=10_000, split_number=1)
    assert grown.how == "grown" and grown.staged.count == 1400 - len(removed) + 100
    ids = pq.read_table(tmp_path / "new" / "shards" / "00000" / "ids.parquet").column("id").to_pylist()
    data = np.load(tmp_path / "new" / "shards" / "00000" / "vectors.npy")
    base_ids = pq.read_table(tmp_path / "base" / "shards" / "00000" / "ids.parquet").column("id").to_pylist()
    assert ids == [base_ids[k] if k >= 0 else f"item-{1400 + n}" for n, k in
                   enumerate(grown.kept.tolist()) if k >= 0] + [f"item-{i}" for i in range(1400, 1500)]
    by_id = {f"item-{i}": vectors[i] for i in range(1500)}
    assert np.array_equal(data, np.stack([by_id[i] for i in ids]))
    assert not {base_ids[r] for r in removed} & set(ids) and len(set(ids)) == len(ids)
    searcher = artifact.load_searcher(str(tmp_path / "new"), "shards/00000/scann")
    found, _ = searcher.search_batched(data, final_num_neighbors=1, leaves_to_search=artifact.EVERY_LEAF)
    assert np.array_equal(np.asarray(found)[:, 0], np.arange(len(ids)))
    assert grown.dirty.sum() == 100 and (grown.kept[grown.dirty] == -1).all()


def neighbours(out, run):
    index_dir = os.path.join(out, "runs", run, "index")
    manifest = json.load(open(os.path.join(index_dir, "manifest.json")))
    table = pa.concat_tables([pq.read_table(os.path.join(index_dir, *rel.split("/")))
                              for rel in sorted(manifest["files"]) if rel.startswith("neighbors/")])
    lists = {i: (n, s) for i, n, s in zip(table.column("id").to_pylist(), table.column("neighbor_ids").to_pylist(),
                                           table.column("scores").to_pylist())}
    groups = pq.read_table(os.path.join(index_dir, "groups.parquet")).to_pylist()
    members = {}
    for row in groups:
        members.setdefault(row["group"], set()).add(row["id"])
    return manifest, lists, sorted(sorted(m) for m in members.values())


@pytest.mark.model  # the slow tier: worker processes
def test_imgsim_index_grows_the_published_index_into_a_full_rebuilds_neighbours(tmp_path, capsys):
    """1% deleted, 1% changed and 8% new items, the new ones in one cluster so that their shard
    outgrows --index-memory-mb and splits: the grown index's neighbour lists (exact, as below
    200,000 items) are a full rebuild's, and so are its groups."""
    dim, n = 64, 3000
    vectors = clustered(n + 240, dim=dim, clusters=30, seed=21, spread=0.3)
    rng = np.random.default_rng(5)
    near = vectors[0] + 0.05 * rng.normal(size=(240, dim))  # new items in one place, some near-duplicates
    vectors[n:] = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    ids = np.array([f"item-{i:05d}" for i in range(n + 240)], dtype=object)
    common = ["--index-shards", "4", "--index-memory-mb", "1", "--recall-queries", "300", "--min-recall", "0.9",
              "-q"]
    out = str(tmp_path / "out")
    assert main(["index", "--embeddings", write_collection(str(tmp_path / "v1"), ids[:n], vectors[:n]),
                 "--output", out, "--run-id", "r1", *common]) == 0
    capsys.readouterr()

    deleted = np.arange(0, n, 100)  # 30
    changed = np.arange(50, n, 100)  # 30
    v2 = vectors.copy()
    v2[changed] = clustered(len(changed), dim=dim, clusters=30, seed=22, spread=0.3)
    keep = np.setdiff1d(np.arange(n + 240), deleted)
    pattern = write_collection(str(tmp_path / "v2"), ids[keep], v2[keep])
    assert main(["index", "--embeddings", pattern, "--output", out, "--run-id", "r2", *common, *TWO_WORKERS]) == 0
    grown_report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert grown_report["published"], grown_report
    full_out = str(tmp_path / "full")
    assert main(["index", "--embeddings", pattern, "--output", full_out, "--run-id", "f2", *common]) == 0

    grown, grown_lists, grown_groups = neighbours(out, "r2")
    full, full_lists, full_groups = neighbours(full_out, "f2")
    build = grown["build"]
    assert (build["grown_from"], build["new"], build["changed"], build["deleted"]) == ("r1", 240, 30, 30), build
    assert build["shards"]["split"] == 2 and len(grown["shards"]) == 5, build
    assert full["build"]["built_whole"] == "nothing published yet"
    assert grown["count"] == full["count"] == len(keep)
    assert set(grown_lists) == set(full_lists) == set(ids[keep])
    for item, (names, scores) in full_lists.items():
        assert grown_lists[item][0] == names, item
        np.testing.assert_allclose(grown_lists[item][1], scores, atol=1e-5)
    assert grown_groups == full_groups and len(full_groups) > 0
    assert abs(grown["recall"]["value"] - full["recall"]["value"]) <= 0.01
    assert grown["neighbors"]["recall"] == full["neighbors"]["recall"]
    assert not os.path.exists(os.path.join(out, "runs", "r2", "index-work"))
    assert main(["verify", "--index", out]) == 0


@pytest.mark.model  # the slow tier: three pipelines
def test_the_run_pipelines_index_step_grows_the_index_through_its_searchers(tmp_path):
    """`imgsim run`'s index step (BuildIndex, planned when it runs) grows LATEST's index too; with
    the neighbours table found through the shards' searchers (--exact-neighbors-max 0, as above
    200,000 items) the grown table agrees with a full rebuild's and keeps its recall."""
    import apache_beam as beam

    from imgsim.index.build import IndexSettings
    from imgsim.index.latest import read_latest
    from imgsim.index.sharding import ShardingOptions
    from imgsim.runs.layout import RunLayout
    from imgsim.storage import ObjectStore
    from imgsim.transforms.build_index import BuildIndex

    n, dim = 1200, 16
    vectors = clustered(n + 12, dim=dim, clusters=12, seed=31)
    ids = np.array([f"item-{i:05d}" for i in range(n + 12)], dtype=object)
    settings = IndexSettings(sharding=ShardingOptions(shards=3), exact_neighbors_max=0, recall_queries=200)

    def build(pattern, out, run_id):
        files = sorted(str(p) for p in (tmp_path / pattern).glob("*.parquet"))
        latest = read_latest(ObjectStore(), str(tmp_path / out))
        with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
            ({"embedding_files": p | "Files" >> beam.Create(files),
              "counts": p | "Counts" >> beam.Create([("input_rows", len(files))])}
             | "Index" >> BuildIndex(RunLayout(str(tmp_path / out), run_id), settings, {},
                                     latest.generation if latest else 0, sharding="auto"))

    write_collection(str(tmp_path / "v1"), ids[:n], vectors[:n], row_group_rows=100)
    write_collection(str(tmp_path / "v2"), ids[6:], vectors[6:], row_group_rows=100)  # 6 deleted, 12 new
    build("v1", "out", "r1")
    build("v2", "out", "r2")
    build("v2", "full", "f2")
    grown, grown_lists, _ = neighbours(str(tmp_path / "out"), "r2")
    full, full_lists, _ = neighbours(str(tmp_path / "full"), "f2")
    assert grown["build"]["grown_from"] == "r1" and (grown["build"]["new"], grown["build"]["deleted"]) == (12, 6)
    assert grown["neighbors"]["exact"] is False and set(grown_lists) == set(full_lists)
    agree = np.mean([len(set(grown_lists[i][0][:10]) & set(full_lists[i][0][:10])) / 10 for i in full_lists])
    assert agree >= 0.99, agree
    assert grown["neighbors"]["recall"]["value"] >= full["neighbors"]["recall"]["value"] - 0.01
    assert grown["recall"]["value"] >= full["recall"]["value"] - 0.01


def test_the_plan_grows_a_small_change_and_says_why_it_builds_a_large_one_whole(tmp_path):
    """By (id, sha256): a repeated id counts once (its first row), a missing sha256 counts as
    changed, and past 10% of the published items the index is built whole, with the reason."""
    from imgsim.index.build import IndexSettings
    from imgsim.index.growth import plan_growth
    from imgsim.index.latest import read_latest
    from imgsim.index.sharding import ShardingOptions
    from imgsim.index.sources import file_infos, plan_index
    from imgsim.storage import ObjectStore
    from test_index import publish_table

    n, dim = 600, 8
    vectors = clustered(n + 10, dim=dim, seed=41)
    ids = np.array([f"item-{i:04d}" for i in range(n + 10)], dtype=object)
    settings = IndexSettings(sharding=ShardingOptions(shards=2), recall_queries=50)
    out, store = str(tmp_path / "out"), ObjectStore()
    publish_table(with_hashes(embeddings_table(vectors[:n], ids=list(ids[:n])), vectors[:n]), out, "r1", settings)

    def plan(keep, changed=(), unhashed=(), repeat=None):
        directory = tmp_path / f"v{len(list((tmp_path).glob('v*')))}"
        v = vectors.copy()
        v[list(changed)] = clustered(len(changed), dim=dim, seed=42)
        write_collection(str(directory), ids[keep], v[keep], files=2, row_group_rows=100)
        if unhashed or repeat is not None:
            rows = list(unhashed) or [repeat]
            table = with_hashes(embeddings_table(v[rows], ids=list(ids[rows])), v[rows])
            if unhashed:
                table = table.set_column(table.schema.get_field_index("sha256"), "sha256",
                                         pa.array([None] * len(rows), pa.string()))
            pq.write_table(table, str(directory / ("a-first.parquet" if unhashed else "z-later.parquet")))
        files = sorted(str(p) for p in directory.glob("*.parquet"))
        return plan_growth(store, plan_index(file_infos(store, files), settings), settings, out,
                           read_latest(store, out))

    everything = np.arange(n + 10)
    growth, why = plan(np.setdiff1d(everything, [3, 4]), changed=[7, 8, 9], unhashed=[11], repeat=20)
    assert why == "grown from r1"
    # new: 10; changed: 7, 8, 9 and 11 (no sha256: its first row, in a-first, wins); deleted: 3, 4
    assert (growth.new, growth.changed, growth.deleted, growth.count) == (10, 4, 2, n + 8)
    assert growth.removed_ids == {ids[i] for i in (3, 4, 7, 8, 9, 11)}
    assert sum(len(rows) for rows in growth.removed.values()) == 6 and len(growth.added) == 14
    growth, why = plan(everything[:n], changed=range(0, 70))
    assert growth is None and why == "70 of 600 items are new, changed or deleted (more than 10%)"
