"""Growing a published sharded index against building it whole, on the same vectors.

    .venv/bin/python -m benchmarks.growth                          # 1,000,000 x 512, 4 shards, 1% new
    .venv/bin/python -m benchmarks.growth --n 100000 --dim 64      # a quick look

Three runs of the real `imgsim index` pipeline on DirectRunner with two worker processes, each
in a subprocess whose CPU time (user + system, workers included) and wall time are measured:
1. the published index, built whole from n items;
2. the same output again with n * --new more items: LATEST's index grows;
3. the grown input built whole in a fresh output (what `--full-rebuild` would do).
Then: both indexes' recorded recall and neighbours-table recall, and for 2,000 items (a quarter
of them new) their top 10 in each table against brute force over every vector, and how often the
two tables agree. With --work, a rerun reuses the embeddings and the base (LATEST is rolled back to
it). Writes benchmarks/results/growth-DATE.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TWO_WORKERS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
FILE_ROWS = 125_000
ROW_GROUP_ROWS = 16_384


def write(directory: Path, first: int, data: np.ndarray) -> None:
    """Items item-FIRST ... as embeddings files, each with a sha256 (its id's: the image)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgsim.embed.signature import ModelSignature
    from imgsim.runs.outputs import embeddings_schema

    directory.mkdir(parents=True, exist_ok=True)
    dim = data.shape[1]
    schema = embeddings_schema(ModelSignature("synthetic", "clustered", dim, "", "", "", "fp32"), pa.schema([]))
    for start in range(0, len(data), FILE_ROWS):
        block = data[start:start + FILE_ROWS]
        ids = [f"item-{first + i}" for i in range(start, start + len(block))]
        columns = {"id": pa.array(ids), "sha256": pa.array([hashlib.sha256(i.encode()).hexdigest() for i in ids]),
                   "embedding": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), dim)}
        table = pa.Table.from_arrays([columns.get(f.name, pa.nulls(len(ids), f.type)) for f in schema], schema=schema)
        pq.write_table(table, directory / f"part-{first + start:09d}.parquet", row_group_size=ROW_GROUP_ROWS)


def collection(n: int, new: int, dim: int):
    from benchmarks.index_speed import clustered

    return clustered(n + new, dim, max(10, n // 1000), seed=0, point_seed=1)


def timed(args: list) -> dict:
    """`imgsim index ARGS` in a subprocess: wall and CPU seconds (its workers included), its report."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "imgsim", "index", *args, *TWO_WORKERS, "-q"],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "report": json.loads(done.stdout.strip().splitlines()[-1])}


def lists_of(index_dir: str, wanted: set) -> tuple[dict, dict]:
    """The manifest and the neighbour lists of the wanted ids (read part by part)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    manifest = json.load(open(os.path.join(index_dir, "manifest.json")))
    keep = pa.array(sorted(wanted))
    out = {}
    for rel in manifest["files"]:
        if rel.startswith("neighbors/"):
            table = pq.read_table(os.path.join(index_dir, rel), columns=["id", "neighbor_ids"])
            table = table.filter(pc.is_in(table.column("id"), value_set=keep))
            out.update(zip(table.column("id").to_pylist(), table.column("neighbor_ids").to_pylist()))
    return manifest, out


def compare(data: np.ndarray, grown_dir: str, full_dir: str, n: int, sample: int = 2000, k: int = 10,
            block: int = 100) -> tuple[dict, dict, dict]:
    """Top k of sampled items (a quarter of them new) in each table against brute force over every
    vector, and how often the two tables agree; (manifests, numbers)."""
    rng = np.random.default_rng(7)
    new = len(data) - n
    picked = np.concatenate([rng.choice(n, sample - min(new, sample // 4), replace=False),
                             n + rng.choice(new, min(new, sample // 4), replace=False)])
    wanted = {f"item-{i}" for i in picked.tolist()}
    grown_manifest, grown = lists_of(grown_dir, wanted)
    full_manifest, full = lists_of(full_dir, wanted)
    hits = {"grown": 0, "full": 0}
    for start in range(0, len(picked), block):  # (block, n) scores at a time
        rows = picked[start:start + block]
        sims = data[rows] @ data.T
        sims[np.arange(len(rows)), rows] = -np.inf
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        for name, lists in (("grown", grown), ("full", full)):
            for r, item in enumerate(rows.tolist()):
                found = [int(i.split("-")[1]) for i in lists[f"item-{item}"][:k]]
                hits[name] += int(np.sum(sims[r, found] >= kth[r] - 1e-3))
    same = [len(set(grown[i][:k]) & set(full[i][:k])) / k for i in wanted]
    numbers = {**{f"{name}_recall@{k}": round(h / (len(picked) * k), 4) for name, h in hits.items()},
               f"tables_agree@{k}": round(float(np.mean(same)), 4), "items_compared": len(picked)}
    return grown_manifest, full_manifest, numbers


def benchmark(n: int, dim: int, shards: int, new_share: float, work: Path) -> dict:
    """Steps already done in work (the embeddings, the published base) are reused: a rerun
    rolls LATEST back to the base and measures the growth and the full build again."""
    new = int(n * new_share)
    data = collection(n, new, dim)
    done = work / "emb" / "COMPLETE"
    if not done.exists():
        write(work / "emb" / "base", 0, data[:n])
        write(work / "emb" / "new", n, data[n:])
        done.write_text(json.dumps({"n": n, "new": new, "dim": dim}))
    common = [f"--index-shards={shards}"]
    out = str(work / "out")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%H%M%S")
    grown_run, full_out = f"grown-{stamp}", str(work / f"full-{stamp}")
    base = None
    if (work / "out" / "runs" / "base" / "index" / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "imgsim", "rollback", "--output", out, "--run-id", "base", "-q"],
                       check=True, capture_output=True, cwd=ROOT)
    else:
        base = timed(["--embeddings", str(work / "emb" / "base" / "*.parquet"), "--output", out, "--run-id", "base",
                      *common])
    grown = timed(["--embeddings", str(work / "emb" / "*" / "*.parquet"), "--output", out, "--run-id", grown_run,
                   *common])
    full = timed(["--embeddings", str(work / "emb" / "*" / "*.parquet"), "--output", full_out, "--run-id", "full",
                  *common])
    grown_manifest, full_manifest, numbers = compare(data, os.path.join(out, "runs", grown_run, "index"),
                                                     os.path.join(full_out, "runs", "full", "index"), n)
    summary = {name: {"wall_seconds": run["wall_seconds"], "cpu_seconds": run["cpu_seconds"]}
               for name, run in (("base", base), ("grown", grown), ("full", full)) if run}
    for name, manifest in (("grown", grown_manifest), ("full", full_manifest)):
        summary[name].update({"recall": manifest["recall"]["value"],
                              "neighbors_recall": manifest["neighbors"]["recall"],
                              "shards": len(manifest["shards"]), "build": {
                                  key: value for key, value in manifest["build"].items() if key != "settings"}})
    return {"n": n, "new": new, "dim": dim, "shards": shards, **summary,
            "grown_cpu_share_of_full": round(grown["cpu_seconds"] / full["cpu_seconds"], 4),
            "grown_wall_share_of_full": round(grown["wall_seconds"] / full["wall_seconds"], 4), **numbers}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--new", type=float, default=0.01, help="new items, as a share of n")
    parser.add_argument("--work", default=None, help="where the embeddings and indexes go (default: a temp dir)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="imgsim-growth-bench-"))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **benchmark(args.n, args.dim, args.shards, args.new, work)}
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"growth-{result['date'].replace(':', '').replace('-', '')[:15]}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
