"""Model throughput, the machine's FLOP ceiling, and bf16 against fp32."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

VGG16_GFLOP = 30.9  # per 224x224 image (multiply-adds counted as two operations)


def matmul_gflops(n: int = 4096, seconds: float = 3.0) -> dict:
    """Measured single-precision matrix multiply throughput, numpy and TensorFlow; the best counts."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    results = {}
    ta, tb = tf.constant(a), tf.constant(b)
    for name, fn in (("numpy", lambda: a @ b), ("tensorflow", lambda: tf.linalg.matmul(ta, tb).numpy())):
        fn()
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            fn()
            runs += 1
        elapsed = time.perf_counter() - started
        results[name] = round(2 * n ** 3 * runs / elapsed / 1e9, 1)
    results["best"] = max(results.values())
    results["ceiling_images_per_second"] = round(results["best"] / VGG16_GFLOP, 2)
    return results


def raw_throughput(embedder, batch_size: int, seconds: float = 20.0) -> float:
    """Images per second of the model alone on preprocessed tensors already in memory."""
    from imgsim.embed.decode import vgg16_preprocess

    pixels = np.random.default_rng(1).integers(0, 256, (batch_size, 224, 224, 3), dtype=np.uint8)
    x = vgg16_preprocess(pixels)
    embedder.forward(x)  # warm-up (tracing, oneDNN kernel selection)
    embedder.forward(x)
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.forward(x)
        images += batch_size
    return images / (time.perf_counter() - started)


def shared_images(shared: Path) -> tuple[list[Path], np.ndarray]:
    """The shared photos and clip art, decoded as the pipeline decodes them."""
    from imgsim.embed.decode import decode_image

    files = sorted((shared / "data" / "photos").glob("*.jpg")) + sorted((shared / "data" / "openclipart").glob("*.png"))
    return files, np.stack([decode_image(f.read_bytes()).pixels for f in files])


def embed_all(embedder, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([embedder(pixels[i:i + 32])[0] for i in range(0, len(pixels), 32)])


def agreement(reference, candidate, shared: Path, k: int = 10) -> dict:
    """Mean cosine between two models' vectors of the shared images, top-k neighbour overlap, and
    precision@5 of same-label neighbours on the labelled clip art for both."""
    import csv

    files, pixels = shared_images(shared)
    a, b = embed_all(reference, pixels), embed_all(candidate, pixels)
    cosine = np.einsum("ij,ij->i", a, b)
    overlap = []
    for vectors in (a, b):
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        overlap.append(np.argsort(-sims, axis=1)[:, :k])
    shared_neighbours = [len(set(x) & set(y)) / k for x, y in zip(*overlap)]
    labels = {r["file"]: r["label"] for r in csv.DictReader(open(shared / "data" / "openclipart" / "labels.csv"))}
    labelled = np.array([f.name in labels for f in files])
    names = np.array([labels.get(f.name, "") for f in files])[labelled]

    def precision_at_5(vectors):
        v = vectors[labelled]
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return round(float((names[np.argsort(-sims, axis=1)[:, :5]] == names[:, None]).mean()), 4)

    return {"images": len(files), "mean_cosine": round(float(cosine.mean()), 5),
            "min_cosine": round(float(cosine.min()), 5), f"top{k}_overlap": round(float(np.mean(shared_neighbours)), 4),
            "precision_at_5_reference": precision_at_5(a), "precision_at_5": precision_at_5(b)}
