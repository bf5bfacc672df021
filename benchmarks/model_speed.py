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


def bf16_agreement(fp32, bf16, shared: Path, k: int = 10) -> dict:
    """Mean cosine between fp32 and bf16 vectors of the shared images, and top-k neighbour overlap."""
    from imgsim.embed.decode import decode_image

    files = sorted((shared / "data" / "photos").glob("*.jpg")) + sorted((shared / "data" / "openclipart").glob("*.png"))
    pixels = np.stack([decode_image(f.read_bytes()).pixels for f in files])
    a = np.concatenate([fp32(pixels[i:i + 32])[0] for i in range(0, len(pixels), 32)])
    b = np.concatenate([bf16(pixels[i:i + 32])[0] for i in range(0, len(pixels), 32)])
    cosine = np.einsum("ij,ij->i", a, b)
    overlap = []
    for vectors in (a, b):
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        overlap.append(np.argsort(-sims, axis=1)[:, :k])
    shared_neighbours = [len(set(x) & set(y)) / k for x, y in zip(*overlap)]
    return {"images": len(files), "mean_cosine": round(float(cosine.mean()), 5),
            "min_cosine": round(float(cosine.min()), 5), f"top{k}_overlap": round(float(np.mean(shared_neighbours)), 4)}
