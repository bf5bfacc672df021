"""Recall as recorded in the manifest against what consumers are served, on three data shapes.

    .venv/bin/python -m benchmarks.served_recall                        # 210,000 x 512, 4 shards
    .venv/bin/python -m benchmarks.served_recall --n 30000 --dim 64     # a quick look

For each shape of benchmarks/shapes.py (narrow, isotropic, wide: 200 clusters), three builds of
the same vectors: one searcher (`imgsim.build_index` in this process), 4 shards in this process
(`index_shards=4`), and 4 shards by the `imgsim index` pipeline on DirectRunner with two worker
processes. For each: the recall the manifest records (the gate's value, the tie rule, and
strictly; the search parameters tuning chose), and, over 200 random items, the strict agreement
with the exact top 10 (the item itself left out) of `ImageIndex.similar` and of the neighbours
table, strictly and with the tie rule. The default size is past 200,000, where the table is found through the index, not exact.
Writes benchmarks/results/served-recall-DATE.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TWO_WORKERS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
SHAPES = ("narrow", "isotropic", "wide")
K = 10


def write_embeddings(directory: Path, vectors: np.ndarray, file_rows: int = 60_000) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgsim.embed.signature import ModelSignature
    from imgsim.runs.outputs import embeddings_schema

    directory.mkdir(parents=True, exist_ok=True)
    signature = ModelSignature("synthetic", "shaped", vectors.shape[1], "", "", "", "fp32")
    schema = embeddings_schema(signature, pa.schema([]))
    for start in range(0, len(vectors), file_rows):
        block = vectors[start:start + file_rows]
        ids = [f"item-{i}" for i in range(start, start + len(block))]
        columns = {"id": pa.array(ids), "embedding": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)),
                                                                                       vectors.shape[1])}
        table = pa.Table.from_arrays([columns.get(f.name, pa.nulls(len(ids), f.type)) for f in schema], schema=schema)
        pq.write_table(table, directory / f"part-{start // file_rows:05d}.parquet", row_group_size=16_384)
    return str(directory / "*.parquet")


def served(out: str, cache: str, vectors: np.ndarray, sample: int, seed: int = 0) -> dict:
    from imgsim.index.consumer import ImageIndex
    from imgsim.index.exact import top_k

    index = ImageIndex.open(out, cache_dir=cache)
    rows = np.random.default_rng(seed).choice(len(vectors), sample, replace=False)
    sims = vectors[rows] @ vectors.T
    sims[np.arange(sample), rows] = -np.inf
    exact, scores = top_k(sims, K)
    similar = table = similar_tie = table_tie = 0
    started = time.perf_counter()
    answers = []
    for row, best in zip(rows.tolist(), exact):
        answers.append(index.similar(f"item-{row}", k=K))
    similar_ms = (time.perf_counter() - started) * 1000 / sample
    for row, best, kth, got in zip(rows.tolist(), exact, scores[:, -1], answers):
        truth = {f"item-{j}" for j in best}
        listed = index.neighbors(f"item-{row}")[:K]
        similar += len({m.id for m in got} & truth)
        table += len({m.id for m in listed} & truth)
        similar_tie += sum(m.score >= kth - 1e-3 for m in got)  # ann-benchmarks' tie rule, as recorded
        table_tie += sum(m.score >= kth - 1e-3 for m in listed)
    m = index.manifest
    recall = m["recall"]
    search = ({e["shard"]: e.get("search") for e in m["shards"]} if "shards" in m else m["scann"].get("search"))
    return {
        "recorded": {"value": recall["value"], "strict": recall["strict"], "in_index": recall["in_index"],
                     "held_out": recall["held_out"], "leaves_factor": recall["leaves_factor"],
                     "reorder_factor": recall["reorder_factor"], "shards_searched": recall.get("shards_searched"),
                     "tried": len(recall["tried"]), "search": search,
                     "modes": sorted({e["scann"]["mode"] for e in m["shards"]}) if "shards" in m else [m["scann"]["mode"]]},
        "table_recorded": m["neighbors"]["recall"],
        "served_similar_strict": round(similar / (sample * K), 4),
        "served_table_strict": round(table / (sample * K), 4),
        "served_similar_tie": round(similar_tie / (sample * K), 4),
        "served_table_tie": round(table_tie / (sample * K), 4),
        "similar_ms": round(similar_ms, 2),
        "shards_to_search": index.shards_to_search,
    }


def build(kind: str, vectors: np.ndarray, work: Path, pattern: str, shards: int) -> float:
    import imgsim

    out = work / kind / "out"
    started = time.monotonic()
    if kind == "pipeline":
        proc = subprocess.run([sys.executable, "-m", "imgsim", "index", "--embeddings", pattern, "--output", str(out),
                               "--run-id", "b1", "--index-shards", str(shards), "--min-recall", "0.95", "-q",
                               *TWO_WORKERS], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
    else:
        ids = [f"item-{i}" for i in range(len(vectors))]
        imgsim.build_index(str(out), ids=ids, vectors=vectors, run_id="b1",
                           **({"index_shards": shards} if kind == "sharded" else {}))
    return time.monotonic() - started


def benchmark(n: int, dim: int, shards: int, work: Path, sample: int = 200, shapes=SHAPES) -> dict:
    from benchmarks.shapes import shaped

    rows = []
    for shape in shapes:
        vectors = shaped(n, dim, shape, clusters=200, seed=0)
        pattern = write_embeddings(work / shape / "emb", vectors)
        for kind in ("one_searcher", "sharded", "pipeline"):
            place = work / shape
            seconds = build(kind, vectors, place, pattern, shards)
            row = {"shape": shape, "build": kind, "build_seconds": round(seconds, 1),
                   **served(str(place / kind / "out"), str(place / kind / "cache"), vectors, sample)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        shutil.rmtree(work / shape, ignore_errors=True)
    return {"n": n, "dim": dim, "shards": shards, "sample": sample, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=210_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shape", action="append", choices=SHAPES)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="imgsim-bench-served-"))
    try:
        result = benchmark(args.n, args.dim, args.shards, work, shapes=args.shape or SHAPES)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"served-recall-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
