"""Query semantics measured: filtered recall and latency, and outliers on real images.

    .venv/bin/python -m benchmarks.queries filtered                   # 1,000,000 x 512
    .venv/bin/python -m benchmarks.queries filtered --n 100000 --dim 64
    .venv/bin/python -m benchmarks.queries outliers                   # the shared images, real VGG16

filtered: isotropic clusters (benchmarks/shapes.py) with a `type` column that holds 'common'
for 50% of the items, 'rare' for 5% and 'unique' for 0.1%, each spread at random over the
clusters; one searcher and 4 shards (`imgsim.build_index` in this process). For each selectivity,
200 in-index queries (`similar` with filters={"type": [...]}) against exact filtered search:
recall@10 (strict: the share of the exact filtered top 10 found), every result checked against
the filter, and the latency per query (p50, p99), after a warm-up, one query at a time; the same
unfiltered, and for order="least" (recall against the exact 10 least similar).
outliers: the 280 clip-art images embedded (layer pool, fp32, the shared notop weights), with
INJECTED images added (blank frames, noise, photographs among clip art); the index's outliers
list: how many injected images are in its first len(INJECTED) and first 20.
Writes benchmarks/results/queries-DATE.json.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SELECTIVITY = {"common": 0.5, "rare": 0.05, "unique": 0.001}


def types(n: int, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    out = np.full(n, "other", dtype=object)
    order = rng.permutation(n)
    start = 0
    for value, share in SELECTIVITY.items():
        count = int(round(n * share))
        out[order[start:start + count]] = value
        start += count
    return out.tolist()


def filtered(n: int, dim: int, work: Path, queries: int = 200) -> dict:
    import imgsim
    from benchmarks.shapes import shaped
    from imgsim.index.consumer import ImageIndex
    from imgsim.index.exact import top_k

    vectors = shaped(n, dim, "isotropic", clusters=max(10, n // 1000), seed=0)
    kinds = types(n)
    kind_array = np.asarray(kinds, dtype=object)
    ids = [f"item-{i}" for i in range(n)]
    rows = []
    for build, options in (("one_searcher", {}), ("sharded", {"index_shards": 4})):
        out = str(work / build)
        started = time.monotonic()
        if not os.path.exists(os.path.join(out, "LATEST")):  # a --work directory keeps what was built
            imgsim.build_index(out, ids=ids, vectors=vectors, metadata={"type": kinds}, run_id="f1", **options)
        seconds = time.monotonic() - started
        index = ImageIndex.open(out, cache_dir=str(work / f"cache-{build}"))
        index.warm()  # every searcher loaded, as a service does before it answers
        index.similar("item-0", k=10, filters={"type": ["common"]})  # and the filter's column
        for value, share in SELECTIVITY.items():
            allowed = kind_array == value
            picked = np.random.default_rng(2).choice(n, queries, replace=False)
            hits = wanted = violations = 0
            latencies = []
            for q in picked.tolist():
                started_q = time.perf_counter()
                got = index.similar(f"item-{q}", k=10, filters={"type": [value]})
                latencies.append((time.perf_counter() - started_q) * 1000)
                violations += sum(m.metadata["type"] != value for m in got)
                sims = vectors @ vectors[q]
                sims[~allowed] = -np.inf
                sims[q] = -np.inf
                best, scores = top_k(sims[None, :], 10)
                truth = {f"item-{i}" for i, s in zip(best[0], scores[0]) if np.isfinite(s)}
                hits += len(truth & {m.id for m in got})
                wanted += len(truth)
            row = {"build": build, "value": value, "selectivity": share, "allowed": int(allowed.sum()),
                   "recall@10": round(hits / wanted, 4), "violations": int(violations),
                   "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                   "p99_ms": round(float(np.percentile(latencies, 99)), 2), "build_seconds": round(seconds, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        unfiltered = []
        for q in np.random.default_rng(3).choice(n, queries, replace=False).tolist():
            started_q = time.perf_counter()
            index.similar(f"item-{q}", k=10)
            unfiltered.append((time.perf_counter() - started_q) * 1000)
        rows.append({"build": build, "value": None, "selectivity": 1.0,
                     "p50_ms": round(float(np.percentile(unfiltered, 50)), 2),
                     "p99_ms": round(float(np.percentile(unfiltered, 99)), 2)})
        print(json.dumps(rows[-1]), flush=True)
        least, hits = [], 0
        for q in np.random.default_rng(4).choice(n, queries // 2, replace=False).tolist():
            started_q = time.perf_counter()
            got = index.similar(f"item-{q}", k=10, order="least")
            least.append((time.perf_counter() - started_q) * 1000)
            truth = {f"item-{i}" for i in np.argpartition(vectors @ vectors[q], 10)[:10]}
            hits += len(truth & {m.id for m in got})
        rows.append({"build": build, "value": "order=least", "recall@10": round(hits / (10 * len(least)), 4),
                     "p50_ms": round(float(np.percentile(least, 50)), 2),
                     "p99_ms": round(float(np.percentile(least, 99)), 2)})
        print(json.dumps(rows[-1]), flush=True)
    return {"n": n, "dim": dim, "queries": queries, "rows": rows}


def injected(shared: Path) -> dict:
    """Images that do not belong among clip art: blank frames, noise, photographs."""
    from PIL import Image

    def png(image) -> bytes:
        sink = io.BytesIO()
        image.save(sink, format="PNG")
        return sink.getvalue()

    rng = np.random.default_rng(0)
    out = {"blank-white": png(Image.new("RGB", (400, 300), (255, 255, 255))),
           "blank-black": png(Image.new("RGB", (400, 300), (0, 0, 0))),
           "noise": png(Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)))}
    for path in sorted((shared / "data" / "photos").glob("*.jpg"))[:2]:
        out[f"photo-{path.stem}"] = path.read_bytes()
    return out


def outliers(shared: Path, weights: str, work: Path) -> dict:
    import csv

    import imgsim
    from imgsim.embed.decode import DecodeConfig, decode_image
    from imgsim.embed.model import ModelSpec, load_embedder
    from imgsim.index.consumer import ImageIndex

    root = shared / "data" / "openclipart"
    names = sorted(r["file"] for r in csv.DictReader(open(root / "labels.csv")))
    images = {name: (root / name).read_bytes() for name in names}
    extra = injected(shared)
    images.update(extra)
    embedder = load_embedder(ModelSpec(layer="pool", weights=weights), weights)
    ids = list(images)
    vectors = []
    for start in range(0, len(ids), 20):
        pixels = np.stack([decode_image(images[i], DecodeConfig()).pixels for i in ids[start:start + 20]])
        vectors.append(embedder(pixels)[0])
    imgsim.build_index(str(work / "out"), ids=ids, vectors=np.concatenate(vectors), run_id="o1")
    found = [m.id for m in ImageIndex.open(str(work / "out"), cache_dir=str(work / "cache")).outliers(k=20)]
    first = found[:len(extra)]
    return {"collection": len(names), "injected": sorted(extra), "top": found,
            f"injected_in_top_{len(extra)}": sum(i in extra for i in first),
            "injected_in_top_20": sum(i in extra for i in found)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["filtered", "outliers"])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--work", help="keep the built indexes here (benchmarks.serve_speed reuses them)")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="imgsim-bench-queries-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.what == "filtered":
            result = {"filtered": filtered(args.n, args.dim, work)}
        else:
            shared = Path(args.shared)
            result = {"outliers": outliers(shared, str(shared / "models" / "vgg16_imagenet_notop.weights.h5"), work)}
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(json.dumps(result, indent=1))
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"queries-{args.what}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
