"""`imgsim index` as a Beam pipeline over synthetic clustered vectors: on DirectRunner with two
worker processes (multi_processing) the workers sample, partition, build the shards, answer the
recall queries and compute the neighbours, and the launcher publishes what they wrote; and the
pipeline's peak memory, measured in a small driver subprocess, at two collection sizes.

Those processes import ScaNN without TensorFlow, as every index process does
(imgsim.index.scann_import): TensorFlow would cost each 3 s and 400 MB, noise the memory test
could not afford, so its driver checks that it never loaded.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from imgsim.cli import main
from imgsim.index import artifact
from imgsim.index.consumer import ImageIndex
from imgsim.index.exact import recall_at_k
from imgsim.storage import sha256_file
from test_index import clustered, embeddings_table
from test_served_recall import assert_honest

TWO_WORKERS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def write_embeddings(directory, vectors, files=4, row_group_rows=250, first=0):
    os.makedirs(directory, exist_ok=True)
    per = -(-len(vectors) // files)
    for part in range(files):
        rows = range(part * per, min(len(vectors), (part + 1) * per))
        table = embeddings_table(vectors[rows.start:rows.stop], ids=[f"item-{first + i}" for i in rows])
        pq.write_table(table, os.path.join(directory, f"part-{part}.parquet"), row_group_size=row_group_rows)
    return os.path.join(directory, "*.parquet")


DRIVER = """
import json, sys
from imgsim.pipelines import index_pipeline
pattern, out, shards = sys.argv[1:]
result, run = index_pipeline.run([f"--embeddings={pattern}", f"--output={out}", "--run-id=r1",
                                  f"--index-shards={shards}", "--runner=DirectRunner"])
result.wait_until_finish()
report = json.loads(open(run.report_path).read())
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mb": peak_kb / 1024, "shards": report["sharding"]["shards"], "count": report["count"],
                  "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.mark.model  # the slow tier: worker processes
