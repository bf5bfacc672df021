"""The explorer site's data format: what each file under SITE/data/ and SITE/thumbs/ holds.

    SITE/index.html, app.js, app.css      the explorer (plain JavaScript, no framework, nothing fetched
                                          from elsewhere)
    SITE/data/site.json                   what the site holds: count, fields, facets, shard sizes, map
    SITE/data/cards/NNNNN.json            CARD_ROWS items per file, in site order: [id, url, thumb, field...]
    SITE/data/items/NNNNN.json            one item per id, in ITEM_BUCKETS files chosen by fnv1a32(id):
                                          {id: {r, id, url, w, h, th, m, n: [[site row, score]...], g}}
    SITE/data/groups/NNNNN.json           GROUP_PAGE near-duplicate groups per file, largest first:
                                          [{g, size, rows: [site rows]}]
    SITE/data/outliers.json               the OUTLIERS_SHOWN most isolated items, most first: [[site row, score]]
    SITE/data/search/NNNNN.txt            SEARCH_ROWS lines per file: the item's id and text, lower case
    SITE/data/map.bin                     uint16 x, y per item (little-endian, site order)
    SITE/data/clusters.bin                uint8 cluster per item
    SITE/data/facets/NAME.bin             uint8 per item: 0 no value, i + 1 the facet's values[i]
    SITE/thumbs/NNNNN.bin                 THUMB_PACK thumbnails end to end (site order); an item's
                                          `thumb` is [pack, offset, length], read with an HTTP Range
                                          request where the host supports it, else the whole pack

Site order: items sorted along a Z-order curve over the 2-D map, so similar
items sit in the same card shard and thumbnail pack (the collection view lists
them that way too), and a page of the grid or an item's neighbours needs few
files. Every file is small and fetched only when a view needs it: opening the
site reads site.json and one card shard, whatever the collection's size.
"""
from __future__ import annotations

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
