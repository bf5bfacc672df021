"""The explorer at scale: build a synthetic N-item site, serve it locally, time it in Chromium.

    .venv/bin/python -m benchmarks.explorer_site --items 100000 [--no-thumbnails] [--keep DIR]

The collection is synthetic (clustered random 64-d vectors, fake neighbours drawn from each item's
cluster, pairs as near-duplicate groups, titles, creators, types and departments), written in the
index artifact's own table formats, with a thumbnail pack of generated WebPs (or no thumbnails:
the site then shows each item's URL). The site is built by imgsim.explorer exactly as `imgsim
explore` builds it, served by Python's http.server (no Range support: the slower path for
thumbnails), and opened in Debian's Chromium through Playwright: the times run from navigation to
each view's first screen: the collection and the outliers with their first thumbnails decoded, an
item with its neighbours', the near-duplicate groups with their first, the map with every point
drawn, and a search (which scans every search file) with its one answer.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import io
import json
import os
import platform
import shutil
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgsim.explorer.build import build_site
from imgsim.explorer.source import IndexContents
from imgsim.storage import ObjectStore
from imgsim.thumbnails.packs import SCHEMA as PACK_SCHEMA

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]
TYPES = ["Painting", "Print", "Drawing", "Photograph", "Sculpture", "Textile"]
DEPARTMENTS = [f"Department {i}" for i in range(10)]


def synthetic_index(root: str, n: int, thumbnails: bool, seed: int = 0) -> IndexContents:
    rng = np.random.default_rng(seed)
    clusters = max(8, n // 2000)
    label = rng.integers(0, clusters, n)
    centres = rng.normal(size=(clusters, 64)).astype(np.float32)
    vectors = centres[label] + 0.35 * rng.normal(size=(n, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"obj-{i:07d}" for i in range(n)]
    index_dir = os.path.join(root, "runs", "bench", "index")
    os.makedirs(index_dir)
    info = pa.table({
        "row": pa.array(np.arange(n)), "id": ids, "url": [f"https://images.example.org/{i}.jpg" for i in ids],
        "sha256": [f"{i:064x}" for i in range(n)], "width": pa.array(np.full(n, 800), pa.int32()),
        "height": pa.array(np.full(n, 600), pa.int32()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 64),
        "title": [f"Object {i} of cluster {c}" for i, c in enumerate(label)],
        "type": [TYPES[c % len(TYPES)] for c in label],
        "department": [DEPARTMENTS[i % len(DEPARTMENTS)] for i in range(n)],
        "creators": [[f"Artist {c}", f"Workshop {i % 97}"] for i, c in enumerate(label)],
        "record_url": [f"https://collection.example.org/{i}" for i in ids],
    })
    pq.write_table(info, os.path.join(index_dir, "ids.parquet"))
    # fake neighbours: 20 members of the item's own cluster, with decreasing scores
    by_cluster = [np.flatnonzero(label == c) for c in range(clusters)]
    neighbours = np.stack([rng.choice(by_cluster[c], 20) for c in label])
    scores = np.sort(rng.uniform(0.6, 0.99, size=(n, 20)).astype(np.float32), axis=1)[:, ::-1]
    pq.write_table(pa.table({"id": ids, "neighbor_ids": [[ids[j] for j in row] for row in neighbours],
                             "scores": pa.array(list(scores), pa.list_(pa.float32()))}),
                   os.path.join(index_dir, "neighbors.parquet"))
    pairs = np.arange(0, n - 1, 50)
    pq.write_table(pa.table({"group": pa.array(np.repeat(np.arange(len(pairs)), 2), pa.int64()),
                             "id": [ids[j] for p in pairs for j in (p, p + 1)],
                             "group_size": pa.array(np.full(2 * len(pairs), 2), pa.int64())}),
                   os.path.join(index_dir, "groups.parquet"))
    if thumbnails:
        from PIL import Image

        samples = []
        for k in range(256):
            grid = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(grid).resize((224, 168), Image.Resampling.BICUBIC).save(buf, "WEBP", quality=80)
            samples.append(buf.getvalue())
        pack_dir = os.path.join(root, "runs", "bench", "thumbnails")
        os.makedirs(pack_dir)
        for start in range(0, n, 20000):
            end = min(n, start + 20000)
            pq.write_table(pa.table({"id": ids[start:end], "sha256": info.column("sha256")[start:end],
                                     "format": ["webp"] * (end - start), "width": pa.array(np.full(end - start, 224), pa.int32()),
                                     "height": pa.array(np.full(end - start, 168), pa.int32()),
                                     "thumbnail": [samples[i % 256] for i in range(start, end)]}, schema=PACK_SCHEMA),
                           os.path.join(pack_dir, f"embedded-{start // 20000:05d}.parquet"))
    columns = [c for c in info.column_names if c != "embedding"]
    manifest = {"run_id": "bench", "created": "synthetic", "model_signature": {"model": "synthetic", "dim": 64},
                "groups": {"threshold": 0.95}}
    return IndexContents(manifest, index_dir, index_dir, info.select(columns), ObjectStore())


def measure(site: str, item_id: str, runs: int = 3, thumbnails: bool = True) -> dict:
    from playwright.sync_api import sync_playwright

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=site))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    def pictures(selector: str, count: int) -> str:
        """count cards shown, with their thumbnails decoded (or their "no image" frames, without)."""
        if not thumbnails:
            return f"() => document.querySelectorAll('{selector} .no-picture').length >= {count}"
        return (f"() => {{ const imgs = [...document.querySelectorAll('{selector} img')].slice(0, {count});"
                f" return imgs.length === {count} && imgs.every(i => i.complete && i.naturalWidth > 0); }}")
    target = int(item_id.rsplit("-", 1)[1])
    views = (("collection_s", "", pictures("#grid", 24)),
             ("item_s", f"#item={item_id}", pictures("#neighbours", 20)),
             ("map_s", "#view=map", "() => document.getElementById('map')?.dataset.points"),
             ("groups_s", "#view=groups", pictures("#groups", 8)),  # the groups on the first screen
             ("outliers_s", "#view=outliers", pictures("#outliers", 24)),
             # the search box scans every search file: the one view that reads the whole collection
             ("search_s", f"#view=collection&q=object+{target}+of",
              "() => document.querySelector('h2.result-count')?.dataset.count === '1'"))
    results = {key: [] for key, _, _ in views}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for _ in range(runs):
                for key, hash_, ready in views:
                    context = browser.new_context(viewport={"width": 1280, "height": 900})  # a cold cache each time
                    page = context.new_page()
                    started = time.perf_counter()
                    page.goto(base + hash_)
                    try:
                        page.wait_for_function(ready, timeout=120_000, polling=20)
                    except Exception as e:
                        raise RuntimeError(f"{key}: the view did not finish in 120 s") from e
                    results[key].append(round(time.perf_counter() - started, 3))
                    if key == "map_s":
                        results["map_points"] = int(page.get_attribute("#map", "data-points"))
                    context.close()
            browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--no-thumbnails", action="store_true")
    parser.add_argument("--keep", help="build the site here and keep it")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="imgsim-explorer-bench-")
    try:
        t = time.perf_counter()
        contents = synthetic_index(os.path.join(work, "out"), args.items, not args.no_thumbnails)
        generated = time.perf_counter() - t
        site = args.keep or os.path.join(work, "site")
        report = build_site(contents, site)
        timings = measure(site, contents.ids[args.items // 2], args.runs, not args.no_thumbnails)
        result = {"items": args.items, "thumbnails": report["thumbnails"], "generate_s": round(generated, 1),
                  "build": report["seconds"], "site_files": report["files"],
                  "site_mb": round(report["bytes"] / 1e6, 1), "neighbourhood_kept": report["map"]["neighbourhood_kept"],
                  **{k: (min(v) if isinstance(v, list) else v) for k, v in timings.items()},
                  "all_runs": timings, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
