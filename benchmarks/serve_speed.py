"""`imgsim serve` under load: id queries, search by upload, a swap and a rollback, extra workers.

    .venv/bin/python -m benchmarks.serve_speed --work /tmp/imgsim-queries   # reuses benchmarks.queries' 1M x 512
    .venv/bin/python -m benchmarks.serve_speed --n 50000 --dim 64           # a quick look

A real `imgsim serve` process (uvicorn, one worker unless said) on 127.0.0.1, driven by an aiohttp
client process with N connections asking as fast as answers come (closed loop):
- GET /api/similar/{random id}?k=10 for SECONDS at concurrency 1, 16 and 64, on one searcher and
  on 4 shards: requests per second, p50 and p99 latency, errors;
- a swap: clients at concurrency 16 while LATEST moves to another run (the same index published as
  run r2) and back (a rollback): errors, and p99 during the swap window against the steady p99;
- search by upload on an index of the shared clip art (VGG16 pool): latency at concurrency 1 and 2;
- --workers 1, 2 and 4 on one searcher: each process's proportional set size (PSS: pages shared by
  processes are split among them), so the cost of each extra worker is what it adds.
The client shares the machine's cores with the server: the numbers are the pair's.
Writes benchmarks/results/serve-DATE.json.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("IMGSIM_BENCH_SECONDS", "15"))


class Server:
    def __init__(self, index: str, cache: str, *args: str):
        env = {**os.environ, "IMGSIM_CACHE_DIR": cache}
        self.proc = subprocess.Popen([sys.executable, "-m", "imgsim", "serve", "--index", index, "--port", "0", "-q",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        line = lines.get(timeout=1800)
        self.url = line.split()[2]

    def pids(self) -> list[int]:
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [self.proc.pid, *map(int, children)]

    def stop(self):
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024


async def _load(url: str, paths: list[str], concurrency: int, seconds: float, method: str = "GET",
                body: bytes = b"", marks: list = None) -> dict:
    import aiohttp

    latencies, errors, times = [], [], []
    stop_at = time.monotonic() + seconds

    async def worker(session):
        while time.monotonic() < stop_at:
            path = random.choice(paths)
            started = time.monotonic()
            try:
                if method == "GET":
                    async with session.get(url + path) as answer:
                        await answer.read()
                        status = answer.status
                else:
                    form = aiohttp.FormData()
                    form.add_field("image", body, filename="q.png", content_type="image/png")
                    async with session.post(url + path, data=form) as answer:
                        await answer.read()
                        status = answer.status
                if status != 200:
                    errors.append(status)
            except Exception as e:
                errors.append(repr(e)[:100])
            finished = time.monotonic()
            latencies.append(finished - started)
            times.append(finished)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    lat = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(lat), "rps": round(len(lat) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
            "errors": len(errors), "error_examples": sorted(set(map(str, errors)))[:3],
            "_times": times, "_latencies": list(lat)}


def load(url, paths, concurrency, seconds=SECONDS, **kwargs) -> dict:
    result = asyncio.run(_load(url, paths, concurrency, seconds, **kwargs))
    return {k: v for k, v in result.items() if not k.startswith("_")}


def copy_run(out: Path, source_run: str, run_id: str) -> None:
    """runs/source_run again as run_id (a copy, its manifest naming run_id): another artifact to publish."""
    target = out / "runs" / run_id
    if not target.exists():
        shutil.copytree(out / "runs" / source_run, target)
        manifest = json.loads((target / "index" / "manifest.json").read_text())
        (target / "index" / "manifest.json").write_text(json.dumps({**manifest, "run_id": run_id}, indent=2))


def point(out: Path, run_id: str) -> None:
    from imgsim.index.latest import Latest, read_latest, swap_latest
    from imgsim.storage import ObjectStore

    store = ObjectStore()
    manifest = (out / "runs" / run_id / "index" / "manifest.json").read_bytes()
    swap_latest(store, str(out), Latest.for_run(run_id, hashlib.sha256(manifest).hexdigest(),
                                                json.loads(manifest)["format_version"]),
                read_latest(store, str(out)).generation)


def swap_under_load(server: Server, out: Path, run_of_latest: str, ids: list[str]) -> dict:
    """Clients at 16 for the whole of: steady, LATEST to r2, steady, LATEST back (a rollback)."""
    import requests

    result: dict = {}
    paths = [f"api/similar/{i}?k=10" for i in ids]
    copy_run(out, run_of_latest, "r2")

    def run_load():
        result.update(asyncio.run(_load(server.url, paths, 16, 90.0)))

    thread = threading.Thread(target=run_load)
    thread.start()
    time.sleep(15)
    swaps = []
    for target in ("r2", run_of_latest):
        started = time.monotonic()
        point(out, target)
        while requests.get(server.url + "healthz", timeout=30).json()["run_id"] != target:
            time.sleep(0.2)
        swaps.append((started, time.monotonic()))
        time.sleep(15)
    thread.join()
    times, lat = np.array(result["_times"]), np.array(result["_latencies"])
    during = np.zeros(len(times), bool)
    for start, end in swaps:
        during |= (times >= start) & (times <= end + 1.0)
    steady = lat[~during]
    return {"requests": len(lat), "errors": result["errors"], "error_examples": result["error_examples"],
            "swap_seconds": [round(e - s, 1) for s, e in swaps],
            "steady_p99_ms": round(float(np.percentile(steady, 99)), 2),
            "swap_p99_ms": round(float(np.percentile(lat[during], 99)), 2) if during.any() else None,
            "swap_requests": int(during.sum())}


def build(work: Path, n: int, dim: int) -> dict:
    import imgsim
    from benchmarks.queries import types
    from benchmarks.shapes import shaped

    outs = {}
    ids = [f"item-{i}" for i in range(n)]
    for build_kind, options in (("one_searcher", {}), ("sharded", {"index_shards": 4})):
        out = work / build_kind
        if not (out / "LATEST").exists():
            vectors = shaped(n, dim, "isotropic", clusters=max(10, n // 1000), seed=0)
            imgsim.build_index(str(out), ids=ids, vectors=vectors, metadata={"type": types(n)}, run_id="f1",
                               **options)
        outs[build_kind] = out
    return outs


def clip_art_index(work: Path, shared: Path) -> Path:
    """The shared clip art embedded with VGG16 (pool): an index search by upload can use."""
    out = work / "clipart"
    if not (out / "LATEST").exists():
        weights = shared / "models" / "vgg16_imagenet_notop.weights.h5"
        subprocess.run([sys.executable, "-m", "imgsim", "run", "--input", str(shared / "data" / "openclipart"),
                        "--output", str(out), "--layer", "pool", "--weights", str(weights), "-q"], check=True,
                       cwd=ROOT)
    return out


def benchmark(work: Path, n: int, dim: int, shared: Path) -> dict:
    outs = build(work, n, dim)
    rng = random.Random(0)
    ids = [f"item-{rng.randrange(n)}" for _ in range(2000)]
    paths = [f"api/similar/{i}?k=10" for i in ids]
    result = {"n": n, "dim": dim, "seconds": SECONDS, "similar": [], "workers": []}
    for kind, out in outs.items():
        server = Server(str(out), str(work / f"cache-{kind}"), "--refresh-seconds", "1")
        try:
            load(server.url, paths, 4, 5.0)  # warm-up
            for concurrency in (1, 16, 64):
                row = {"index": kind, **load(server.url, paths, concurrency)}
                print(json.dumps(row), flush=True)
                result["similar"].append(row)
            if kind == "one_searcher":
                result["swap"] = swap_under_load(server, out, "f1", ids)
                print(json.dumps({"swap": result["swap"]}), flush=True)
        finally:
            server.stop()
    for workers in (1, 2, 4):
        server = Server(str(outs["one_searcher"]), str(work / "cache-one_searcher"), "--workers", str(workers),
                        "--refresh-seconds", "600")
        try:
            load(server.url, paths, 8, 5.0)  # every worker has answered
            pss = [pss_mb(pid) for pid in server.pids()]
            row = {"workers": workers, "processes": len(pss), "pss_mb_total": round(sum(pss)),
                   "pss_mb_each": [round(p) for p in pss], **load(server.url, paths, 16, 10.0)}
            print(json.dumps(row), flush=True)
            result["workers"].append(row)
        finally:
            server.stop()
    clip = clip_art_index(work, shared)
    images = sorted((shared / "data" / "openclipart").glob("*.png"))
    server = Server(str(clip), str(work / "cache-clip"))
    try:
        body = images[3].read_bytes()
        load(server.url, ["api/search?k=10"], 1, 5.0, method="POST", body=body)
        result["upload"] = [load(server.url, ["api/search?k=10"], c, SECONDS, method="POST", body=body)
                            for c in (1, 2)]
        print(json.dumps({"upload": result["upload"]}), flush=True)
    finally:
        server.stop()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--work", help="where the indexes are (benchmarks.queries --work) or go")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="imgsim-bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    result = benchmark(work, args.n, args.dim, Path(args.shared))
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"serve-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
