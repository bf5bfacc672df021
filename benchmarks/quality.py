"""How good "similar" is, per layer and precision, on the shared labelled and unlabelled sets.

For each (layer, precision): the 280 labelled clip-art images are embedded, indexed
(imgsim.build_index, with the real model signature) and evaluated as `imgsim evaluate`
does: labelled retrieval on the clip art, and the near-duplicate benchmark on the 7
shared photos (7 seeded perturbed copies each). bf16 is also compared with fp32 on the
same images (mean cosine, top-10 neighbour overlap).
"""
from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import numpy as np

import imgsim
from imgsim.embed.decode import DecodeConfig, decode_image
from imgsim.embed.model import ARCHITECTURE, ModelSpec, load_embedder
from imgsim.embed.signature import ModelSignature
from imgsim.embed.weights import resolve
from imgsim.quality.evaluation import evaluate_index
from imgsim.storage import ObjectStore


def embed(paths: list[Path], embedder, batch: int = 20) -> np.ndarray:
    out = []
    for start in range(0, len(paths), batch):
        pixels = np.stack([decode_image(p.read_bytes(), DecodeConfig()).pixels for p in paths[start:start + batch]])
        out.append(embedder(pixels)[0])
    return np.concatenate(out)


def top10_overlap(a: np.ndarray, b: np.ndarray) -> float:
    def top(v):
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(top(a), top(b))]))


def benchmark(shared: Path, weights: str, layers=("pool", "gem", "pool45"), precisions=("fp32", "bf16")) -> dict:
    store = ObjectStore()
    root = shared / "data" / "openclipart"
    labels = {r["file"]: r["label"] for r in csv.DictReader(open(root / "labels.csv"))}
    names = sorted(labels)
    paths = [root / n for n in names]
    photos = [(p.name, p.read_bytes()) for p in sorted((shared / "data" / "photos").glob("*.jpg"))]
    checksum = resolve(weights, False, store).checksum
    rows, vectors = [], {}
    for layer in layers:
        for precision in precisions:
            spec = ModelSpec(layer=layer, weights=weights, precision=precision)
            started = time.perf_counter()
            vectors[layer, precision] = v = embed(paths, load_embedder(spec, weights))
            signature = ModelSignature(ARCHITECTURE, layer, spec.dim, weights, checksum,
                                       DecodeConfig().preprocessing_id, precision)
            with tempfile.TemporaryDirectory() as work:
                imgsim.build_index(work + "/out", ids=names, vectors=v, signature=signature, run_id="q")
                result = evaluate_index(store, work + "/out", labels=labels, originals=photos,
                                        cache_dir=work + "/cache")
            near = result["near_duplicates"]
            row = {"layer": layer, "precision": precision, "dim": spec.dim,
                   **{k: round(result[k], 4) for k in ("precision_at_1", "precision_at_5", "precision_at_10",
                                                      "map_at_10")},
                   "near_duplicate_recall_at_1": round(near["near_duplicate_recall_at_1"], 4),
                   "pairs_at_0.95": {"precision": near["precision"], "recall": near["recall"]},
                   "recommended_threshold": near["recommended_threshold"],
                   "at_recommended": near["at_recommended"],
                   "seconds": round(time.perf_counter() - started, 1)}
            print("quality:", row, flush=True)
            rows.append(row)
    agreement = {}
    for layer in layers:
        if (layer, "fp32") in vectors and (layer, "bf16") in vectors:
            a, b = vectors[layer, "fp32"], vectors[layer, "bf16"]
            agreement[layer] = {"mean_cosine": round(float(np.mean(np.sum(a * b, axis=1))), 6),
                                "top10_overlap": round(top10_overlap(a, b), 4)}
    return {"rows": rows, "bf16_vs_fp32": agreement, "labelled": len(names), "photos": len(photos)}
