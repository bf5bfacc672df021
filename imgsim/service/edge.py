"""The service's edge for the open internet: what a request must be before the app sees it.

- Host: one of --allowed-hosts (default: the bind address, localhost, 127.0.0.1, ::1; `*` any),
  else 400: a page on another site that rebinds its DNS name to this service cannot read it.
- Origin: a POST from a page of another origin (a form any web page can submit) is refused, 403,
  unless --cors-origin allows that origin; CORS headers are sent only for those origins.
- Security headers on every answer: Content-Security-Policy (the explorer's: its own scripts and
  styles, images from anywhere for originals, no frames), X-Content-Type-Options, Referrer-Policy,
  X-Frame-Options.
- Headers within --header-timeout of the connection (or of the previous answer on a kept-alive
  one), else the connection is closed: 300 half-sent requests no longer hold 300 connections.
- Bodies at --min-body-rate-kb after a grace period, and no pause longer than the header timeout,
  else 408; and no longer than the upload cap, else 413, as they arrive (BodyLimit).
Every refusal is JSON: {"error", "status"}.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Optional
from urllib.parse import urlsplit

from uvicorn.protocols.http.h11_impl import H11Protocol

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
BODY_GRACE_SECONDS = 3.0
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: "
                           "https: http:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]


@dataclasses.dataclass(frozen=True)
class EdgeSettings:
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS  # "*": any
    cors_origins: tuple[str, ...] = ()
    header_timeout: float = 10.0
    min_body_rate: float = 8 * 1024  # bytes a second, after BODY_GRACE_SECONDS

    @classmethod
    def for_address(cls, host: str, allowed: tuple[str, ...] = (), **options) -> "EdgeSettings":
        """The default allowed hosts for a service bound to host, plus those given."""
        hosts = tuple(dict.fromkeys([*(h.lower() for h in allowed), *(() if host in ("0.0.0.0", "::") else
                                                                        (host.lower(),)), *LOCAL_HOSTS]))
        return cls(allowed_hosts=hosts, **options)

    def allows_host(self, header: Optional[str]) -> bool:
        if "*" in self.allowed_hosts:
            return True
        return header is not None and host_name(header) in self.allowed_hosts

    def same_site(self, origin: str, host_header: Optional[str]) -> bool:
        """Whether an Origin header names this service itself (or an allowed CORS origin)."""
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        netloc = urlsplit(origin).netloc
        return bool(netloc) and host_header is not None and netloc.lower() == host_header.lower()


def host_name(header: str) -> str:
    """The host of a Host header, without its port, lower case ([::1]:8000 -> ::1)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def error_response(status: int, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _send_error(send, status: int, message: str, extra_headers=()) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS, *extra_headers]})
    await send({"type": "http.response.body", "body": body})


class Edge:
    """ASGI middleware: Host and Origin checks, CORS for the allowed origins, security headers; and,
    once `draining` is set (a worker about to stop), `Connection: close` on every answer, so clients
    leave for the workers that replace it instead of reusing a connection it is closing."""

    def __init__(self, app, settings: EdgeSettings, draining=None):
        self.app = app
        self.settings = settings
        self.draining = draining

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        host = headers.get("host")
        if not self.settings.allows_host(host):
            return await _send_error(send, 400, f"the Host {host!r} is not one this service answers to "
                                                "(--allowed-hosts)")
        origin = headers.get("origin")
        cors = []
        if origin and (origin in self.settings.cors_origins or "*" in self.settings.cors_origins):
            cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
            if scope["method"] == "OPTIONS":
                await send({"type": "http.response.start", "status": 204, "headers": [
                    *cors, (b"access-control-allow-methods", b"GET, POST"),
                    (b"access-control-allow-headers", b"content-type"), (b"access-control-max-age", b"600")]})
                return await send({"type": "http.response.body", "body": b""})
        if scope["method"] == "POST" and origin and not self.settings.same_site(origin, host):
            return await _send_error(send, 403, f"a POST from another origin ({origin}) is refused; --cors-origin "
                                                "allows one")

        async def secured(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                closing = [(b"connection", b"close")] if self.draining is not None and self.draining.is_set() else []
                message = {**message, "headers": [*message.get("headers", []),
                                                  *[(k, v) for k, v in SECURITY_HEADERS + cors + closing
                                                    if k not in names]]}
            await send(message)

        await self.app(scope, receive, secured)


class BodyLimit:
    """ASGI middleware: a request body to `paths` longer than `limit` bytes is answered 413 as soon as
    it is known (Content-Length, or while it streams), one slower than min_rate (after a grace) or
    pausing longer than `idle` seconds 408, before anything parses it."""

    def __init__(self, app, limit: int, paths: tuple[str, ...], min_rate: float, idle: float):
        self.app = app
        self.limit = limit
        self.paths = paths
        self.min_rate = min_rate
        self.idle = idle

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, f"the request body is larger than {self.limit} bytes")
        seen = 0
        started = time.monotonic()
        answered = False

        async def limited_receive():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), timeout=self.idle)
            except asyncio.TimeoutError:
                raise _Refused(408, f"the request body paused for more than {self.idle:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _Refused(413, f"the request body is larger than {self.limit} bytes")
                elapsed = time.monotonic() - started
                if message.get("more_body") and elapsed > BODY_GRACE_SECONDS and seen / elapsed < self.min_rate:
                    raise _Refused(408, f"the request body arrives slower than {self.min_rate / 1024:g} KB/s")
            return message

        async def tracking_send(message):
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _Refused as e:
            if not answered:
                await _send_error(send, e.status, e.message)


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def guarded_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within
    header_timeout seconds of its opening or of its previous answer (uvicorn has no such limit)."""

    class HeaderTimeoutH11(H11Protocol):
        _headers_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def handle_events(self):
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # headers complete: the app has the request

        def on_response_complete(self):
            super().on_response_complete()  # may start a pipelined request (handle_events)
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _arm(self):
            self._disarm()
            self._headers_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _disarm(self):
            if self._headers_timer is not None:
                self._headers_timer.cancel()
                self._headers_timer = None

        def _headers_late(self):
            self._headers_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11
