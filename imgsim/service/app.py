"""The HTTP service over a published index (FastAPI), for downstream apps and the explorer.

    GET  /healthz, /api/healthz          {"ok", "run_id", "count", "search", "filters", "follows_latest",
                                          "pending_run_id", "refresh_error", "checked_at"}
    GET  /api/similar/{id}?k=10          the k items most like id, best first (rank 1; itself left out
                                         unless include_self=true, then rank 0); order=least: least like it
    GET  /api/items/{id}                 an item's metadata and its precomputed neighbours
    POST /api/search?k=10                an uploaded image (multipart field `image`), or an image URL
                                         (JSON `url`, or a multipart field), embedded with the index's model
    POST /api/recommend                  JSON {"positive": [ids], "negative": [ids], "k": 10}: more like
                                         these and unlike those (never the examples themselves)
    GET  /api/outliers?k=50              the most isolated items, most first
    GET  /api/docs                       the endpoints, from the OpenAPI document (no CDN)
    GET  /                               the explorer (static files) of the run the API answers from

Every query takes filter=COLUMN:VALUE (repeatable; a column's values OR-ed, columns AND-ed) and
range=COLUMN:LOW..HIGH (numbers or ISO dates, either end open); /api/recommend also takes them as
JSON lists "filter" and "range". An unknown column or a malformed value is a 400 naming it.

Every request is answered by the index the follower (imgsim.index.follower) serves when it
starts, to its end, so a new run swapped in meanwhile fails no request. The edge, for the open
internet (imgsim.service.edge): Host must be one of --allowed-hosts; no CORS unless
--cors-origin; security headers on every answer; POSTs only as multipart or JSON and never from
another origin's page. A search decodes an untrusted image and runs VGG16, the most expensive
thing a request can ask for: the body is cut off past --max-upload-mb, and at a minimum rate,
while it is received; an image with more pixels than --max-image-pixels is refused from its
header, and decodes reserve the pipeline's per-process decode budget; at most
--max-concurrent-searches run the model at once (others are answered 503 at once rather than
queued); a URL is fetched before that, under its own small limit and --url-deadline, by the
pipeline's Fetcher (the address guard, the byte cap), so a server that trickles cannot hold the
model's slots. Every error is JSON: {"error": message, "status": code}.
"""
from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import threading
from typing import Optional

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from imgsim.embed.memory import DecodeBudget
from imgsim.embed.reproduce import ModelMismatch
from imgsim.explorer import site_format as fmt
from imgsim.failures import StageError
from imgsim.fetch.http import FetchConfig, Fetcher
from imgsim.index.filtered import ORDERS
from imgsim.index.filters import Filter, FilterError
from imgsim.index.follower import IndexFollower
from imgsim.service.edge import BodyLimit, Edge, EdgeSettings, error_response

