"""Decode + resize cost per image, with JPEG draft mode (imgsim's path) and without it."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgsim.embed.decode import DecodeConfig, decode_image


def full_decode(data: bytes) -> np.ndarray:
    """What decoding costs without draft mode: every pixel decoded, then resized."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((224, 224), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(img)


def decode_ms(paths: list[Path], limit: int = 200) -> dict:
    blobs = [p.read_bytes() for p in paths[:limit]]
    out = {"images": len(blobs), "mean_bytes": int(np.mean([len(b) for b in blobs]))}
    for name, fn in (("imgsim_ms", lambda b: decode_image(b, DecodeConfig())), ("no_draft_ms", full_decode)):
        started = time.perf_counter()
        for blob in blobs:
            fn(blob)
        out[name] = round((time.perf_counter() - started) * 1000 / len(blobs), 2)
    out["draft_speedup"] = round(out["no_draft_ms"] / out["imgsim_ms"], 2)
    return out
