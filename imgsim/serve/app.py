"""The HTTP service over one published index (FastAPI), for downstream apps and the explorer.

    GET  /healthz, /api/healthz          {"ok", "run_id", "count", "search", "filters"}
    GET  /api/similar/{id}?k=10          the k items most like id, best first (rank 1; itself left out
                                         unless include_self=true, then rank 0); order=least: least like it
    GET  /api/items/{id}                 an item's metadata and its precomputed neighbours
    POST /api/search?k=10                an uploaded image (multipart field `image`), or an image URL
                                         (form field or JSON `url`), embedded with the index's model
    POST /api/recommend                  JSON {"positive": [ids], "negative": [ids], "k": 10}: more like
                                         these and unlike those (never the examples themselves)
    GET  /api/outliers?k=50              the most isolated items, most first
    GET  /                               the explorer (static files), which then offers search by image

Every query takes filter=COLUMN:VALUE (repeatable; a column's values OR-ed, columns AND-ed) and
range=COLUMN:LOW..HIGH (numbers or ISO dates, either end open); /api/recommend also takes them as
JSON lists "filter" and "range". An unknown column or a malformed value is a 400 naming it.

Why these bounds: a search decodes an untrusted image and runs VGG16, the most
expensive thing a request can ask for. So the body is cut off past
--max-upload-mb while it is received (before any parsing), an image with more
than --max-image-pixels pixels is refused from its header, at most
--max-concurrent-searches run at once (others are answered 503 at once rather
than queued behind the model), and a URL is fetched by the pipeline's own
Fetcher: the address guard (no loopback, private or metadata-server addresses
unless allowed), the deadline and the byte cap. The model is loaded once, when
the service starts. Every error is JSON: {"error": message, "status": code}.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Optional


from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgsim.embed.reproduce import ModelMismatch
from imgsim.failures import StageError
from imgsim.fetch.http import FetchConfig, Fetcher
from imgsim.index.consumer import ImageIndex
from imgsim.index.filtered import ORDERS
from imgsim.index.filters import Filter, FilterError

_LOG = logging.getLogger("imgsim.serve")
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


def create_app(index: ImageIndex, *, fetch: FetchConfig, max_upload_bytes: int, max_pixels: int,
               max_concurrent: int, site_dir: Optional[str] = None, weights: Optional[str] = None,
               backend: Optional[str] = None, searchable: bool = True) -> FastAPI:
    """The service for an opened index. searchable: the model is loaded (search by image works)."""
    app = FastAPI(title="imgsim", version="1", docs_url="/api/docs", openapi_url="/api/openapi.json",
                  redoc_url=None)
    slots = threading.BoundedSemaphore(max_concurrent)
    fetcher = Fetcher(fetch, pool_size=max_concurrent)
    app.router.on_shutdown.append(fetcher.close)
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + 64 * 1024, paths=("/api/search",))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return _error(error.status, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors())
        return _error(422, problems or "invalid request")

    def health():
        return {"ok": True, "run_id": index.run_id, "count": len(index), "search": searchable,
                "filters": index.filterable}

    app.get("/healthz")(health)
    app.get("/api/healthz")(health)

    @app.get("/api/similar/{item_id:path}")
    def similar(item_id: str, k: int = Query(10, ge=1, le=MAX_K), include_self: bool = False,
                order: str = Query("most", pattern=ORDER_PATTERN), filter: list[str] = Query([]),
                range: list[str] = Query([])):
        with _answering():
            matches = index.similar(item_id, k, include_self=include_self, order=order,
                                    **_where(filter, range))
        return {"id": item_id, "k": k, "order": order, "results": [m.to_dict() for m in matches]}

    @app.post("/api/recommend")
    async def recommend(request: Request):
        body = await _json_object(request)
        positive, negative = body.get("positive"), body.get("negative", [])
        k = body.get("k", 10)
        if not _ids(positive) or not positive or not _ids(negative):
            raise ApiError(400, 'give {"positive": [ids], "negative": [ids], "k": 10}: lists of item ids, at least '
                                'one positive')
        if type(k) is not int or not 1 <= k <= MAX_K:
            raise ApiError(400, f"k must be an integer from 1 to {MAX_K}")
        with _answering():
            matches = index.recommend(positive, negative, k, **_where(body.get("filter", []), body.get("range", [])))
        return {"positive": positive, "negative": negative, "k": k, "results": [m.to_dict() for m in matches]}

    @app.get("/api/outliers")
    def outliers(k: int = Query(50, ge=1, le=MAX_K), filter: list[str] = Query([]), range: list[str] = Query([])):
        with _answering():
            matches = index.outliers(k, **_where(filter, range))
        return {"k": k, "score": "1 - mean cosine of the 10 nearest other items", "results": [m.to_dict() for m in matches]}

    @app.get("/api/items/{item_id:path}")
    def item(item_id: str):
        try:
            metadata = index.metadata(item_id)
            neighbours = index.neighbors(item_id)
        except KeyError:
            raise ApiError(404, f"no item {item_id!r} in this index") from None
        return {"id": item_id, "metadata": metadata, "neighbors": [m.to_dict() for m in neighbours]}

    @app.post("/api/search")
    async def search(request: Request, k: int = Query(10, ge=1, le=MAX_K), order: str = Query("most", pattern=ORDER_PATTERN),
                     filter: list[str] = Query([]), range: list[str] = Query([])):
        where = _where(filter, range)
        with _answering():  # a bad filter is refused before the image is read
            index.check_filters(**where)
        if not searchable:
            raise ApiError(501, "this index's vectors were not made by a model imgsim can run: search by "
                                "image is not available")
        data, url = await _image_or_url(request, max_upload_bytes)
        if not slots.acquire(blocking=False):
            raise ApiError(503, f"busy: {max_concurrent} searches are running; try again shortly")
        try:
            import anyio.to_thread

            return await anyio.to_thread.run_sync(_search, index, fetcher, data, url, k, max_pixels, weights,
                                                  backend, max_upload_bytes, order, where)
        finally:
            slots.release()

    if site_dir:
        app.mount("/", StaticFiles(directory=site_dir, html=True), name="explorer")
    return app


def _search(index: ImageIndex, fetcher: Fetcher, data: Optional[bytes], url: Optional[str], k: int,
            max_pixels: int, weights: Optional[str], backend: Optional[str], max_bytes: int, order: str,
            where: dict) -> dict:
    source = "upload"
    try:
        if data is None:
            source = "url"
            data = fetcher.fetch(url).data
        if len(data) > max_bytes:
            raise StageError("too_large", f"the image is {len(data)} bytes, more than {max_bytes}")
        matches = index.search_image(data, k, weights=weights, backend=backend, max_pixels=max_pixels, order=order,
                                     **where)
    except StageError as e:
        raise ApiError(_STATUS_OF_REASON.get(e.reason, 422), str(e)) from None  # "reason: detail"
    except ModelMismatch as e:
        raise ApiError(501, str(e)) from None
    except ValueError as e:  # an all-zero embedding
        raise ApiError(422, str(e)) from None
    return {"source": source, "url": url, "k": k, "order": order, "results": [m.to_dict() for m in matches]}


def _where(filters, ranges) -> dict:
    """filter=COLUMN:VALUE and range=COLUMN:LOW..HIGH as the consumer's filters and ranges (400 if malformed)."""
    if not _ids(filters) or not _ids(ranges):
        raise ApiError(400, "filter and range are lists of strings: COLUMN:VALUE, COLUMN:LOW..HIGH")
    try:
        where = Filter.parse(filters, ranges)
    except FilterError as e:
        raise ApiError(400, str(e)) from None
    return {"filters": where.values, "ranges": where.ranges}


def _ids(value) -> bool:
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
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):
        raise ApiError(400, "the JSON body does not parse") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object")
    return body


async def _image_or_url(request: Request, max_bytes: int) -> tuple[Optional[bytes], Optional[str]]:
    """(uploaded bytes, None) or (None, url), from multipart/form or JSON; ApiError otherwise."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise ApiError(400, "the JSON body does not parse") from None
        url = body.get("url") if isinstance(body, dict) else None
        if not isinstance(url, str) or not url:
            raise ApiError(400, 'give {"url": "https://..."} or upload an image as the form field "image"')
        return None, url
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ApiError(415, "send an image as multipart/form-data (field image), or a url as a form field or JSON")
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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


class _BodyLimit:
    """ASGI middleware: a request body to `paths` longer than `limit` bytes is answered 413 as soon as
    it is known (Content-Length, or while it streams), before anything parses it."""

    def __init__(self, app, limit: int, paths: tuple[str, ...]):
        self.app = app
        self.limit = limit
        self.paths = paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _error(413, f"the request body is larger than {self.limit} bytes")(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _error(413, f"the request body is larger than {self.limit} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass
