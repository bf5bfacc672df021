"""The sharded index against one searcher, on the same synthetic clustered vectors.

    .venv/bin/python -m benchmarks.sharded_speed                       # 2,000,000 x 512, 8 shards
    .venv/bin/python -m benchmarks.sharded_speed --n 200000 --dim 64   # a quick look

- One searcher: imgsim's configuration for n (IndexOptions().resolve), built in a subprocess of its
  own: build seconds, and that process's peak resident memory (VmHWM).
- Sharded: the real `imgsim index --index-shards S` pipeline on DirectRunner with two worker
  processes, run by a driver subprocess, over the same vectors written as embeddings Parquet
  files: seconds until every shard was built (sampling, partitions, assignment, shard builds,
  the recall measurement: the part comparable with one searcher's build) and until it was
  published (neighbours of every item and groups too); each worker's and the driver's peak
  resident memory; each shard's build seconds.
- Queries: 2,000 held-out vectors from the same clusters, batched, after a warm-up: queries per
  second and recall@10 against brute force over all vectors (the tie rule of
  imgsim.index.exact.recall_at_k), for one searcher and for the published sharded index
  through ImageIndex (shards_to_search as chosen at build time, and every shard).
Writes benchmarks/results/sharded-DATE.json. Needs about 4.5x the raw vectors in memory at its peak
(one searcher's build) and 5x on disk; run nothing else heavy meanwhile.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TWO_WORKERS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
FILE_ROWS = 125_000
ROW_GROUP_ROWS = 16_384


def vectors(n: int, dim: int, point_seed: int):
    from benchmarks.index_speed import clustered

    return clustered(n, dim, max(10, n // 1000), seed=0, point_seed=point_seed)


def peak_mb() -> float:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024


def write_embeddings(directory: Path, n: int, dim: int) -> str:
    """The collection as imgsim embeddings files (ids item-0 ...), written once and reused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgsim.embed.signature import ModelSignature
    from imgsim.runs.outputs import embeddings_schema

    done = directory / "COMPLETE"
    if not done.exists():
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        signature = ModelSignature("synthetic", "clustered", dim, "", "", "", "fp32")
        schema = embeddings_schema(signature, pa.schema([]))
        data = vectors(n, dim, 1)
        for start in range(0, n, FILE_ROWS):
            block = data[start:start + FILE_ROWS]
            ids = [f"item-{i}" for i in range(start, start + len(block))]
            columns = {"id": pa.array(ids), "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(block.reshape(-1)), dim)}
            table = pa.Table.from_arrays([columns.get(f.name, pa.nulls(len(ids), f.type)) for f in schema],
                                         schema=schema)
            pq.write_table(table, directory / f"part-{start // FILE_ROWS:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
        done.write_text(json.dumps({"n": n, "dim": dim}))
    return str(directory / "*.parquet")


def single(n: int, dim: int) -> dict:
    """One searcher over all vectors (run in a subprocess of its own)."""
    from imgsim.index.searcher import IndexOptions

    data = vectors(n, dim, 1)
    config = IndexOptions().resolve(n, k=10)
    started = time.perf_counter()
    searcher = config.build(data)
    build = time.perf_counter() - started
    queries = vectors(2000, dim, 2)
    searcher.search_batched(queries[:100], final_num_neighbors=10)
    started = time.perf_counter()
    found, _ = searcher.search_batched(queries, final_num_neighbors=10)
    qps = len(queries) / (time.perf_counter() - started)
    from imgsim.index.exact import recall_at_k

    import numpy as np

    recall = recall_at_k(data, queries, np.asarray(found, np.int64), 10)
    return {"config": config.to_dict(), "build_seconds": round(build, 1), "qps": round(qps),
            "recall@10": round(recall, 4), "peak_rss_mb": round(peak_mb())}


def sharded_driver(pattern: str, out: str, shards: int) -> dict:
    """`imgsim index` with two worker processes (run in a driver subprocess)."""
    from apache_beam.metrics.metric import MetricsFilter

    from imgsim.pipelines import index_pipeline

    started = time.time()
    result, run = index_pipeline.run([f"--embeddings={pattern}", f"--output={out}", "--run-id=bench",
                                      f"--index-shards={shards}", *TWO_WORKERS])
    result.wait_until_finish()
    wall = time.time() - started
    metrics = result.metrics().query(MetricsFilter().with_namespace("imgsim"))
    dists = {}
    for d in metrics["distributions"]:
        dists.setdefault(d.key.metric.name, []).append(d.committed)
    gauges = {g.key.metric.name: g.committed.value for g in metrics["gauges"]}
    report = json.loads(open(run.report_path).read())
    return {"pipeline_seconds": round(wall, 1),
            "shards_built_seconds": round(gauges["index_shards_built_at_ms"] / 1000 - started, 1),
            "published_seconds": round(gauges["index_published_at_ms"] / 1000 - started, 1),
            "shard_build_seconds": _seconds(dists["index_shard_build_ms"]),
            "shard_build_cpu_seconds": _seconds(dists["index_shard_build_cpu_ms"]),
            "neighbors_unit_seconds": _seconds(dists.get("index_neighbors_unit_ms", [])),
            "neighbors_unit_cpu_seconds": _seconds(dists.get("index_neighbors_unit_cpu_ms", [])),
            "worker_peak_rss_mb": max(d.max for d in dists["index_worker_peak_rss_mb"]),
            "driver_peak_rss_mb": round(peak_mb()), "report": report}


def _seconds(results) -> dict:
    """max and sum of a millisecond distribution, in seconds."""
    if not results:
        return {"max": None, "sum": None}
    return {"max": round(max(r.max for r in results) / 1000, 1), "sum": round(sum(r.sum for r in results) / 1000, 1)}


def in_subprocess(function: str, *args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.sharded_speed", "--call", function,
                           *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{function} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def query_sharded(out: str, n: int, dim: int, cache: str) -> dict:
    """QPS and recall@10 of the published sharded index, through the consumer API."""
    import numpy as np

    from imgsim.index.consumer import ImageIndex
    from imgsim.index.exact import recall_at_k

    data = vectors(n, dim, 1)
    queries = vectors(2000, dim, 2)
    index = ImageIndex.open(out, cache_dir=cache)
    rows = {}
    for searched in (index.shards_to_search, len(index.manifest["shards"])):
        index.search(queries[:200], k=10, shards_to_search=searched)  # warm-up: loads the shards it needs
        started = time.perf_counter()
        found = index.search(queries, k=10, shards_to_search=searched)
        qps = len(queries) / (time.perf_counter() - started)
        approx = np.array([[int(m.id.split("-")[1]) for m in row] for row in found], np.int64)
        rows[searched] = {"shards_searched": searched, "qps": round(qps),
                          "recall@10": round(recall_at_k(data, queries, approx, 10), 4)}
    return {"queries": list(rows.values()), "consumer_peak_rss_mb": round(peak_mb())}


def benchmark(n: int, dim: int, shards: int, work: Path) -> dict:
    pattern = write_embeddings(work / f"embeddings-{n}-{dim}", n, dim)
    print("embeddings:", pattern, flush=True)
    one = in_subprocess("single", n, dim)
    print("one searcher:", one, flush=True)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    sharded = in_subprocess("sharded_driver", pattern, out, shards)
    print("sharded:", {k: v for k, v in sharded.items() if k != "report"}, flush=True)
    queried = in_subprocess("query_sharded", out, n, dim, work / "cache")
    print("queries:", queried, flush=True)
    manifest = json.load(open(out / "runs" / "bench" / "index" / "manifest.json"))
    shutil.rmtree(work / "cache", ignore_errors=True)
    return {"n": n, "dim": dim, "shards": shards, "raw_vectors_mb": round(n * dim * 4 / 2 ** 20),
            "one_searcher": one, "sharded": {**sharded, **queried,
                                             "shard_counts": [e["count"] for e in manifest["shards"]],
                                             "shard_configs": sorted({json.dumps(e["scann"], sort_keys=True)
                                                                      for e in manifest["shards"]}),
                                             "recall_curve": manifest["sharding"]["recall_by_shards_searched"],
                                             "shards_to_search": manifest["sharding"]["shards_to_search"]}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--work", default=None, help="where the embeddings and the index go (default: a temp dir)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--call", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.call:
        name, *rest = args.call
        arguments = [int(a) if a.isdigit() else a for a in rest]
        print(json.dumps(globals()[name](*arguments)))
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="imgsim-sharded-bench-"))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **benchmark(args.n, args.dim, args.shards, work)}
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"sharded-{result['date'].replace(':', '').replace('-', '')[:15]}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
