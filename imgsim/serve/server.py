"""Starting `imgsim serve`: open the index, find or build its explorer, load the model once, listen.

The explorer served at / is, in order: the site named by --site; the site the
run published beside its index (runs/RUN_ID/site/, `imgsim run --site`), when
the index is a local directory; else one built now into imgsim's cache
(cache/sites/RUN_ID/), reused by later starts.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Optional

from imgsim.embed.reproduce import ModelMismatch
from imgsim.explore.build import ExploreSettings, build_site
from imgsim.explore.source import IndexContents
from imgsim.fetch.http import FetchConfig
from imgsim.index.consumer import ImageIndex
from imgsim.storage import ObjectStore, cache_dir, is_gcs

_LOG = logging.getLogger("imgsim.serve")


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    index: str
    run_id: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    site: Optional[str] = None
    weights: Optional[str] = None
    backend: Optional[str] = None  # refused at start unless the index's
    fetch: FetchConfig = FetchConfig()
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_concurrent: int = 2
    cache_dir: Optional[str] = None


def prepare(settings: ServeSettings, store: Optional[ObjectStore] = None):
    """(the FastAPI app, the opened index, the site directory) for settings; ArtifactError, ValueError."""
    from imgsim.serve.app import create_app

    store = store or ObjectStore()
    index = ImageIndex.open(settings.index, run_id=settings.run_id, cache_dir=settings.cache_dir, store=store)
    searchable = True
    try:
        index.load_model(settings.weights, settings.backend)  # once, now: the first search does not wait for it
    except ModelMismatch as e:
        if settings.backend is not None:  # asked for explicitly: a wrong backend is bad configuration, refused
            raise ValueError(str(e)) from None  # before any work (building the explorer)
        _LOG.warning("search by image is off: %s", e)
        searchable = False
    site = settings.site or _published_site(index)
    if site is None and index.sharded:
        _LOG.warning("no explorer at /: the explorer reads an index of one searcher, and this one is sharded "
                     "(the HTTP API serves it all)")
    elif site is None:
        site = _cached_site(settings, index, store)
    app = create_app(index, fetch=settings.fetch, max_upload_bytes=settings.max_upload_bytes,
                     max_pixels=settings.max_pixels, max_concurrent=settings.max_concurrent, site_dir=site,
                     weights=settings.weights, backend=settings.backend, searchable=searchable)
    return app, index, site


def serve(settings: ServeSettings, ready: Optional[Callable[[str], None]] = None,
          store: Optional[ObjectStore] = None) -> None:
    """Serve until interrupted; ready(base_url) is called once the socket listens."""
    import asyncio

    import uvicorn

    app, index, site = prepare(settings, store)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                           lifespan="on"))

    async def main():
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and ready is not None:
            host, port = server.servers[0].sockets[0].getsockname()[:2]
            ready(f"http://{'[' + host + ']' if ':' in host else host}:{port}/")
        await task

    asyncio.run(main())


def _published_site(index: ImageIndex) -> Optional[str]:
    if is_gcs(index.source):
        return None
    site = os.path.join(os.path.dirname(os.path.normpath(index.source)), "site")
    return site if os.path.isfile(os.path.join(site, "data", "site.json")) else None


def _cached_site(settings: ServeSettings, index: ImageIndex, store: ObjectStore) -> str:
    site = cache_dir("sites", index.run_id)
    if not os.path.isfile(os.path.join(site, "data", "site.json")):
        contents = IndexContents.open(settings.index, run_id=settings.run_id, cache_dir=settings.cache_dir,
                                      store=store)
        build_site(contents, site, ExploreSettings(), store)
    return site