_LOG = logging.getLogger("imgsim.service")
MAX_K = 1000
ORDER_PATTERN = "^(" + "|".join(ORDERS) + ")$"
# What a failed image costs the caller: their image is bad (422), too big (413), or not reachable (502).
_STATUS_OF_REASON = {"too_large": 413, "decompression_bomb": 413, "blocked_address": 400, "invalid_url": 400,
                     "unsupported_scheme": 400, "dns_error": 502, "connection_error": 502, "timeout": 504,
                     "deadline_exceeded": 504, "http_not_found": 502, "http_client_error": 502,
                     "http_server_error": 502, "http_rate_limited": 502, "too_many_redirects": 502,
                     "protocol_error": 502, "robots_disallowed": 502}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(follower: IndexFollower, *, fetch: FetchConfig, max_upload_bytes: int, max_pixels: int,
               max_concurrent: int, edge: EdgeSettings, decode_budget: DecodeBudget, url_concurrency: int = 4,
               weights: Optional[str] = None, backend: Optional[str] = None,
               draining: Optional[threading.Event] = None) -> FastAPI:
    """The service for a follower, whose Served.extras are a ServedExtras (imgsim.service.server).
    draining: set when this process is about to stop (imgsim.service.edge.Edge)."""
    app = FastAPI(title="imgsim", version="1", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    model_slots = threading.BoundedSemaphore(max_concurrent)
    url_slots = threading.BoundedSemaphore(url_concurrency)
    fetcher = Fetcher(fetch, pool_size=url_concurrency)
    app.router.on_shutdown.append(fetcher.close)
    app.add_middleware(BodyLimit, limit=max_upload_bytes + 64 * 1024, paths=("/api/search", "/api/recommend"),
                       min_rate=edge.min_body_rate, idle=edge.header_timeout)
    app.add_middleware(Edge, settings=edge, draining=draining)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error_response(error.status, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors())
        return error_response(422, problems or "invalid request")

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, error: ClientDisconnect):
        _LOG.info("%s %s: the client went away before its request was read", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        _LOG.error("%s %s failed: %s: %s", request.method, request.url.path, type(error).__name__, error)
        _LOG.debug("the traceback", exc_info=error)
        return error_response(500, f"internal error ({type(error).__name__}); the service log has the detail")

    def health():
        with follower.use() as served:
            index = served.index
            return {"ok": True, "run_id": index.run_id, "count": len(index), "search": served.extras.searchable,
                    "filters": index.filterable, **{k: v for k, v in follower.health().items() if k != "run_id"}}

    app.get("/healthz")(health)
    app.get("/api/healthz")(health)

    @app.get("/api/similar/{item_id:path}")
    def similar(item_id: str, k: int = Query(10, ge=1, le=MAX_K), include_self: bool = False,
                order: str = Query("most", pattern=ORDER_PATTERN), filter: list[str] = Query([]),
                range: list[str] = Query([])):
        with _answering(), follower.use() as served:
            matches = served.index.similar(item_id, k, include_self=include_self, order=order,
                                           **_where(filter, range))
            return {"id": item_id, "k": k, "order": order, "run_id": served.index.run_id,
                    "results": [m.to_dict() for m in matches]}

    @app.get("/api/items/{item_id:path}")
    def item(item_id: str):
        with follower.use() as served:
            try:
                metadata = served.index.metadata(item_id)
                neighbours = served.index.neighbors(item_id)
            except KeyError:
                raise ApiError(404, f"no item {item_id!r} in this index") from None
            return {"id": item_id, "run_id": served.index.run_id, "metadata": metadata,
                    "neighbors": [m.to_dict() for m in neighbours]}

    @app.post("/api/recommend")
    async def recommend(request: Request):
        body = await _json_object(request)
        positive, negative = body.get("positive"), body.get("negative", [])
        k = body.get("k", 10)
        if not _strings(positive) or not positive or not _strings(negative):
            raise ApiError(400, 'give {"positive": [ids], "negative": [ids], "k": 10}: lists of item ids, at least '
                                'one positive')
        if type(k) is not int or not 1 <= k <= MAX_K:
            raise ApiError(400, f"k must be an integer from 1 to {MAX_K}")
        where = _where(body.get("filter", []), body.get("range", []))
        with _answering(), follower.use() as served:
            matches = served.index.recommend(positive, negative, k, **where)
            return {"positive": positive, "negative": negative, "k": k, "run_id": served.index.run_id,
                    "results": [m.to_dict() for m in matches]}

    @app.get("/api/outliers")
    def outliers(k: int = Query(50, ge=1, le=MAX_K), filter: list[str] = Query([]), range: list[str] = Query([])):
        with _answering(), follower.use() as served:
            matches = served.index.outliers(k, **_where(filter, range))
            return {"k": k, "run_id": served.index.run_id, "score": "1 - mean cosine of the 10 nearest other items",
                    "results": [m.to_dict() for m in matches]}

    @app.post("/api/search")
    async def search(request: Request, k: int = Query(10, ge=1, le=MAX_K),
                     order: str = Query("most", pattern=ORDER_PATTERN), filter: list[str] = Query([]),
                     range: list[str] = Query([])):
        where = _where(filter, range)
        with follower.use() as served:
            with _answering():  # a bad filter is refused before the image is read
                served.index.check_filters(**where)
            if not served.extras.searchable:
                raise ApiError(501, "this index's vectors were not made by a model imgsim can run: search by "
                                    "image is not available")
        data, url = await _image_or_url(request, max_upload_bytes)
        import anyio.to_thread

        if data is None:  # fetched outside the model's slots, under a small limit of its own
            if not url_slots.acquire(blocking=False):
                raise ApiError(503, f"busy: {url_concurrency} image addresses are being fetched; try again shortly")
            try:
                data = await anyio.to_thread.run_sync(_fetch, fetcher, url)
            finally:
                url_slots.release()
        if not model_slots.acquire(blocking=False):
            raise ApiError(503, f"busy: {max_concurrent} searches are running; try again shortly")
        try:
            with follower.use() as served:
                answer = await anyio.to_thread.run_sync(_search, served.index, data, k, max_pixels, weights,
                                                        backend, max_upload_bytes, order, where, decode_budget)
                return {"source": "upload" if url is None else "url", "url": url, "run_id": served.index.run_id,
                        **answer}
        finally:
            model_slots.release()

    @app.get("/api/docs", response_class=HTMLResponse)
    def docs():
        return HTMLResponse(_docs_page(app.openapi()))

    app.mount("/", CurrentSite(follower), name="explorer")
    return app


class CurrentSite:
    """The explorer of the run the API answers from (ASGI): the static app prepared for each artifact.
    Its page is marked as served (`<meta name="imgsim-api">`), so the explorer asks the API for
    search by image here and never on a static host, where the request would only fail."""

    def __init__(self, follower: IndexFollower):
        self.follower = follower

    async def __call__(self, scope, receive, send):
        with self.follower.use() as served:
            built, run_id = served.extras.site, served.index.run_id
            if built.error is not None:
                return await error_response(503, f"the explorer of run {run_id} could not be built ({built.error}); "
                                                 "the API answers")(scope, receive, send)
            if built.static is None:
                return await error_response(503, f"the explorer of run {run_id} is being built; the API answers "
                                                 "meanwhile")(scope, receive, send)
            static, site = built.static, built.path
            if scope["type"] == "http" and scope["path"] in ("/", "/index.html"):
                with open(os.path.join(site, "index.html"), encoding="utf-8") as f:
                    page = f.read().replace("<head>", '<head>\n<meta name="imgsim-api" content="api/">', 1)
                return await HTMLResponse(page, headers={"cache-control": fmt.ENTRY_CACHE})(scope, receive, send)
            if scope["type"] == "http" and scope["path"].startswith(f"/{fmt.BUILDS}/"):
                send = _with_header(send, b"cache-control", fmt.BUILD_CACHE.encode())  # a build never changes
            return await static(scope, receive, send)


def _with_header(send, name: bytes, value: bytes):
    async def sending(message):
        if message["type"] == "http.response.start" and message.get("status") in (200, 206, 304):
            message = {**message, "headers": [*message.get("headers", []), (name, value)]}
        await send(message)
    return sending


def _fetch(fetcher: Fetcher, url: str) -> bytes:
    try:
        return fetcher.fetch(url).data
    except StageError as e:
        raise ApiError(_STATUS_OF_REASON.get(e.reason, 422), str(e)) from None  # "reason: detail"


def _search(index, data: bytes, k: int, max_pixels: int, weights: Optional[str], backend: Optional[str],
            max_bytes: int, order: str, where: dict, budget: DecodeBudget) -> dict:
    try:
        if len(data) > max_bytes:
            raise StageError("too_large", f"the image is {len(data)} bytes, more than {max_bytes}")
        matches = index.search_image(data, k, weights=weights, backend=backend, max_pixels=max_pixels, order=order,
                                     decode_budget=budget, **where)
    except StageError as e:
        raise ApiError(_STATUS_OF_REASON.get(e.reason, 422), str(e)) from None  # "reason: detail"
    except ModelMismatch as e:
        raise ApiError(501, str(e)) from None
    except ValueError as e:  # an all-zero embedding
        raise ApiError(422, str(e)) from None
    return {"k": k, "order": order, "results": [m.to_dict() for m in matches]}


def _where(filters, ranges) -> dict:
    """filter=COLUMN:VALUE and range=COLUMN:LOW..HIGH as the consumer's filters and ranges (400 if malformed)."""
    if not _strings(filters) or not _strings(ranges):
        raise ApiError(400, "filter and range are lists of strings: COLUMN:VALUE, COLUMN:LOW..HIGH")
    try:
        where = Filter.parse(filters, ranges)
    except FilterError as e:
        raise ApiError(400, str(e)) from None
    return {"filters": where.values, "ranges": where.ranges}


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


@contextlib.contextmanager
def _answering():
    """The consumer's refusals as JSON errors: unknown ids 404, filters and bad values 400."""
    try:
        yield
    except KeyError as e:
        raise ApiError(404, str(e.args[0]) if e.args else "no such item") from None
    except FilterError as e:
        raise ApiError(400, str(e)) from None


async def _json_object(request: Request) -> dict:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise ApiError(415, "send a JSON object (Content-Type: application/json)")
    body = _parsed_json(await request.body())
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object")
    return body


def _parsed_json(data: bytes):
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(400, "the JSON body does not parse (or nests too deeply)") from None


async def _image_or_url(request: Request, max_bytes: int) -> tuple[Optional[bytes], Optional[str]]:
    """(uploaded bytes, None) or (None, url), from multipart/form-data or JSON; ApiError otherwise.
    A plain form post (application/x-www-form-urlencoded) is what any web page can send anywhere:
    refused."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        body = _parsed_json(await request.body())
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url:
            raise ApiError(400, 'give {"url": "https://..."} or upload an image as the form field "image"')
        return None, url
    if not kind.startswith("multipart/form-data"):
        raise ApiError(415, "send an image as multipart/form-data (field image), or a url as JSON {\"url\": ...}")
    form = await request.form(max_files=1, max_fields=4)
    try:
        upload = form.get("image")
        if upload is not None and not isinstance(upload, str):
            data = await upload.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ApiError(413, f"the upload is larger than {max_bytes} bytes")
            if not data:
                raise ApiError(400, "the uploaded image is empty")
            return data, None
        url = form.get("url")
        if isinstance(url, str) and url.strip():
            return None, url.strip()
        raise ApiError(400, 'upload an image as the form field "image", or give an image address as "url"')
    finally:
        await form.close()


def _docs_page(document: dict) -> str:
    """The API's endpoints as one plain page: no scripts, nothing fetched from a CDN."""
    rows = []
    for path, methods in sorted(document.get("paths", {}).items()):
        for method, operation in methods.items():
            parameters = ", ".join(p["name"] for p in operation.get("parameters", []))
            rows.append(f"<tr><td><code>{html.escape(method.upper())}</code></td><td><code>{html.escape(path)}"
                        f"</code></td><td>{html.escape(parameters)}</td></tr>")
    return ("<!doctype html><meta charset=utf-8><title>imgsim API</title>"
            "<style>body{font:15px system-ui;margin:2em}td{padding:.2em 1em;border-bottom:1px solid #ddd}</style>"
            "<h1>imgsim API</h1><p>The OpenAPI document: <a href=openapi.json>openapi.json</a>. Every error is "
            "JSON: {\"error\", \"status\"}.</p><table><tr><th>method</th><th>path</th><th>parameters</th></tr>"
            + "".join(rows) + "</table>")
