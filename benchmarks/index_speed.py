"""ScaNN index benchmarks on synthetic clustered vectors: build time, queries per second, recall@10
against numpy brute force, and serialised size."""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from imgsim.index.exact import recall_at_k, top_k
from imgsim.index.searcher import IndexOptions


def clustered(n: int, dim: int, clusters: int, seed: int, point_seed: int, spread: float = 1.0) -> np.ndarray:
    """Unit vectors around random centres (like embeddings of a collection with many themes).
    The centres come from `seed`, the points from `point_seed`."""
    centres = np.random.default_rng(seed).standard_normal((clusters, dim), dtype=np.float32)
    rng = np.random.default_rng(point_seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in blocks: 1M x 512 float64 noise would be 4 GB
        stop = min(n, start + 100_000)
        block = centres[rng.integers(0, clusters, stop - start)]
        block += spread * rng.standard_normal(block.shape, dtype=np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def brute_force_qps(data: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    started = time.perf_counter()
    step = max(1, (1 << 27) // len(data))
    for i in range(0, len(queries), step):
        top_k(queries[i:i + step] @ data.T, k)
    return len(queries) / (time.perf_counter() - started)


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def benchmark(n: int, dim: int, options: IndexOptions = IndexOptions(), queries: int = 2000, k: int = 10,
              seed: int = 0, brute_queries: int = 500) -> dict:
    clusters = max(10, n // 1000)
    data = clustered(n, dim, clusters, seed=seed, point_seed=seed + 1)
    held_out = clustered(queries, dim, clusters, seed=seed, point_seed=seed + 2)  # same themes, new points
    config = options.resolve(n, k)
    started = time.perf_counter()
    searcher = config.build(data)
    build_seconds = time.perf_counter() - started

    searcher.search_batched(held_out[:100], final_num_neighbors=k)  # warm-up
    started = time.perf_counter()
    found, _ = searcher.search_batched(held_out, final_num_neighbors=k)
    qps = queries / (time.perf_counter() - started)
    recall = recall_at_k(data, held_out, np.asarray(found, dtype=np.int64), k)
    brute = brute_force_qps(data, held_out[:brute_queries], k)

    directory = tempfile.mkdtemp(prefix="imgsim-bench-index-")
    try:
        searcher.serialize(directory, relative_path=True)
        size = dir_bytes(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"n": n, "dim": dim, "config": config.to_dict(), "build_seconds": round(build_seconds, 1),
            "qps": round(qps), "brute_force_qps": round(brute, 1), "speedup": round(qps / brute, 1),
            f"recall@{k}": round(recall, 4), "serialised_mb": round(size / 2 ** 20, 1),
            "raw_vectors_mb": round(data.nbytes / 2 ** 20, 1)}
