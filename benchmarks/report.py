"""Render a results JSON of benchmarks.run as the Markdown tables of BENCHMARKS.md.

    .venv/bin/python -m benchmarks.report benchmarks/results/LATEST.json
"""
from __future__ import annotations

import json
import sys


def render(r: dict) -> str:
    m = r["machine"]
    out = [f"Measured {r['date']} on: {m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_features'])}), "
           f"{m['memory_gb']} GiB, GPUs: {', '.join(m['gpus']) or 'none'}; Python {m['python']}, "
           f"TensorFlow {m['tensorflow']}; layer `{r['layer']}`.", ""]
    out += ["| target | measured | goal | met |", "|---|---|---|---|"]
    out += [f"| {t['target']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else '**no**'} |" for t in r["targets"]]
    if "raw_model" in r:
        raw, mm = r["raw_model"], r["matmul_gflops"]
        out += ["", "| model and machine | value |", "|---|---|",
                f"| fp32 matrix multiply (best of numpy, TensorFlow) | {mm['best']} GFLOP/s |",
                f"| ceiling: FLOP/s ÷ 30.9 GFLOP per image | {mm['ceiling_images_per_second']} img/s |"]
        out += [f"| raw model fp32, batch {b} | {raw[f'fp32_batch{b}']} img/s |" for b in (8, 16, 32)]
        out += [f"| raw model bf16, batch {raw['best_batch']} | {raw['bf16']} img/s |"]
        a = r["bf16_agreement"]
        out += [f"| bf16 vs fp32 on {a['images']} shared images | mean cosine {a['mean_cosine']}, "
                f"min {a['min_cosine']}, top-10 overlap {a['top10_overlap']} |"]
        if "openvino_int8" in raw:
            out += [f"| raw OpenVINO {p}, batch {raw['best_batch']} | {raw[f'openvino_{p}']} img/s "
                    f"({raw[f'openvino_{p}'] / raw['fp32']:.2f}× Keras fp32) |" for p in ("fp32", "bf16", "int8")]
    if "int8" in r:
        i = r["int8"]
        a = i["agreement"]
        out += [f"| int8 calibration ({i['calibration_images']} images) | {i['calibration_seconds']} s; gate on "
                f"{i['gate']['images']} images: top-10 overlap {i['gate']['top10_overlap']} |",
                f"| int8 vs Keras fp32 on {a['images']} shared images | mean cosine {a['mean_cosine']}, min "
                f"{a['min_cosine']}, top-10 overlap {a['top10_overlap']}; clip-art precision@5 {a['precision_at_5']} "
                f"(fp32 {a['precision_at_5_reference']}) |",
                f"| CPU int8 instructions | {', '.join(i['cpu_int8_instructions']) or 'none'} |"]
    if "decode" in r:
        d = r["decode"]
        out += [f"| decode + resize, {d['images']} catalogue JPEGs (mean {d['mean_bytes'] // 1024} KiB) | "
                f"{d['imgsim_ms']} ms with draft mode, {d['no_draft_ms']} ms without ({d['draft_speedup']}×) |"]
    if "end_to_end" in r:
        out += ["", "| end-to-end run (DirectRunner, HTTP catalogue) | images/s (whole process) | pipeline s | "
                "process s | peak RSS MiB |", "|---|---|---|---|---|"]
        for label, runs in (("fp32", r["end_to_end"]), ("bf16", r.get("end_to_end_bf16", [])),
                            ("int8 (OpenVINO)", r.get("end_to_end_int8", []))):
            out += [f"| {label}, {e['embedded']} images | {e['images_per_second']} | {e['pipeline_seconds']} | "
                    f"{e['process_seconds']} | {e['peak_rss_mb']} |" for e in runs]
        out += ["", f"Marginal end-to-end throughput (fixed start-up costs cancel): fp32 "
                f"{r['end_to_end_marginal_ips']} img/s"
                + (f", bf16 {r['end_to_end_bf16_marginal_ips']} img/s" if "end_to_end_bf16_marginal_ips" in r else "")
                + (f", int8 {r['end_to_end_int8_marginal_ips']} img/s" if "end_to_end_int8_marginal_ips" in r else "")
                + "."]
    if "index" in r:
        out += ["", "| index | config | build s | QPS | brute-force QPS | speed-up | recall@10 | size MiB (raw vectors) |",
                "|---|---|---|---|---|---|---|---|"]
        for i in r["index"]:
            c = i["config"]
            desc = c["mode"] + (f", {c['num_leaves']} leaves, search {c['leaves_to_search']}" if "num_leaves" in c else "")
            desc += f", reorder {c.get('reorder')} {c.get('reorder_type')}" if "reorder" in c else ""
            out += [f"| {i['n']:,} × {i['dim']} | {desc} | {i['build_seconds']} | {i['qps']} | {i['brute_force_qps']} | "
                    f"{i['speedup']}× | {i['recall@10']} | {i['serialised_mb']} ({i['raw_vectors_mb']}) |"]
    if "quality" in r:
        q = r["quality"]
        out += ["", "| layer | precision | dim | p@1 | p@5 | p@10 | mAP@10 | near-dup recall@1 | pairs at 0.95: "
                "precision / recall | recommended threshold (precision / recall) |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for row in q["rows"]:
            at, rec = row["pairs_at_0.95"], row["at_recommended"]
            out += [f"| `{row['layer']}` | {row['precision']} | {row['dim']} | {row['precision_at_1']} | "
                    f"{row['precision_at_5']} | {row['precision_at_10']} | {row['map_at_10']} | "
                    f"{row['near_duplicate_recall_at_1']} | {at['precision']} / {at['recall']} | "
                    f"{row['recommended_threshold']} ({rec['precision']} / {rec['recall']}) |"]
        out += ["", "| layer | bf16 vs fp32: mean cosine | top-10 overlap |", "|---|---|---|"]
        out += [f"| `{layer}` | {a['mean_cosine']} | {a['top10_overlap']} |" for layer, a in q["bf16_vs_fp32"].items()]
    if "sharded" in r:
        out += ["", render_sharded(r["sharded"])]
    return "\n".join(out)


def render_sharded(r: dict) -> str:
    """The tables of a benchmarks.sharded_speed result."""
    one, sh = r["one_searcher"], r["sharded"]
    c = one["config"]
    queries = {q["shards_searched"]: q for q in sh["queries"]}
    chosen = queries[sh["shards_to_search"]]
    out = [f"| {r['n']:,} × {r['dim']} ({r['raw_vectors_mb']:,} MiB of vectors) | one searcher | "
           f"{r['shards']} shards, two worker processes |", "|---|---|---|",
           f"| configuration | {c['mode']}, {c.get('num_leaves')} leaves, search {c.get('leaves_to_search')} | "
           f"{', '.join(sorted({json.loads(x)['mode'] for x in sh['shard_configs']}))} per shard, "
           f"{min(sh['shard_counts']):,}–{max(sh['shard_counts']):,} items, a query searches "
           f"{sh['shards_to_search']} |",
           f"| build s | {one['build_seconds']} | {sh['shards_built_seconds']} (all shards built and recall measured; "
           f"slowest shard {sh['shard_build_seconds']['max']}, sum {sh['shard_build_seconds']['sum']}) |",
           f"| with neighbours and groups of every item, published | — | {sh['published_seconds']} |",
           f"| queries per second (2,000 held out, batched) | {one['qps']} | {chosen['qps']}"
           + "".join(f"; searching {q['shards_searched']}: {q['qps']}" for s, q in queries.items()
                     if s != sh["shards_to_search"]) + " |",
           f"| recall@10 (held out, brute force over all) | {one['recall@10']} | {chosen['recall@10']}"
           + "".join(f"; searching {q['shards_searched']}: {q['recall@10']}" for s, q in queries.items()
                     if s != sh["shards_to_search"]) + " |",
           f"| peak resident memory MiB | {one['peak_rss_mb']:,} (the building process) | "
           f"{sh['worker_peak_rss_mb']:,} per worker; {sh['driver_peak_rss_mb']:,} the DirectRunner driver |",
           "", f"Recall@10 measured while building (its own vectors), by shards searched: {sh['recall_curve']}."]
    return "\n".join(out)


if __name__ == "__main__":
    result = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/LATEST.json"))
    print(render_sharded(result) if "one_searcher" in result else render(result))
