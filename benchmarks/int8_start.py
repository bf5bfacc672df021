"""int8 from start to end on a few hundred images in a fresh output: calibrating, and calibrated before.

    .venv/bin/python -m benchmarks.int8_start             # 300 catalogue images
    .venv/bin/python -m benchmarks.int8_start --images 100

Real `imgsim run` processes (DirectRunner, defaults otherwise, layer pool with the shared weights)
over the benchmark catalogue (benchmarks/catalogue.py: 1000-3000 px JPEGs served on 127.0.0.1),
each into a fresh output, timed from process start to exit: fp32; int8 with an empty calibration
cache (it calibrates); int8 again into another fresh output (the calibration comes from imgsim's
cache). Targets (the int8 issue): cached int8 at least 2.5x faster than fp32, calibrating int8 at
most 1.3x slower. Writes benchmarks/results/int8-start-DATE.json.
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


def run(manifest: Path, images: int, output: Path, weights: str, cache: Path, *extra: str) -> dict:
    env = {**os.environ, "IMGSIM_CACHE_DIR": str(cache)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "imgsim", "run", "--input", str(manifest), "--limit", str(images),
                           "--output", str(output), "--weights", weights, "--layer", "pool",
                           "--allow-private-addresses", "--max-requests-per-second-per-host", "0",
                           "--progress-interval", "0", "-q", *extra], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "embedded": summary["counts"]["embedded"]}


def benchmark(shared: Path, images: int, work: Path, calibration_size: int = 128) -> dict:
    from benchmarks import catalogue

    paths = catalogue.build(shared, images, work / "catalogue")
    httpd, base = catalogue.serve(paths[0].parent)
    try:
        manifest = catalogue.write_manifest(paths, base, work / "manifest.csv")
        weights = str(shared / "models" / "vgg16_imagenet_notop.weights.h5")
        cache = work / "imgsim-cache"
        int8 = ["--backend", "openvino", "--precision", "int8", "--calibration-size", str(calibration_size)]
        rows = {"fp32": run(manifest, images, work / "out-fp32", weights, cache),
                "int8_calibrating": run(manifest, images, work / "out-int8-a", weights, cache, *int8),
                "int8_cached": run(manifest, images, work / "out-int8-b", weights, cache, *int8)}
    finally:
        httpd.shutdown()
    fp32 = rows["fp32"]["seconds"]
    record = next((work / "out-int8-a" / "runs").glob("*/model/calibration.json"))
    agreement = json.loads(record.read_text())["agreement"]  # the gate's measure on the calibration sample
    return {"images": images, "calibration_size": calibration_size, "runs": rows, "agreement": agreement,
            "int8_cached_speedup": round(fp32 / rows["int8_cached"]["seconds"], 2),
            "int8_calibrating_slowdown": round(rows["int8_calibrating"]["seconds"] / fp32, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--calibration-size", type=int, default=64, help="imgsim run's --calibration-size")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="imgsim-bench-int8-"))
    try:
        result = benchmark(Path(args.shared), args.images, work, args.calibration_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(json.dumps(result, indent=1))
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / f"int8-start-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}.json").write_text(
        json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
