"""A realistic catalogue for the end-to-end benchmark: unique JPEGs of 1000-3000 px.

Made from the shared photos and clip art (random crops, sizes and a slight
colour shift, so no two files are alike) and cached under benchmarks/.cache.
Served over HTTP by a threaded server on 127.0.0.1, as a museum CDN would.
"""
from __future__ import annotations

import csv
import functools
import http.server
import io
import os
import random
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageEnhance

VERSION = "v2"


def sources(shared: Path) -> list[Path]:
    """Photos and clip art alternating: museum catalogues are mostly photographs, which cost more
    to decode than flat drawings."""
    photos = sorted((shared / "data" / "photos").glob("*.jpg"))
    clipart = sorted((shared / "data" / "openclipart").glob("*.png"))
    return [p for pair in zip(clipart, (photos * len(clipart))[: len(clipart)]) for p in reversed(pair)]


def make_image(source: Path, seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.open(source)
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    img = img.convert("RGB")
    w, h = img.size
    scale = rng.uniform(0.7, 1.0)
    cw, ch = min(w, max(8, int(w * scale))), min(h, max(8, int(h * scale)))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((left, top, left + cw, top + ch))
    long_side = rng.randint(1000, 3000)
    factor = long_side / max(cw, ch)
    img = img.resize((max(1, round(cw * factor)), max(1, round(ch * factor))), Image.Resampling.BICUBIC)
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.85, 1.15))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def _write(args) -> None:
    source, seed, path = args
    if not os.path.exists(path):
        data = make_image(Path(source), seed)
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def build(shared: Path, count: int, cache: Path, workers: int = 2) -> list[Path]:
    """The first `count` catalogue images (created once, then reused)."""
    directory = cache / f"catalogue-{VERSION}"
    directory.mkdir(parents=True, exist_ok=True)
    pool = sources(shared)
    jobs = [(str(pool[i % len(pool)]), i, str(directory / f"{i:05d}.jpg")) for i in range(count)]
    with ProcessPoolExecutor(workers) as executor:
        list(executor.map(_write, jobs, chunksize=16))
    return [Path(path) for _, _, path in jobs]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def write_manifest(paths: list[Path], base_url: str, target: Path) -> Path:
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "url", "source"])
        for path in paths:
            writer.writerow([path.stem, f"{base_url}/{path.name}", "benchmark"])
    return target
