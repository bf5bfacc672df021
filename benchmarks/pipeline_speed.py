"""End-to-end runs of `imgsim run` over the HTTP catalogue: throughput and peak memory."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence


def run_pipeline(manifest: Path, count: int, output: Path, weights: str, layer: str, precision: str,
                 batch_size: int, extra: Sequence[str] = ()) -> dict:
    """One real `imgsim run` (DirectRunner, defaults otherwise) in a fresh process, measured."""
    cmd = [sys.executable, "-m", "benchmarks.measure", "--",
           sys.executable, "-m", "imgsim", "run", "--input", str(manifest), "--limit", str(count),
           "--output", str(output), "--run-id", f"bench-{count}-{precision}", "--weights", weights,
           "--layer", layer, "--precision", precision, "--min-batch-size", str(batch_size),
           "--max-batch-size", str(batch_size), "--allow-private-addresses", "--progress-interval", "0",
           # Every image comes from one host here (the catalogue server on 127.0.0.1): the default
           # politeness of 20 request starts per second per host would cap a run at 20 img/s and be
           # measured instead of the pipeline. A CDN-served collection spreads over many hosts.
           "--max-requests-per-second-per-host", "0", *extra]
    measured = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    if measured["returncode"] != 0:
        raise RuntimeError(f"imgsim run failed: {measured['stderr'][-2000:]}")
    summary = json.loads((output / "runs" / f"bench-{count}-{precision}" / "summary.json").read_text())
    embedded = summary["counts"]["embedded"]
    return {"images": count, "embedded": embedded, "failed": summary["counts"]["failed"],
            "process_seconds": measured["wall_seconds"], "pipeline_seconds": summary["wall_seconds"],
            "images_per_second": round(embedded / measured["wall_seconds"], 3),
            "peak_rss_mb": measured["peak_rss_mb"]}


def marginal_throughput(small: dict, large: dict, clock: str = "process_seconds") -> float:
    """Images per second between two run sizes: start-up, model loading and other fixed costs cancel.

    clock: "process_seconds" (the whole process) or "pipeline_seconds" (from the end of preflight:
    leaves out an int8 run's calibration, a fixed per-run cost reported on its own)."""
    return (large["embedded"] - small["embedded"]) / (large[clock] - small[clock])