def test_peak_memory_stays_flat_when_the_collection_doubles(tmp_path):
    """At a fixed shard size (1,250 vectors of 3072 dimensions, 15 MB), doubling the collection (31 MB
    of vectors to 62 MB, 2 shards to 4) must not raise the peak resident memory of the process that
    runs every step (a small driver running the pipeline on DirectRunner in memory, so its VmHWM
    is the workers' and the runner's together) by as much as the vectors added: a step that
    gathered the collection would hold them at least twice (as rows and as a matrix), and a
    shuffle that carried them would hold them once more (one searcher built on one worker grows
    by ten times as much). Rows travel to their shard through files, and only names and neighbour
    lists through the shuffles. The two sizes run at once, each in its own driver. Both are past
    MIN_SAMPLE (2,048 rows), so the k-means training sample, which a worker holds several copies of,
    is the same size in both; below it the sample is the whole collection and grows with it, by design
    (measured: 1,250 -> 2,500 rows of 6,144 dimensions raise the peak by 190 MB)."""
    dim, half = 3072, 2500
    vectors = clustered(2 * half, dim=dim, clusters=50, seed=4, spread=0.3)
    write_embeddings(str(tmp_path / "emb" / "a"), vectors[:half], row_group_rows=300)
    write_embeddings(str(tmp_path / "emb" / "b"), vectors[half:], row_group_rows=300, first=half)
    del vectors
    runs = {n: subprocess.Popen([sys.executable, "-c", DRIVER, pattern, str(tmp_path / f"out-{n}"), str(shards)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n, shards, pattern in ((half, 2, str(tmp_path / "emb" / "a" / "*.parquet")),
                                       (2 * half, 4, str(tmp_path / "emb" / "**" / "*.parquet")))}
    peaks = {}
    for n, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        run = json.loads(stdout.strip().splitlines()[-1])
        assert run["count"] == n and run["shards"] == (2 if n == half else 4) and not run["tensorflow"], run
        peaks[n] = run["peak_mb"]
    added_mb = half * dim * 4 / 2 ** 20
    assert peaks[2 * half] - peaks[half] < added_mb, peaks


@pytest.mark.model  # the slow tier
def test_imgsim_index_builds_a_sharded_index_on_two_worker_processes(tmp_path, capsys):
    """Trees in every shard and the neighbours table found through them (--exact-neighbors-max 0), as
    above 200,000 items: what the manifest records is what the consumer and the table give."""
    n, dim = 3000, 32
    vectors = clustered(n, dim=dim, clusters=40, seed=11, spread=0.35)
    pattern = write_embeddings(str(tmp_path / "emb"), vectors)
    other = clustered(1, dim=dim, seed=12)  # a later file repeats item-7 with another vector: the first row wins
    pq.write_table(embeddings_table(other, ids=["item-7"]), tmp_path / "emb" / "zz-repeat.parquet")
    out = str(tmp_path / "out")

    code = main(["index", "--embeddings", pattern, "--output", out, "--run-id", "r1", "--index-shards", "4",
                 "--index-mode", "tree_ah", "--exact-neighbors-max", "0", "--recall-queries", "500", "-q",
                 *TWO_WORKERS])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and report["published"] and report["latest_updated"], report
    assert report["sharding"]["shards"] == 4 and report["recall"]["value"] >= 0.95

    index_dir = os.path.join(out, "runs", "r1", "index")
    manifest = json.load(open(os.path.join(index_dir, "manifest.json")))
    assert manifest["format_version"] == 2 and manifest["count"] == n
    assert manifest["counts"]["repeated_ids"] == 1 and manifest["neighbors"]["exact"] is False
    assert [e["shard"] for e in manifest["shards"]] == [0, 1, 2, 3]
    for rel, meta in artifact.Manifest.parse(manifest).all_files().items():  # each shard's files with the shard
        assert sha256_file(os.path.join(index_dir, *rel.split("/"))) == meta["sha256"], rel
    assert not os.path.exists(os.path.join(out, "runs", "r1", "index-work"))  # the rows' way to their shards

    # the consumer API and `imgsim query`, unchanged
    assert main(["query", "--index", out, "--id", "item-123", "-k", "3", "--include-self",
                 "--cache-dir", str(tmp_path / "qc")]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["id"] == "item-123" and first["score"] == pytest.approx(1.0, abs=1e-5)
    index = ImageIndex.open(out, cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(index.vector("item-7"), vectors[7])
    held_out = clustered(300, dim=dim, clusters=40, seed=11, spread=0.35)[::-1].copy()
    order = [int(i.split("-")[1]) for i in index.ids]
    assert sorted(order) == list(range(n))
    found = np.array([[index.ids.index(m.id) for m in row] for row in index.search(held_out, k=10)])
    assert recall_at_k(vectors[order], held_out, found, 10) >= 0.95
    assert_honest(index, vectors)  # recorded recall = similar's and the table's, within 0.02


@pytest.mark.model  # the slow tier
def test_the_run_pipelines_index_step_plans_shards_when_it_runs(tmp_path):
    """`imgsim run` learns the collection's size only at its end: with sharding="auto" the index step
    plans from the embedding files' footers inside the pipeline, and only the sharded branch builds
    (the one-worker step, in the same graph, reports nothing)."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that

    from imgsim.index.build import IndexSettings
    from imgsim.index.sharding import ShardingOptions
    from imgsim.runs.layout import RunLayout
    from imgsim.transforms.build_index import BuildIndex

    write_embeddings(str(tmp_path / "emb"), clustered(600, dim=16, seed=13), files=3, row_group_rows=100)
    files = sorted(str(p) for p in (tmp_path / "emb").glob("*.parquet"))

    def one_sharded_report(reports):
        assert [(r["published"], r["sharding"]["shards"]) for r in reports] == [(True, 3)], reports

    settings = IndexSettings(sharding=ShardingOptions(shards=3))
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
        report = ({"embedding_files": p | "Files" >> beam.Create(files),
                   "counts": p | "Counts" >> beam.Create([("input_rows", 600)])}
                  | "Index" >> BuildIndex(RunLayout(str(tmp_path / "out"), "r1"), settings, {}, 0, sharding="auto"))
        assert_that(report, one_sharded_report)
    manifest = json.load(open(tmp_path / "out" / "runs" / "r1" / "index" / "manifest.json"))
    assert manifest["format_version"] == 2 and manifest["count"] == 600 and manifest["counts"]["input_rows"] == 600
