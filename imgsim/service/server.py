"""Starting `imgsim serve`: follow LATEST, prepare each artifact, listen, and swap without a restart.

Each artifact served is prepared once, before any request reaches it: verified and opened
(ImageIndex), warmed with a probe query, its model loaded (search by image), and its explorer
found: the site named by --site; the site the run published beside its index
(runs/RUN_ID/site/, `imgsim run --site`), when the index is a local directory; else one built
into imgsim's cache under the artifact's manifest digest (cache/sites/DIGEST/), reused later.

One process (the default) follows LATEST on a thread and swaps in place (imgsim.index.follower).
With --workers N, a parent process opens and warms each artifact, then forks N workers that
serve it from the same memory (copy-on-write: the vectors, the ids and metadata, the searcher's
arrays are loaded before the fork and never written), all accepting on one socket; when LATEST
moves, the parent prepares the new artifact, forks a new set of workers and asks the old ones to
finish what they are answering and stop, so no request fails across the swap.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Optional

from imgsim.embed.memory import MB, DecodeBudget
from imgsim.embed.reproduce import ModelMismatch
from imgsim.explorer import site_format as fmt
from imgsim.explorer.build import ExploreSettings, build_site
from imgsim.explorer.source import IndexContents
from imgsim.fetch.http import FetchConfig
from imgsim.index.consumer import ImageIndex
from imgsim.index.follower import IndexFollower, Served, yield_cpu
from imgsim.service.edge import EdgeSettings, guarded_protocol
from imgsim.storage import ObjectStore, cache_dir, is_gcs

_LOG = logging.getLogger("imgsim.service")
DRAIN_SECONDS = 2.0  # old workers answer Connection: close this long before they stop


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    index: str
    run_id: Optional[str] = None  # pins a run: LATEST is not followed
    host: str = "127.0.0.1"
    port: int = 8000
    site: Optional[str] = None
    weights: Optional[str] = None
    backend: Optional[str] = None  # refused at start unless the index's
    fetch: FetchConfig = FetchConfig()
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_concurrent: int = 2
    url_concurrency: int = 4
    decode_memory_mb: int = 1200
    cache_dir: Optional[str] = None
    refresh_seconds: float = 30.0
    workers: int = 1
    edge: Optional[EdgeSettings] = None  # default: EdgeSettings.for_address(host)

    @property
    def edge_settings(self) -> EdgeSettings:
        return self.edge or EdgeSettings.for_address(self.host)


class SiteBuild:
    """The explorer of one artifact: ready (`path`, `static`), still being built in the background,
    or failed (`error`). A new artifact's API does not wait for its explorer: `/` says it is being
    built meanwhile, and never shows another run's."""

    def __init__(self, path: Optional[str] = None):
        self.path = path
        self.static = _static(path)
        self.error: Optional[str] = None
        self.done = threading.Event()
        if path is not None:
            self.done.set()

    @classmethod
    def in_background(cls, build: Callable[[], str]) -> "SiteBuild":
        site = cls()
        threading.Thread(target=site._build, args=(build,), name="imgsim-build-site", daemon=True).start()
        return site

    def _build(self, build: Callable[[], str]) -> None:
        yield_cpu()  # the answers being served come first
        try:
            path = build()
            self.static, self.path = _static(path), path
        except Exception as e:  # reported at `/`; the API is unaffected
            _LOG.exception("the explorer could not be built")
            self.error = f"{type(e).__name__}: {e}"[:300]
        finally:
            self.done.set()


@dataclasses.dataclass(frozen=True)
class ServedExtras:
    """What the service prepared for one artifact besides the index."""

    searchable: bool
    site: SiteBuild


def preparer(settings: ServeSettings, store: ObjectStore, load_model: bool = True) -> Callable[[ImageIndex], Any]:
    """prepare(index) -> ServedExtras: the model loaded once (refused when --backend is not the
    index's), the explorer found, or built: before the first artifact is served, in the
    background for the ones that replace it. load_model=False leaves the model to each worker."""
    first = threading.Event()

    def prepare(index: ImageIndex) -> ServedExtras:
        searchable = True
        try:
            if load_model:
                index.load_model(settings.weights, settings.backend)  # now: the first search does not wait
            else:
                index.check_model(settings.backend)
        except ModelMismatch as e:
            if settings.backend is not None:  # asked for explicitly: a wrong backend is bad configuration,
                raise ValueError(str(e)) from None  # refused before any work (building the explorer)
            _LOG.warning("search by image is off: %s", e)
            searchable = False
        found = settings.site or _published_site(index)
        if found is not None:
            site = SiteBuild(found)
        elif not first.is_set():
            site = SiteBuild(_cached_site(index, store))
        else:
            site = SiteBuild.in_background(lambda: _cached_site(index, store))
        first.set()
        return ServedExtras(searchable, site)
    return prepare


def _static(site: Optional[str]):
    if site is None:
        return None
    from fastapi.staticfiles import StaticFiles

    return StaticFiles(directory=site, html=True)


def follower_for(settings: ServeSettings, store: ObjectStore, load_model: bool = True,
                 follow: bool = True) -> IndexFollower:
    follower = IndexFollower(settings.index, run_id=settings.run_id, cache_dir=settings.cache_dir, store=store,
                             refresh_seconds=settings.refresh_seconds,
                             prepare=preparer(settings, store, load_model))
    follower.load()
    if follow and follower.follows:
        follower.start()
    return follower


