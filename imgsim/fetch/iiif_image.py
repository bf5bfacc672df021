"""Asking a IIIF Image API service for the size the model needs instead of the full image.

The model sees 224 px (the long side with --resize pad, the short side with crop); a museum's
full image is often 3,000 px or more, so most of its bytes would be thrown away. Where a row has
an Image API service (a IIIF manifest's image, or a URL of the form
`BASE/region/size/rotation/quality.format`), its `info.json` is read (v2 or v3, any level) and the
smallest derivative that is still large enough is asked for: at level 1 and above a width or a
height (`w,` or `,h`, which every level-1 server takes), within `maxWidth`, `maxHeight` and
`maxArea`; at level 0 the smallest of its listed `sizes` that is large enough (else its largest),
or the image itself. Nothing here downloads: `derivative_url` is pure, the caller fetches.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional

from imgsim.embed.decode import MODEL_INPUT_SIZE

# BASE/region/size/rotation/quality.format (Image API 2 and 3)
_IMAGE_URL = re.compile(r"^(?P<base>https?://.+?)/(full|square|\d+,\d+,\d+,\d+|pct:[\d.,]+)/"
                        r"(full|max|\^?!?\d*,\d*|\^?pct:[\d.]+)/!?\d+(\.\d+)?/"
                        r"(default|color|colour|gray|grey|bitonal|native)\.(jpg|jpeg|png|webp|tif|tiff|gif)$")


@dataclasses.dataclass(frozen=True)
class ServiceInfo:
    id: str
    version: int
    level: int
    width: int
    height: int
    sizes: tuple[tuple[int, int], ...] = ()
    max_width: Optional[int] = None
    max_height: Optional[int] = None
    max_area: Optional[int] = None


def service_of_url(url: str) -> Optional[str]:
    """The service base of an Image API image URL (None for any other URL)."""
    found = _IMAGE_URL.match(url)
    return found.group("base") if found else None


def info_url(service: str) -> str:
    return service.rstrip("/") + "/info.json"


def parse_info(document: Any) -> ServiceInfo:
    """An info.json of either version; ValueError when it is not one."""
    if not isinstance(document, dict):
        raise ValueError("info.json is not a JSON object")
    ident = document.get("id", document.get("@id"))
    width, height = document.get("width"), document.get("height")
    if not isinstance(ident, str) or not _positive(width) or not _positive(height):
        raise ValueError("info.json has no id, width or height")
    context = str(document.get("@context", ""))
    version = 3 if document.get("type") == "ImageService3" or "image/3" in context else 2
    profile = document.get("profile")
    names = [p for p in (profile if isinstance(profile, list) else [profile]) if isinstance(p, str)]
    found = [int(m.group(1)) for m in (re.search(r"level(\d)", n) for n in names) if m]
    level = min(found) if found else 0
    limits = {}
    for entry in [document] + [p for p in (profile if isinstance(profile, list) else []) if isinstance(p, dict)]:
        for key in ("maxWidth", "maxHeight", "maxArea"):
            if _positive(entry.get(key)):
                limits[key] = entry[key]
    sizes = tuple((s["width"], s["height"]) for s in document.get("sizes") or []
                  if isinstance(s, dict) and _positive(s.get("width")) and _positive(s.get("height")))
    return ServiceInfo(ident.rstrip("/"), version, level, width, height, tuple(sorted(sizes, key=lambda s: s[0] * s[1])),
                       limits.get("maxWidth"), limits.get("maxHeight"), limits.get("maxArea"))


def derivative_url(info: ServiceInfo, resize: str, needed: int = MODEL_INPUT_SIZE) -> Optional[str]:
    """The URL of the smallest derivative the model can use (resize: "pad" or "crop"), or None
    when the service offers nothing smaller than the image itself."""
    def enough(w: int, h: int) -> bool:
        return (max(w, h) if resize == "pad" else min(w, h)) >= min(needed, _side(info.width, info.height, resize))

    if info.level == 0:
        usable = [s for s in info.sizes if enough(*s)]
        choice = usable[0] if usable else (info.sizes[-1] if info.sizes else None)
        if choice is None or choice == (info.width, info.height):
            return None
        size = f"{choice[0]},{choice[1]}" if info.version == 3 else f"{choice[0]},"
        return f"{info.id}/full/{size}/0/default.jpg"
    # the side the model measures (pad: the long one, crop: the short one) made `needed`, never
    # larger than the image; the server keeps the aspect
    by_width = (info.width >= info.height) if resize == "pad" else (info.width <= info.height)
    side = min(needed, _side(info.width, info.height, resize))
    scale = side / _side(info.width, info.height, resize)
    w = side if by_width else max(1, round(info.width * scale))
    h = max(1, round(info.height * scale)) if by_width else side
    limit = 1.0  # what the server's limits allow, as a factor on (w, h)
    if info.max_width:
        limit = min(limit, info.max_width / w)
    if info.max_height:
        limit = min(limit, info.max_height / h)
    if info.max_area:
        limit = min(limit, math.sqrt(info.max_area / (w * h)))
    if limit < 1.0:
        w, h = max(1, math.floor(w * limit)), max(1, math.floor(h * limit))
    if (w, h) == (info.width, info.height):
        return None
    size = f"{w}," if by_width else f",{h}"
    return f"{info.id}/full/{size}/0/default.jpg"


def _side(width: int, height: int, resize: str) -> int:
    return max(width, height) if resize == "pad" else min(width, height)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
