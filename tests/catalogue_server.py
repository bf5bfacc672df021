"""A real HTTP server on 127.0.0.1 for the tests: images, API pages and injected faults.

Each route is a function that writes the whole response itself, so a route
can misbehave in any way a real server does (reset the connection, trickle,
lie about Content-Length, never answer). Every request is logged for
assertions (hits per path, headers, concurrency).
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import parse_qs, urlsplit

Route = Callable[["_Handler"], None]


class _QuietServer(ThreadingHTTPServer):
    """Clients that hang up mid-request (a deadline, a reset) are normal here, not errors to print."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class CatalogueServer:
    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.log: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = threading.Event()
        self.not_modified: dict[str, int] = {}  # 304 answers per path
        self.bodies_sent: dict[str, int] = {}  # full bodies per static path
        self.file_time = time.time()
        self._lock = threading.Lock()
        server = self

        class Handler(_Handler):
            catalogue = server

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "CatalogueServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def route(self, path: str, fn: Route) -> str:
        self.routes[path] = fn
        return self.url(path)

    def hits(self, path: str) -> int:
        with self._lock:
            return sum(1 for entry in self.log if entry["path"] == path)

    def requests_to(self, path: str) -> list[dict]:
        with self._lock:
            return [entry for entry in self.log if entry["path"] == path]

    # route builders -------------------------------------------------------------------------
    def file(self, path: str, data: bytes, content_type: str = "image/jpeg", validators: bool = True,
             **headers) -> str:
        """A static file; like real servers, with an ETag and Last-Modified, answering 304 to either."""
        etag = '"%s"' % hashlib.sha256(data).hexdigest()[:16]
        modified = email.utils.formatdate(self.file_time, usegmt=True)

        def respond(h):
            extra = dict(headers)
            if validators:
                extra.update({"ETag": etag, "Last-Modified": modified})
                if h.headers.get("If-None-Match") == etag or (
                        "If-None-Match" not in h.headers and h.headers.get("If-Modified-Since") == modified):
                    self.not_modified[path] = self.not_modified.get(path, 0) + 1
                    h.send_response(304)
                    for name, value in extra.items():
                        h.send_header(name, value)
                    h.send_header("Content-Length", "0")
                    h.end_headers()
                    return
            self.bodies_sent[path] = self.bodies_sent.get(path, 0) + 1
            h.send(200, data, content_type, extra)

        return self.route(path, respond)

    def status(self, path: str, code: int, body: bytes = b"", **headers) -> str:
        return self.route(path, lambda h: h.send(code, body, "text/plain", headers))

    def sequence(self, path: str, responses: list[Route]) -> str:
        """The n-th request gets responses[n] (the last one repeats)."""
        counter = {"n": 0}
        lock = threading.Lock()

        def respond(h):
            with lock:
                n = counter["n"]
                counter["n"] += 1
            responses[min(n, len(responses) - 1)](h)

        return self.route(path, respond)


class _Handler(BaseHTTPRequestHandler):
    catalogue: CatalogueServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.catalogue
        parts = urlsplit(self.path)
        entry = {"path": parts.path, "query": parse_qs(parts.query), "headers": dict(self.headers),
                 "time": time.monotonic()}
        with server._lock:
            server.log.append(entry)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            route = server.routes.get(parts.path)
            if route is None:
                self.send(404, b"not found", "text/plain")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with server._lock:
                server.in_flight -= 1

    @property
    def query(self) -> dict:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def send(self, code: int, body: bytes, content_type: str = "application/octet-stream",
             headers: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name.replace("_", "-"), str(value))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, payload) -> None:
        self.send(200, json.dumps(payload).encode(), "application/json")

    def reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed server would."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def hang(self, seconds: float = 60.0) -> None:
        """Accept the request and never answer (until the server stops)."""
        self.catalogue.stopping.wait(seconds)
        self.close_connection = True

    def trickle(self, chunk: bytes = b"x", every: float = 0.2, total: int = 10_000) -> None:
        """Headers at once, then the body one chunk at a time."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(total))
        self.end_headers()
        sent = 0
        while sent < total and not self.catalogue.stopping.is_set():
            self.wfile.write(chunk)
            self.wfile.flush()
            sent += len(chunk)
            time.sleep(every)
        self.close_connection = True

    def trickle_head(self, head: bytes, every: float = 0.5, sent_at_once: bytes = b"") -> None:
        """Send `sent_at_once`, then `head` one byte at a time, flushing each: a status line or headers
        that arrive slower than any deadline but always inside the read timeout."""
        self.wfile.write(sent_at_once)
        self.wfile.flush()
        for i in range(len(head)):
            if self.catalogue.stopping.wait(every):
                break
            self.wfile.write(head[i:i + 1])
            self.wfile.flush()
        self.close_connection = True

    def raw(self, response: bytes) -> None:
        """Write these bytes as the whole response and close: for responses that break HTTP."""
        self.wfile.write(response)
        self.wfile.flush()
        self.close_connection = True

    def chunked(self, data: bytes, content_type: str = "image/jpeg", piece: int = 65536) -> None:
        """A body without Content-Length (chunked transfer encoding)."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i in range(0, len(data), piece):
                part = data[i:i + piece]
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def redirect(self, location: str, code: int = 302) -> None:
        self.send(code, b"", "text/plain", {"Location": location})
