"""Large near-duplicate groups cost a sharded build no more memory than any other collection.

    .venv/bin/python -m benchmarks.dense_groups [--n 200000] [--dim 512] [--shards 4] [--shapes dense]

Two collections of the same size and cluster layout (benchmarks/shapes.py): `dense` (clusters of
~1,000 items all near-duplicates of each other, pairwise cosine ~0.96: the product shots and
blank scans that once took a worker to 18.7 GB) and `isotropic`. Each is built by
`imgsim.build_index(..., index_shards=N)` in a process of its own; its peak resident memory
(ru_maxrss), wall time and groups report are recorded. Writes benchmarks/results/dense-groups-DATE.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

BUILD = """
import json, sys, time, resource
import imgsim
from benchmarks.shapes import shaped
n, dim, shards, shape, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
vectors = shaped(n, dim, shape, clusters=max(10, n // 1000), seed=3)
started = time.monotonic()
report = imgsim.build_index(out, ids=[f"i{i}" for i in range(n)], vectors=vectors, run_id=shape, index_shards=shards)
print(json.dumps({"seconds": round(time.monotonic() - started, 1), "groups": report["groups"],
                  "recall": report["recall"]["value"], "published": report["published"],
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shapes", default="isotropic,dense", help="comma-separated: isotropic, dense")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgsim-dense-") as work:
        for shape in args.shapes.split(","):
            done = subprocess.run([sys.executable, "-c", BUILD, str(args.n), str(args.dim), str(args.shards), shape,
                                   os.path.join(work, shape)], capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            groups = result["groups"]
            row = {"shape": shape, "n": args.n, "dim": args.dim, "shards": args.shards,
                   "peak_rss_mb": result["peak_rss_mb"], "seconds": result["seconds"],
                   "recall": result["recall"], "groups": groups["count"], "items_in_groups": groups["items"],
                   "largest": groups["largest"][:5]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = {"rows": rows, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results",
                        f"dense-groups-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(path)
    return out


if __name__ == "__main__":
    main()
