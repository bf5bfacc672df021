"""Bytes and wall time per image: IIIF-sized derivatives against full downloads of the same images.

    .venv/bin/python -m benchmarks.iiif_bytes [--images 120]

The end-to-end catalogue (benchmarks/catalogue.py: unique JPEGs of 1000-3000 px) is served twice on
127.0.0.1: by the `iiif` reference implementation's server (Image API 3.0, level 2, PIL), behind a
manifest whose canvases carry its service, and as plain files. `imgsim run` (fp32, `pool`, defaults
otherwise) reads `--input iiif:MANIFEST` in one run, which asks each image's info.json and a
derivative just large enough, and a CSV of the full files' URLs in the other. Each server sits
behind a counting proxy, so bytes are what crossed the wire (bodies; info.json included). Wall time
is the run's own clock (`wall_seconds`, from the end of preflight). The servers share the 2 cores
with the run: the IIIF server's resizing is paid here too, as a museum's server would pay it.
Writes benchmarks/results/iiif-bytes-DATE.json.
"""
from __future__ import annotations

import argparse
import datetime
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks import catalogue

ROOT = Path(__file__).resolve().parents[1]


class CountingProxy:
    """Forwards GETs to `upstream`, counting the response bodies' bytes and the requests."""

    def __init__(self, upstream: str, port: int = 0):
        self.bytes = 0
        self.requests = 0
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    with urllib.request.urlopen(upstream + self.path, timeout=60) as answer:
                        status, body, kind = answer.status, answer.read(), answer.headers.get("Content-Type")
                except urllib.error.HTTPError as e:
                    status, body, kind = e.code, e.read(), e.headers.get("Content-Type")
                with lock:
                    proxy.bytes += len(body)
                    proxy.requests += 1
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.bytes = self.requests = 0

    def stop(self) -> None:
        self.server.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iiif_server(images: Path, work: Path) -> tuple[subprocess.Popen, CountingProxy]:
    """The reference server listening on an app port, announcing the proxy's address in info.json."""
    app_port, public_port = free_port(), free_port()
    log = open(work / "iiif-server.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "iiif_testserver.py"), "--host", "127.0.0.1",
                               "--port", str(public_port), "--app-host", "127.0.0.1", "--app-port", str(app_port),
                               "--image-dir", str(images), "--api-versions", "3.0", "--manipulators", "pil", "-q"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=work)
    app = f"http://127.0.0.1:{app_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{app}/3.0_pil/{next(images.iterdir()).stem}/info.json", timeout=2):
                break
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the IIIF server did not start: " + (work / "iiif-server.log").read_text()[-2000:])
            time.sleep(0.2)
    return server, CountingProxy(app, public_port)  # on the port info.json announces


def manifest_v3(base: str, paths: list[Path]) -> dict:
    """A Presentation 3.0 manifest: one canvas per image, its body the full image with the service."""
    canvases = []
    for path in paths:
        service = f"{base}/3.0_pil/{path.stem}"
        canvas = f"{base}/canvas/{path.stem}"
        canvases.append({
            "id": canvas, "type": "Canvas", "label": {"none": [path.stem]}, "width": 1000, "height": 1000,
            "items": [{"id": canvas + "/page", "type": "AnnotationPage", "items": [{
                "id": canvas + "/image", "type": "Annotation", "motivation": "painting", "target": canvas,
                "body": {"id": f"{service}/full/max/0/default.jpg", "type": "Image", "format": "image/jpeg",
                         "service": [{"id": service, "type": "ImageService3", "profile": "level2"}]}}]}]})
    return {"@context": "http://iiif.io/api/presentation/3/context.json", "id": f"{base}/manifest.json",
            "type": "Manifest", "label": {"en": ["imgsim benchmark catalogue"]}, "items": canvases}


def run(input_arg: str, output: Path, weights: str) -> dict:
    cmd = [sys.executable, "-m", "imgsim", "run", "--input", input_arg, "--output", str(output), "--run-id", "b",
           "--weights", weights, "--layer", "pool", "--allow-private-addresses", "--progress-interval", "0",
           "--max-requests-per-second-per-host", "0", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"imgsim run failed: {done.stderr[-2000:]}")
    summary = json.loads((output / "runs" / "b" / "summary.json").read_text())
    return {"embedded": summary["counts"]["embedded"], "failed": summary["counts"]["failed"],
            "seconds": summary["wall_seconds"]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"))
    args = parser.parse_args(argv)
    shared = Path(args.shared)
    weights = str(shared / "models" / "vgg16_imagenet_notop.weights.h5")
    paths = catalogue.build(shared, args.images, ROOT / "benchmarks" / ".cache")
    results = {}
    with tempfile.TemporaryDirectory(prefix="imgsim-iiif-bytes-") as tmp:
        work = Path(tmp)
        images = work / "img"
        images.mkdir()
        for path in paths:
            shutil.copy(path, images / path.name)
        full = sum(p.stat().st_size for p in paths)

        server, proxy = iiif_server(images, work)
        try:
            (work / "manifest.json").write_text(json.dumps(manifest_v3(proxy.url, paths)))
            results["iiif"] = run(f"iiif:{work / 'manifest.json'}", work / "out-iiif", weights)
            results["iiif"].update(bytes=proxy.bytes, requests=proxy.requests)
        finally:
            proxy.stop()
            server.terminate()
            server.wait(10)

        static, static_url = catalogue.serve(images)
        plain = CountingProxy(static_url)
        try:
            csv_path = catalogue.write_manifest(paths, plain.url, work / "full.csv")
            results["full"] = run(str(csv_path), work / "out-full", weights)
            results["full"].update(bytes=plain.bytes, requests=plain.requests)
        finally:
            plain.stop()
            static.shutdown()
    for name, row in results.items():
        row["bytes_per_image"] = round(row["bytes"] / max(1, row["embedded"]))
        row["seconds_per_image"] = round(row["seconds"] / max(1, row["embedded"]), 4)
        print(name, json.dumps(row), flush=True)
    out = {"images": len(paths), "catalogue_bytes": full, "runs": results,
           "bytes_ratio": round(results["full"]["bytes"] / max(1, results["iiif"]["bytes"]), 2),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.makedirs(ROOT / "benchmarks" / "results", exist_ok=True)
    path = ROOT / "benchmarks" / "results" / f"iiif-bytes-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(out, indent=1))
    print(path)
    return out


if __name__ == "__main__":
    main()
