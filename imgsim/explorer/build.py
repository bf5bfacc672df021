"""Building the explorer: a static site from a published index (imgsim explore, imgsim run --site).

    build_site(contents, "site/")   # contents: IndexContents.open("out/")

The site needs no server code: any static host serves it (a bucket,
`python -m http.server`). Its data is cut into small files (imgsim.explorer.
site_format) so that opening it and each view read only what they show, and
the map is computed here, once (imgsim.explorer.projection). Each build goes
to a folder of its own, written locally directly or to gs:// by a pool of
uploads, each object with its content type and cache headers; the entry page
goes last and names it, so a site being rebuilt never opens half-built data
and a bucket's public website serves it as is.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import importlib.resources
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgsim.explorer import projection
from imgsim.explorer import site_format as fmt
from imgsim.explorer.source import IndexContents
from imgsim.index import outliers, strength
from imgsim.storage import ObjectStore, is_gcs, join

_LOG = logging.getLogger("imgsim.explorer")
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "app.css": "text/css; charset=utf-8"}
_TYPES = {".json": "application/json", ".txt": "text/plain; charset=utf-8", ".bin": "application/octet-stream"}
# Thumbnails are spilled to temporary files this many packs at a time, then cut into packs: the
# collection's thumbnails are never all in memory.
_PACKS_PER_SPILL = 256
THUMB_HEIGHT = 256  # px of a IIIF derivative standing in for a missing thumbnail


@dataclasses.dataclass(frozen=True)
class ExploreSettings:
    """How the site is made. facets: metadata fields offered as filters (None: every text field with
    2..64 distinct values, at most a third as many as items); clusters: colours of the map."""

    title: Optional[str] = None
    facets: Optional[tuple[str, ...]] = None
    originals: bool = False  # load items' original images from their hosts without being asked
    iiif_viewer: Optional[str] = None  # a IIIF viewer's address for an item's manifest, "{manifest}" in it
    clusters: int = 12
    seed: int = 0
    map_epochs: Optional[int] = None

    def __post_init__(self):
        if not 1 <= self.clusters <= 255:
            raise ValueError("--clusters must be between 1 and 255")
        if self.iiif_viewer is not None and ("{manifest}" not in self.iiif_viewer
                                             or not self.iiif_viewer.startswith(("http://", "https://"))):
            raise ValueError("--iiif-viewer must be an http(s) address with {manifest} where the manifest's "
                             "URL goes, e.g. https://projectmirador.org/embed/?iiif-content={manifest}")


def build_site(contents: IndexContents, output: str, settings: ExploreSettings = ExploreSettings(),
               store: Optional[ObjectStore] = None) -> dict:
    """Write the explorer for contents under output (local or gs://); returns a report."""
    store = store or ObjectStore()
    started = time.monotonic()
    timings = {}
    n = contents.count
    if not n:
        raise ValueError("the index is empty: there is nothing to explore")
    known = contents.metadata_columns()
    if settings.facets:
        missing = [f for f in settings.facets if f not in known]
        if missing:
            raise ValueError(f"--facets {', '.join(missing)}: not a metadata field of this index "
                             f"({', '.join(known) or 'it has none'})")

    # the map, and the site order it gives
    t = time.monotonic()
    pca = projection.Pca.fit(contents.vector_batches())
    projected = np.concatenate([pca.transform(b) for b in contents.vector_batches()])
    neighbor_rows, neighbor_scores = contents.neighbors()
    positions = projection.layout(projected, neighbor_rows, epochs=settings.map_epochs, seed=settings.seed)
    cluster_of = projection.clusters(projected, min(settings.clusters, n), seed=settings.seed)
    kept = projection.neighbourhood_kept(positions, neighbor_rows, sample=300, seed=settings.seed) \
        if neighbor_rows.shape[1] else None
    del projected
    timings["map"] = round(time.monotonic() - t, 2)
    xy = _quantise(positions)
    order = np.argsort(_morton(xy[:, 0], xy[:, 1]), kind="stable")  # site row -> index row
    site_of = np.empty(n, dtype=np.int64)
    site_of[order] = np.arange(n)

    build = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    writer = _SiteWriter(store, join(output, fmt.build_dir(build)))
    try:
        t = time.monotonic()
        thumbs = _write_thumbnails(contents, site_of, writer)
        timings["thumbnails"] = round(time.monotonic() - t, 2)

        t = time.monotonic()
        info = contents.info
        fields = [_describe_field(info, name) for name in known]
        text_fields = [f["name"] for f in fields if f["kind"] in ("text", "list")]
        card_fields = ([name for name in text_fields if name == "title"]
                       + [name for name in text_fields if name != "title"])[:fmt.CARD_FIELDS_MAX]
        ids = contents.ids
        urls = info.column("url").to_pylist()
        widths, heights = info.column("width").to_pylist(), info.column("height").to_pylist()
        values = {f["name"]: info.column(f["name"]).to_pylist() for f in fields}
        card_values = {name: [_text(v, fmt.CARD_TEXT) for v in values[name]] for name in card_fields}
        groups = contents.groups()
        group_of = np.full(n, -1, dtype=np.int64)
        for number, members in enumerate(groups):
            group_of[members] = number

        card_urls = _iiif_pictures(urls, values.get("iiif_service"), thumbs["refs"], site_of)
        cards_shards = _write_cards(writer, order, ids, card_urls, thumbs, card_fields, card_values)
        buckets = _write_items(writer, order, site_of, ids, urls, widths, heights, thumbs, fields, values,
                               neighbor_rows, neighbor_scores, group_of)
        group_pages = _write_groups(writer, groups, site_of)
        isolated = _write_outliers(writer, neighbor_scores, site_of)
        search_shards = _write_search(writer, order, ids, card_fields, card_values)
        facets = _write_facets(writer, order, fields, values, settings.facets, n)
        writer.put("data/map.bin", xy[order].astype("<u2").tobytes())
        writer.put("data/clusters.bin", cluster_of[order].astype(np.uint8).tobytes())
        timings["data"] = round(time.monotonic() - t, 2)

        signature = contents.manifest.signature.to_dict()
        site = {
            "format": fmt.FORMAT_VERSION,
            "title": settings.title or default_title(contents.manifest.section("input")),
            "run_id": contents.run_id,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "index_created": contents.manifest.document.get("created"),
            "model": {k: signature.get(k) for k in ("model", "layer", "dim", "precision")},
            "count": n,
            "fields": fields,
            "card_fields": card_fields,
            "title_field": "title" if "title" in card_fields else None,
            "facets": facets,
            "cards": {"rows": fmt.CARD_ROWS, "shards": cards_shards},
            "items": {"buckets": buckets, "hash": "fnv1a32"},
            "groups": {"count": len(groups), "page": fmt.GROUP_PAGE, "pages": group_pages,
                       "items": int(sum(len(g) for g in groups)),
                       "threshold": contents.manifest.section("groups").get("threshold")},
            "search": {"rows": fmt.SEARCH_ROWS, "shards": search_shards},
            "map": {"clusters": int(cluster_of.max()) + 1, "neighbourhood_kept": kept},
            "thumbs": {"pack": fmt.THUMB_PACK, "count": int(thumbs["count"]), "format": thumbs["format"],
                       "mime": thumbs["mime"]},
            "neighbors": {"k": int(neighbor_rows.shape[1])},
            "outliers": {"count": isolated, "score": f"1 - mean cosine of the {outliers.OUTLIER_K} nearest"},
            # a neighbour's strength: its score's percentile among every neighbour score (imgsim.index.strength)
            "strength": {"quantiles": strength.quantiles(strength.histogram(neighbor_scores[neighbor_rows >= 0])),
                         "duplicate": contents.manifest.section("groups").get("threshold"),
                         "labels": [[floor, label] for floor, label in strength.LABELS]},
            "originals": settings.originals,
            "iiif": {"viewer": settings.iiif_viewer},
        }
        writer.put("data/site.json", json.dumps(site, ensure_ascii=False, separators=(",", ":")).encode())
        for name in STATIC_FILES:
            if name != fmt.ENTRY:
                writer.put(name, _static(name))
        writer.wait()
    finally:
        writer.close()
    entry = join(output, fmt.ENTRY)
    previous = fmt.build_of(store.read_bytes(entry).decode("utf-8", "replace")) if store.exists(entry) else None
    page = fmt.entry_page(_static(fmt.ENTRY).decode(), build).encode()
    store.write_bytes(entry, page, STATIC_FILES[fmt.ENTRY], cache_control=fmt.ENTRY_CACHE)
    removed = _drop_old_builds(store, output, keep={build, previous})
    timings["total"] = round(time.monotonic() - started, 2)
    _LOG.info("explorer: %d items, %d thumbnails, %d files -> %s (%.1f s)", n, thumbs["count"], writer.files,
              output, timings["total"])
    return {"site": output, "build": build, "builds_removed": removed, "run_id": contents.run_id, "count": n, "thumbnails": int(thumbs["count"]),
            "groups": len(groups), "facets": [f["name"] for f in facets], "files": writer.files,
            "bytes": writer.bytes, "map": {"neighbourhood_kept": kept}, "seconds": timings}


def default_title(source: dict) -> str:
    """A title from what the index was made of (the manifest's `input`): the museum, the manifest's
    or folder's name."""
    kind = source.get("kind")
    if kind == "cma":
        return "Cleveland Museum of Art"
    name = source.get("path") or source.get("pattern") or ""
    stem = os.path.basename(name.replace("**", "").replace("*", "").rstrip("/")).split(".")[0]
    if not stem and name:
        stem = os.path.basename(os.path.dirname(name.replace("**", "").replace("*", "").rstrip("/")))
    return stem.replace("_", " ").replace("-", " ").strip().capitalize() or "Collection"


# --- writing ------------------------------------------------------------------------------------

def _drop_old_builds(store: ObjectStore, output: str, keep: set) -> list[str]:
    """Delete every build but those in keep (the new one, and the one the old entry page named,
    which visitors may still be reading); returns the builds removed."""
    root = join(output, fmt.BUILDS)
    if is_gcs(root):
        builds = {path[len(root) + 1:].split("/", 1)[0] for path in store.list(root)}
    else:
        builds = set(os.listdir(root)) if os.path.isdir(root) else set()
    old = sorted(builds - keep)
    for build in old:
        store.delete_prefix(join(root, build))
    return old


class _SiteWriter:
    """Writes a build's files: locally straight to disk, to gs:// through a pool of uploads, each
    object with its content type and a year's cache (a build is never rewritten)."""

    def __init__(self, store: ObjectStore, root: str):
        self.store = store
        self.root = root
        self.files = 0
        self.bytes = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(16) if is_gcs(root) else None
        self._pending: list = []
        self._made: set[str] = set()

    def put(self, rel: str, data: bytes, content_type: Optional[str] = None) -> None:
        self.files += 1
        self.bytes += len(data)
        content_type = content_type or STATIC_FILES.get(rel) or _TYPES.get(os.path.splitext(rel)[1],
                                                                             "application/octet-stream")
        if self._pool is None:
            path = os.path.join(self.root, *rel.split("/"))
            directory = os.path.dirname(path)
            if directory not in self._made:
                os.makedirs(directory, exist_ok=True)
                self._made.add(directory)
            with open(path, "wb") as f:
                f.write(data)
            return
        self._pending.append(self._pool.submit(self.store.write_bytes, join(self.root, rel), data, content_type,
                                               cache_control=fmt.BUILD_CACHE))
        if len(self._pending) > 256:
            self.wait()

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _write_thumbnails(contents: IndexContents, site_of: np.ndarray, writer: _SiteWriter) -> dict:
    """Cut the run's thumbnails into packs in site order; returns refs per site row ([pack, offset, length])."""
    n = len(site_of)
    refs: list[Optional[list[int]]] = [None] * n
    formats = set()
    spill_rows = fmt.THUMB_PACK * _PACKS_PER_SPILL
    spill_at = np.full(n, -1, dtype=np.int64)
    length = np.zeros(n, dtype=np.int64)
    directory = tempfile.mkdtemp(prefix="imgsim-thumbs-")
    handles: dict[int, Any] = {}
    try:
        for row, thumbnail in contents.thumbnails():
            site = int(site_of[row])
            spill = site // spill_rows
            handle = handles.get(spill)
            if handle is None:
                handle = handles[spill] = open(os.path.join(directory, f"{spill}.bin"), "wb")
            spill_at[site] = handle.tell()
            length[site] = len(thumbnail.data)
            handle.write(thumbnail.data)
            formats.add((thumbnail.format, thumbnail.mime_type))
        for handle in handles.values():
            handle.close()
        count = 0
        for spill in sorted(handles):
            with open(os.path.join(directory, f"{spill}.bin"), "rb") as f:
                data = f.read()
            first = spill * spill_rows
            for pack in range(first // fmt.THUMB_PACK, -(-min(n, first + spill_rows) // fmt.THUMB_PACK)):
                parts, offset = [], 0
                for site in range(pack * fmt.THUMB_PACK, min(n, (pack + 1) * fmt.THUMB_PACK)):
                    if spill_at[site] < 0:
                        continue
                    piece = data[spill_at[site]:spill_at[site] + length[site]]
                    refs[site] = [pack, offset, len(piece)]
                    parts.append(piece)
                    offset += len(piece)
                    count += 1
                if parts:
                    writer.put(f"thumbs/{fmt.shard_name(pack, '.bin')}", b"".join(parts))
    finally:
        for handle in handles.values():
            handle.close()
        shutil.rmtree(directory, ignore_errors=True)
    kind, mime = sorted(formats)[0] if formats else ("webp", "image/webp")
    return {"refs": refs, "count": count, "format": kind, "mime": mime}


def _iiif_pictures(urls: list, services: Optional[list], refs: list, site_of: np.ndarray) -> list:
    """A card's picture where the run kept no thumbnail: its IIIF service's small derivative (a
    height the Image API's level 1 serves), not the full image; shown, like any original, only
    where the site allows originals or the visitor asks."""
    if not services:
        return urls
    return [f"{service}/full/,{THUMB_HEIGHT}/0/default.jpg" if service and refs[int(site_of[row])] is None else url
            for row, (url, service) in enumerate(zip(urls, services))]


def _write_cards(writer, order, ids, urls, thumbs, card_fields, card_values) -> int:
    refs = thumbs["refs"]
    shards = math.ceil(len(order) / fmt.CARD_ROWS)
    for shard in range(shards):
        rows = []
        for site in range(shard * fmt.CARD_ROWS, min(len(order), (shard + 1) * fmt.CARD_ROWS)):
            r = int(order[site])
            rows.append([ids[r], urls[r], refs[site], *(card_values[name][r] for name in card_fields)])
        writer.put(f"data/cards/{fmt.shard_name(shard, '.json')}", _json(rows))
    return shards


def _write_items(writer, order, site_of, ids, urls, widths, heights, thumbs, fields, values, neighbor_rows,
                 neighbor_scores, group_of) -> int:
    n = len(order)
    buckets = fmt.item_buckets(n)
    bucket_of = np.array([fmt.fnv1a32(item) % buckets for item in ids], dtype=np.int64)
    by_bucket = np.argsort(bucket_of, kind="stable")
    starts = np.searchsorted(bucket_of[by_bucket], np.arange(buckets + 1))
    refs = thumbs["refs"]
    for bucket in range(buckets):
        items = {}
        for r in by_bucket[starts[bucket]:starts[bucket + 1]]:
            r = int(r)
            valid = neighbor_rows[r] >= 0
            neighbors = [[int(site_of[j]), round(float(s), 4)]
                         for j, s in zip(neighbor_rows[r][valid], neighbor_scores[r][valid])]
            metadata = {f["name"]: _detail(values[f["name"]][r], f["kind"]) for f in fields}
            site = int(site_of[r])
            items[ids[r]] = {"r": site, "id": ids[r], "url": urls[r], "w": widths[r], "h": heights[r],
                             "th": refs[site], "m": metadata, "n": neighbors,
                             "g": int(group_of[r]) if group_of[r] >= 0 else None}
        writer.put(f"data/items/{fmt.shard_name(bucket, '.json')}", _json(items))
    return buckets


def _write_groups(writer, groups, site_of) -> int:
    pages = math.ceil(len(groups) / fmt.GROUP_PAGE)
    for page in range(pages):
        chunk = []
        for number in range(page * fmt.GROUP_PAGE, min(len(groups), (page + 1) * fmt.GROUP_PAGE)):
            members = np.sort(site_of[groups[number]])
            chunk.append({"g": number, "size": int(len(members)),
                          "rows": [int(s) for s in members[:fmt.GROUP_MEMBERS_SHOWN]]})
        writer.put(f"data/groups/{fmt.shard_name(page, '.json')}", _json(chunk))
    return pages


def _write_outliers(writer, neighbor_scores, site_of) -> int:
    """The OUTLIERS_SHOWN most isolated items, most first: [[site row, score]...]."""
    rows, values = outliers.most_isolated(np.arange(len(site_of)), outliers.scores(neighbor_scores),
                                          fmt.OUTLIERS_SHOWN)
    writer.put("data/outliers.json", _json([[int(site_of[r]), round(float(v), 4)] for r, v in zip(rows, values)]))
    return len(rows)


def _write_search(writer, order, ids, card_fields, card_values) -> int:
    shards = math.ceil(len(order) / fmt.SEARCH_ROWS)
    for shard in range(shards):
        lines = []
        for site in range(shard * fmt.SEARCH_ROWS, min(len(order), (shard + 1) * fmt.SEARCH_ROWS)):
            r = int(order[site])
            text = " ".join([ids[r], *(card_values[name][r] or "" for name in card_fields)])
            lines.append(" ".join(text.lower().split()))
        writer.put(f"data/search/{fmt.shard_name(shard, '.txt')}", ("\n".join(lines) + "\n").encode())
    return shards


def _write_facets(writer, order, fields, values, chosen, n) -> list[dict]:
    facets = []
    for field in fields:
        name = field["name"]
        if field["kind"] != "text" or (chosen is not None and name not in chosen):
            continue
        column = values[name]
        counts: dict[str, int] = {}
        for value in column:
            if value is not None and value != "":
                counts[value] = counts.get(value, 0) + 1
        automatic = chosen is None
        if not counts or len(counts) > fmt.FACET_MAX_VALUES or (
                automatic and (len(counts) < 2 or len(counts) > max(2, n // 3))):
            continue
        ordered = sorted(counts, key=lambda v: (-counts[v], v))
        code = {value: i + 1 for i, value in enumerate(ordered)}
        codes = np.array([code.get(column[int(r)], 0) for r in order], dtype=np.uint8)
        writer.put(f"data/facets/{_safe_name(name)}.bin", codes.tobytes())
        facets.append({"name": name, "file": f"data/facets/{_safe_name(name)}.bin", "values": ordered,
                       "counts": [counts[v] for v in ordered]})
    return facets


# --- values -------------------------------------------------------------------------------------

def _describe_field(table: pa.Table, name: str) -> dict:
    kind = table.schema.field(name).type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        label = "text"
    elif (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and (
            pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)):
        label = "list"
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        label = "number"
    elif pa.types.is_boolean(kind):
        label = "boolean"
    else:
        label = "other"
    has_links = label == "text" and bool(pc.any(pc.starts_with(
        pc.fill_null(table.column(name).cast(pa.string()), ""), "http")).as_py() or False)
    return {"name": name, "kind": label, "links": has_links}


def _text(value, limit: int) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, list):
        value = "; ".join(str(v) for v in value if v is not None)
    elif not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return value if len(value) <= limit else value[:limit - 1] + "…"


def _detail(value, kind: str):
    if value is None:
        return None
    if kind == "number":
        return value if isinstance(value, int) or math.isfinite(value) else None
    if kind == "boolean":
        return bool(value)
    if kind == "list":
        return [_text(v, fmt.DETAIL_TEXT) for v in value if v is not None]
    return _text(value, fmt.DETAIL_TEXT)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) + f"-{fmt.fnv1a32(name):08x}"


def _quantise(positions: np.ndarray) -> np.ndarray:
    low, high = positions.min(axis=0), positions.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return np.round((positions - low) / span * 65535).astype(np.uint32)


def _morton(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    def spread(v):
        v = v.astype(np.uint64) & 0xFFFF
        v = (v | (v << 8)) & 0x00FF00FF
        v = (v | (v << 4)) & 0x0F0F0F0F
        v = (v | (v << 2)) & 0x33333333
        return (v | (v << 1)) & 0x55555555
    return spread(x) | (spread(y) << 1)


def _static(name: str) -> bytes:
    return importlib.resources.files("imgsim.explorer").joinpath("static").joinpath(name).read_bytes()
