"""The explorer site's format: its entry page, its builds, and what each file of a build holds.

    SITE/index.html                       the entry point, written last: the explorer's page naming its
                                          build (<meta name="imgsim-build">); cached briefly (ENTRY_CACHE)
    SITE/b/BUILD/                         one build, never rewritten (cached for a year, BUILD_CACHE); a
                                          rebuild writes a new BUILD, then the entry point, then deletes
                                          all but these two (visitors on the old page keep working)
    B/app.js, B/app.css                   the explorer (plain JavaScript, no framework, nothing fetched
                                          from elsewhere)
    B/data/site.json                      what the site holds: count, fields, facets, shard sizes, map
    B/data/cards/NNNNN.json               CARD_ROWS items per file, in site order: [id, url, thumb, field...]
    B/data/items/NNNNN.json               one item per id, in ITEM_BUCKETS files chosen by fnv1a32(id):
                                          {id: {r, id, url, w, h, th, m, n: [[site row, score]...], g}}
    B/data/groups/NNNNN.json              GROUP_PAGE near-duplicate groups per file, largest first:
                                          [{g, size, rows: [site rows]}]
    B/data/outliers.json                  the OUTLIERS_SHOWN most isolated items, most first: [[site row, score]]
    B/data/search/NNNNN.txt               SEARCH_ROWS lines per file: the item's id and text, lower case
    B/data/map.bin                        uint16 x, y per item (little-endian, site order)
    B/data/clusters.bin                   uint8 cluster per item
    B/data/facets/NAME.bin                uint8 per item: 0 no value, i + 1 the facet's values[i]
    B/thumbs/NNNNN.bin                    THUMB_PACK thumbnails end to end (site order); an item's
                                          `thumb` is [pack, offset, length], read with an HTTP Range
                                          request where the host supports it, else the whole pack

Site order: items sorted along a Z-order curve over the 2-D map, so similar
items sit in the same card shard and thumbnail pack (the collection view lists
them that way too), and a page of the grid or an item's neighbours needs few
files. Every file is small and fetched only when a view needs it: opening the
site reads site.json and one card shard, whatever the collection's size.
"""
from __future__ import annotations

import re
from typing import Optional

FORMAT_VERSION = 1
CARD_ROWS = 256
ITEMS_PER_BUCKET = 64
THUMB_PACK = 64
GROUP_PAGE = 40
GROUP_MEMBERS_SHOWN = 100
OUTLIERS_SHOWN = 500
SEARCH_ROWS = 16384
FACET_MAX_VALUES = 64
CARD_TEXT = 160  # characters of a metadata value on a card (the item view has DETAIL_TEXT)
DETAIL_TEXT = 2000
CARD_FIELDS_MAX = 8
FNV_OFFSET, FNV_PRIME = 0x811C9DC5, 0x01000193

ENTRY = "index.html"
BUILDS = "b"
ENTRY_CACHE = "no-cache"  # revalidated on every visit: a refresh shows at once
BUILD_CACHE = "public, max-age=31536000, immutable"
_BUILD_META = re.compile(r'<meta name="imgsim-build" content="b/([A-Za-z0-9._-]+)/">')


def build_dir(build: str) -> str:
    """The build's folder under SITE, with its trailing slash (what the entry page's meta names)."""
    return f"{BUILDS}/{build}/"


def entry_page(template: str, build: str) -> str:
    """The explorer's page (static/index.html) pointed at a build: its scripts and data load from there."""
    root = build_dir(build)
    return (template.replace("<head>", f'<head>\n<meta name="imgsim-build" content="{root}">', 1)
            .replace('href="app.css"', f'href="{root}app.css"', 1)
            .replace('src="app.js"', f'src="{root}app.js"', 1))


def build_of(page: str) -> Optional[str]:
    """The build an entry page names (None for anything else)."""
    found = _BUILD_META.search(page)
    return found.group(1) if found else None


def fnv1a32(text: str) -> int:
    """FNV-1a (32-bit) of text's UTF-8 bytes: app.js computes the same to find an id's item file."""
    h = FNV_OFFSET
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return h


def item_buckets(count: int) -> int:
    return max(1, -(-count // ITEMS_PER_BUCKET))


def shard_name(number: int, suffix: str) -> str:
    return f"{number:05d}{suffix}"
