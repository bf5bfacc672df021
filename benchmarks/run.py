"""The benchmark suite, in one run on one machine:

    .venv/bin/python -m benchmarks.run            # full (about half an hour on 2 cores)
    .venv/bin/python -m benchmarks.run --quick    # a smoke run of every part, a few minutes

Measures the machine's FLOP ceiling, raw model throughput (fp32, bf16), bf16/fp32 agreement, decode
cost, end-to-end pipeline throughput and peak memory over a local HTTP catalogue of real JPEGs, and
ScaNN index speed and recall, a sharded index built by `imgsim index` on two worker processes
against one searcher (benchmarks/sharded_speed.py), and the quality of neighbours per layer and
precision (labelled clip art, near duplicates of the photos). Prints the targets with pass/fail and writes JSON
(benchmarks/results/LATEST.json and a dated copy). Run nothing else heavy meanwhile.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def describe_machine() -> dict:
    import tensorflow as tf

    cpu = "unknown"
    flags: set[str] = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory_gb, 1),
            "cpu_features": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "python": platform.python_version(), "tensorflow": tf.__version__, "os": platform.platform()}


def model_section(results: dict, weights: str, layer: str, seconds: float, shared: Path) -> int:
    from benchmarks import model_speed
    from imgsim.embed.model import ModelSpec, load_embedder

    results["matmul_gflops"] = model_speed.matmul_gflops()
    print("FLOP ceiling:", results["matmul_gflops"], flush=True)
    fp32 = load_embedder(ModelSpec(layer=layer, weights=weights), weights)
    bf16 = load_embedder(ModelSpec(layer=layer, weights=weights, precision="bf16"), weights)
    raw = {}
    for batch in (8, 16, 32):
        raw[f"fp32_batch{batch}"] = round(model_speed.raw_throughput(fp32, batch, seconds), 3)
        print(f"raw fp32 batch {batch}: {raw[f'fp32_batch{batch}']} img/s", flush=True)
    best = max((8, 16, 32), key=lambda b: raw[f"fp32_batch{b}"])
    raw["best_batch"] = best
    raw["fp32"] = raw[f"fp32_batch{best}"]
    raw["bf16"] = round(model_speed.raw_throughput(bf16, best, seconds), 3)
    print(f"raw bf16 batch {best}: {raw['bf16']} img/s", flush=True)
    results["raw_model"] = raw
    results["bf16_agreement"] = model_speed.agreement(fp32, bf16, shared)
    print("bf16 agreement:", results["bf16_agreement"], flush=True)
    int8_section(results, fp32, weights, layer, best, seconds, shared)
    del fp32, bf16
    gc.collect()
    return best


def int8_section(results: dict, keras_fp32, weights: str, layer: str, batch: int, seconds: float,
                 shared: Path) -> None:
    """OpenVINO fp32, bf16 and int8 beside Keras, at the same batch size; int8's agreement with fp32."""
    import tempfile as tmp

    from benchmarks import model_speed
    from imgsim.embed import openvino_backend
    from imgsim.embed.calibration import calibrate, int8_acceleration
    from imgsim.embed.model import ModelSpec, build_model

    spec = ModelSpec(layer=layer, weights=weights, precision="int8", backend="openvino")
    _, pixels = model_speed.shared_images(shared)
    calibration = pixels[::2][:140]  # the sample size the int8 issue measured with
    with tmp.TemporaryDirectory() as work:
        started = time.perf_counter()
        checksum, gate = calibrate(spec, weights, calibration, pixels[:128], work)
        calibration_seconds = round(time.perf_counter() - started, 1)
        int8 = openvino_backend.OpenVinoEmbedder(openvino_backend.load(work), spec.dim, "int8")
        fp32_ir = openvino_backend.convert(build_model(ModelSpec(layer=layer, weights=weights), weights))
        raw = results["raw_model"]
        for precision, embedder in (("fp32", openvino_backend.OpenVinoEmbedder(fp32_ir, spec.dim, "fp32")),
                                    ("bf16", openvino_backend.OpenVinoEmbedder(fp32_ir, spec.dim, "bf16")),
                                    ("int8", int8)):
            raw[f"openvino_{precision}"] = round(model_speed.raw_throughput(embedder, batch, seconds), 3)
            print(f"raw openvino {precision} batch {batch}: {raw[f'openvino_{precision}']} img/s", flush=True)
        results["int8"] = {"calibration_images": len(calibration), "calibration_seconds": calibration_seconds,
                           "gate": gate.to_dict(), "cpu_int8_instructions": int8_acceleration(),
                           "agreement": model_speed.agreement(keras_fp32, int8, shared)}
    print("int8:", results["int8"], flush=True)