def app_for(settings: ServeSettings, follower: IndexFollower, draining: Optional[threading.Event] = None):
    from imgsim.service.app import create_app

    return create_app(follower, fetch=settings.fetch, max_upload_bytes=settings.max_upload_bytes,
                      max_pixels=settings.max_pixels, max_concurrent=settings.max_concurrent,
                      url_concurrency=settings.url_concurrency, edge=settings.edge_settings,
                      decode_budget=DecodeBudget(settings.decode_memory_mb * MB), weights=settings.weights,
                      backend=settings.backend, draining=draining)


def prepare(settings: ServeSettings, store: Optional[ObjectStore] = None):
    """(the FastAPI app, the follower, the site served now) for settings; ArtifactError, ValueError."""
    store = store or ObjectStore()
    follower = follower_for(settings, store)
    with follower.use() as served:
        site = served.extras.site.path
    return app_for(settings, follower), follower, site


def serve(settings: ServeSettings, ready: Optional[Callable[[str], None]] = None,
          store: Optional[ObjectStore] = None) -> None:
    """Serve until interrupted; ready(base_url) is called once the socket listens."""
    store = store or ObjectStore()
    if settings.workers > 1:
        return _serve_workers(settings, ready, store)
    app, follower, _ = prepare(settings, store)
    try:
        sock = _listen(settings.host, settings.port)
        _run_uvicorn(app, settings, sock, on_started=lambda: ready and ready(_url(sock)))
    finally:
        follower.close()


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said: asyncio sets TCP_NODELAY on accepted connections only for such sockets, and
    # without it each answer's body waited for the client's delayed ACK of its headers (40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _run_uvicorn(app, settings: ServeSettings, sock: socket.socket, on_started: Callable[[], Any] = lambda: None,
                 handle_signals: bool = True) -> None:
    import asyncio

    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=60,
                            http=guarded_protocol(settings.edge_settings.header_timeout))
    server = uvicorn.Server(config)

    async def main():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            on_started()
        await task

    asyncio.run(main())


# --workers N: generations of forked workers -------------------------------------------------------

def _serve_workers(settings: ServeSettings, ready: Optional[Callable[[str], None]], store: ObjectStore) -> None:
    """The parent: prepares each artifact (no model: TensorFlow is not fork-safe, each worker loads
    its own) and keeps one generation of workers serving it."""
    follower = follower_for(settings, store, load_model=False, follow=False)
    sock = _listen(settings.host, settings.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    workers = _fork_generation(settings, follower, sock, store)
    if ready is not None:
        ready(_url(sock))
    try:
        while not stop.wait(settings.refresh_seconds if follower.follows else 3600):
            if follower.follows and follower.refresh():
                fresh = _fork_generation(settings, follower, sock, store)
                _stop_generation(workers)
                workers = fresh
            workers = [pid for pid in workers if not _reaped(pid)] or _fork_generation(settings, follower, sock,
                                                                                       store)
    finally:
        _stop_generation(workers)
        follower.close()
        sock.close()


def _fork_generation(settings: ServeSettings, follower: IndexFollower, sock: socket.socket,
                     store: ObjectStore) -> list[int]:
    with follower.use() as served:
        pids = []
        for _ in range(settings.workers):
            pid = os.fork()
            if pid == 0:  # the worker: the parent's index, shared copy-on-write; its own model
                code = 0
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    draining = threading.Event()
                    signal.signal(signal.SIGUSR1, lambda *_: draining.set())
                    worker = IndexFollower.serving(_with_model(served, settings))
                    _run_uvicorn(app_for(settings, worker, draining), settings, sock)
                except BaseException:
                    _LOG.exception("an imgsim serve worker failed")
                    code = 1
                finally:
                    os._exit(code)
            pids.append(pid)
        return pids


def _with_model(served: Served, settings: ServeSettings) -> Served:
    if served.extras.searchable:
        served.index.load_model(settings.weights, settings.backend)
    return served


def _stop_generation(pids: list[int], grace: float = 65.0) -> None:
    """SIGUSR1 first: each worker answers `Connection: close` (DRAIN_SECONDS), so its clients move
    to the new workers instead of reusing a connection it is about to close; then SIGTERM: it stops
    accepting, finishes the requests it holds (uvicorn's graceful shutdown) and exits; SIGKILL after
    grace seconds."""
    for number in (signal.SIGUSR1, signal.SIGTERM):
        for pid in pids:
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass
        if number == signal.SIGUSR1:
            time.sleep(DRAIN_SECONDS)
    deadline = time.monotonic() + grace
    for pid in pids:
        while not _reaped(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def _published_site(index: ImageIndex) -> Optional[str]:
    if is_gcs(index.source):
        return None
    site = os.path.join(os.path.dirname(os.path.normpath(index.source)), "site")
    return site if os.path.isfile(os.path.join(site, fmt.ENTRY)) else None


def _cached_site(index: ImageIndex, store: ObjectStore) -> str:
    """The explorer of the index, built once into the cache under the artifact's manifest digest
    (a run id names different artifacts in different output roots)."""
    site = cache_dir("sites", index.manifest_sha256[:32])
    if not os.path.isfile(os.path.join(site, fmt.ENTRY)):
        build_site(IndexContents.open(index.source, cache_dir=os.path.dirname(index.local_dir), store=store), site,
                   ExploreSettings(), store)
    return site
