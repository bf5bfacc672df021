"""OUT/site/index.html: one stable address for the explorer of whichever run LATEST points at.

A site is written whole under its run (runs/RUN_ID/site/), never over another
run's. The stable address is a single small page that forwards to it, hash
included (so OUT/site/index.html#item=ID works): replacing one object is
atomic on every store, so readers see the old site or the new one, never a
mixture. It is rewritten after LATEST moves to a run with a site (`imgsim run
--site`), and only while LATEST still points at that run.
"""
from __future__ import annotations

import html
import json

from imgsim.explorer import site_format as fmt
from imgsim.index.latest import read_latest
from imgsim.runs.layout import RunLayout
from imgsim.storage import ObjectStore, join

SITE_DIR = "site"


def forwarder_page(run_id: str) -> str:
    target = f"../runs/{run_id}/site/index.html"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgsim explorer</title>
<meta name="imgsim-run" content="{html.escape(run_id)}">
<script>location.replace({json.dumps(target)} + location.hash);</script>
<noscript><meta http-equiv="refresh" content="0; url={html.escape(target)}"></noscript>
</head><body><p>The explorer of run {html.escape(run_id)} is <a href="{html.escape(target)}">here</a>.</p></body></html>
"""


def point_site_at(store: ObjectStore, output: str, run_id: str) -> bool:
    """Write OUT/site/index.html for run_id if LATEST points at it; returns whether it was written."""
    latest = read_latest(store, output)
    if latest is None or latest.run_id != run_id:
        return False
    RunLayout(output, run_id)  # checks the run id
    store.write_bytes(join(output, SITE_DIR, fmt.ENTRY), forwarder_page(run_id).encode(),
                      content_type="text/html; charset=utf-8", cache_control=fmt.ENTRY_CACHE)
    return True