def pipeline_section(results: dict, shared: Path, weights: str, layer: str, sizes: list[int], batch: int,
                     cache: Path, bf16_size: int) -> None:
    from benchmarks import catalogue, decode_speed, pipeline_speed

    paths = catalogue.build(shared, max(sizes), cache)
    results["decode"] = decode_speed.decode_ms(paths)
    print("decode:", results["decode"], flush=True)
    httpd, base = catalogue.serve(paths[0].parent)
    work = Path(tempfile.mkdtemp(prefix="imgsim-bench-"))
    try:
        manifest = catalogue.write_manifest(paths, base, work / "catalogue.csv")
        runs = []
        for size in sizes:
            run = pipeline_speed.run_pipeline(manifest, size, work / f"out-{size}", weights, layer, "fp32", batch)
            print("end to end:", run, flush=True)
            runs.append(run)
        results["end_to_end"] = runs
        small, middle, large = runs[0], runs[1], runs[-1]
        results["end_to_end_marginal_ips"] = round(pipeline_speed.marginal_throughput(small, middle), 3)
        results["peak_memory_ratio"] = round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)
        if bf16_size:
            bf16_runs = [pipeline_speed.run_pipeline(manifest, size, work / f"out-bf16-{size}", weights, layer,
                                                     "bf16", batch) for size in (sizes[0], bf16_size)]
            results["end_to_end_bf16"] = bf16_runs
            results["end_to_end_bf16_marginal_ips"] = round(pipeline_speed.marginal_throughput(*bf16_runs), 3)
            print("end to end bf16:", bf16_runs, flush=True)
        int8_sizes = (sizes[0], sizes[1])
        int8_runs = [pipeline_speed.run_pipeline(manifest, size, work / f"out-int8-{size}", weights, layer, "int8",
                                                 batch, ["--backend", "openvino", "--calibration-size", "128"])
                     for size in int8_sizes]
        results["end_to_end_int8"] = int8_runs
        # int8 against fp32 on the pipeline's own clock: both leave out start-up, int8 its calibration too
        results["end_to_end_int8_marginal_ips"] = round(
            pipeline_speed.marginal_throughput(*int8_runs, clock="pipeline_seconds"), 3)
        results["end_to_end_fp32_pipeline_marginal_ips"] = round(
            pipeline_speed.marginal_throughput(runs[0], runs[1], clock="pipeline_seconds"), 3)
        print("end to end int8:", int8_runs, flush=True)
    finally:
        httpd.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def index_section(results: dict, quick: bool) -> None:
    from benchmarks import index_speed
    from imgsim.index.searcher import IndexOptions

    cases = [(20_000, 512), (50_000, 512)] if quick else [(100_000, 512), (1_000_000, 512), (100_000, 4096)]
    out = []
    for n, dim in cases:
        row = index_speed.benchmark(n, dim)
        print("index:", row, flush=True)
        out.append(row)
        if n == max(c[0] for c in cases) and dim == 512:
            for reorder_type in ("bfloat16", "int8"):
                row = index_speed.benchmark(n, dim, IndexOptions(reorder_type=reorder_type))
                print("index:", row, flush=True)
                out.append(row)
        gc.collect()
    results["index"] = out


def sharded_section(results: dict, quick: bool) -> None:
    from benchmarks import sharded_speed

    n, dim, shards = (250_000, 32, 4) if quick else (2_000_000, 512, 8)
    work = Path(tempfile.mkdtemp(prefix="imgsim-bench-sharded-"))
    try:
        results["sharded"] = sharded_speed.benchmark(n, dim, shards, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def targets(results: dict) -> list[dict]:
    rows = []

    def check(name, value, goal, ok):
        rows.append({"target": name, "value": value, "goal": goal, "met": bool(ok)})

    raw = results.get("raw_model")
    if raw:
        ceiling = results["matmul_gflops"]["ceiling_images_per_second"]
        check("raw fp32 / FLOP ceiling", round(raw["fp32"] / ceiling, 3), ">= 0.8", raw["fp32"] / ceiling >= 0.8)
        check("raw bf16 / raw fp32", round(raw["bf16"] / raw["fp32"], 3), ">= 1.8", raw["bf16"] / raw["fp32"] >= 1.8)
        agreement = results["bf16_agreement"]
        check("bf16 vs fp32 mean cosine", agreement["mean_cosine"], ">= 0.99", agreement["mean_cosine"] >= 0.99)
        check("bf16 vs fp32 top-10 overlap", agreement["top10_overlap"], ">= 0.9", agreement["top10_overlap"] >= 0.9)
    if "int8" in results:
        a = results["int8"]["agreement"]
        check("int8 vs fp32 top-10 overlap", a["top10_overlap"], ">= 0.93", a["top10_overlap"] >= 0.93)
        gap = round(abs(a["precision_at_5"] - a["precision_at_5_reference"]), 4)
        check("int8 vs fp32 clip-art precision@5 difference", gap, "<= 0.01", gap <= 0.01)
    if "end_to_end_int8_marginal_ips" in results:
        ratio = results["end_to_end_int8_marginal_ips"] / results["end_to_end_fp32_pipeline_marginal_ips"]
        check("end-to-end int8 / end-to-end fp32", round(ratio, 3), ">= 3.5", ratio >= 3.5)
        if "end_to_end_marginal_ips" in results:
            ratio = results["end_to_end_marginal_ips"] / raw["fp32"]
            check("end-to-end / raw model (fp32)", round(ratio, 3), ">= 0.9", ratio >= 0.9)
    if "peak_memory_ratio" in results:
        check("peak memory, largest / smallest run", results["peak_memory_ratio"], "<= 1.10",
              results["peak_memory_ratio"] <= 1.10)
    sharded = results.get("sharded")
    if sharded:
        chosen = next(q for q in sharded["sharded"]["queries"]
                      if q["shards_searched"] == sharded["sharded"]["shards_to_search"])
        check(f"sharded {sharded['n']:,} x {sharded['dim']} recall@10", chosen["recall@10"], ">= 0.95",
              chosen["recall@10"] >= 0.95)
        ratio = sharded["sharded"]["worker_peak_rss_mb"] / sharded["one_searcher"]["peak_rss_mb"]
        check("sharded peak per worker / one searcher's", round(ratio, 3), "<= 0.5", ratio <= 0.5)
    for row in results.get("index", []):
        if row["n"] >= 1_000_000 and row["config"].get("reorder_type") == "float32":
            check("1M x 512 recall@10", row["recall@10"], ">= 0.95", row["recall@10"] >= 0.95)
            check("1M x 512 speed-up over brute force", row["speedup"], ">= 10", row["speedup"] >= 10)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that every part runs")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    parser.add_argument("--weights", default=None, help="default: the shared ImageNet notop weights")
    parser.add_argument("--layer", default="pool")
    parser.add_argument("--skip", action="append", default=[], choices=["model", "pipeline", "index", "sharded",
                                                                        "quality"])
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--sizes", default=None, help="end-to-end run sizes, e.g. 200,1000,2000")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the fastest raw one)")
    args = parser.parse_args(argv)
    shared = Path(args.shared)
    weights = args.weights or str(shared / "models" / "vgg16_imagenet_notop.weights.h5")
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "quick": args.quick, "layer": args.layer, "machine": describe_machine()}
    print("machine:", results["machine"], flush=True)
    batch = args.batch or 16
    if "model" not in args.skip:
        best = model_section(results, weights, args.layer, 5.0 if args.quick else 20.0, shared)
        batch = args.batch or best
    if "pipeline" not in args.skip:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
            [20, 60, 120] if args.quick else [200, 1000, 2000])
        pipeline_section(results, shared, weights, args.layer, sizes, batch, ROOT / "benchmarks" / ".cache",
                         bf16_size=0 if args.quick else 1000)
    if "index" not in args.skip:
        index_section(results, args.quick)
    if "sharded" not in args.skip:
        sharded_section(results, args.quick)
    if "quality" not in args.skip:
        from benchmarks import quality

        results["quality"] = quality.benchmark(shared, weights, layers=("pool",) if args.quick else ("pool", "gem",
                                               "pool45"))
    results["targets"] = targets(results)
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["date"].replace(":", "").replace("-", "")[:15]
    for name in (f"{stamp}{'-quick' if args.quick else ''}.json", "LATEST.json"):
        (out_dir / name).write_text(json.dumps(results, indent=2))
    print("\ntarget".ljust(42), "value".rjust(10), "goal".rjust(10), "met".rjust(5))
    for row in results["targets"]:
        print(f"{row['target']:<41} {row['value']!s:>10} {row['goal']:>10} {'yes' if row['met'] else 'NO':>5}")
    print(f"\nresults: {out_dir / 'LATEST.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
