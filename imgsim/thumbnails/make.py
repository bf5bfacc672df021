"""Making a thumbnail from the image decoding has already resized for the model.

Decoding (imgsim.embed.decode) turns every image, however large, into a
small aspect-preserving image on its way to the model's 224x224 input: its
long side is 224 px with --resize pad, its short side with --resize crop.
That image is the thumbnail's source, so a thumbnail costs neither a second
download nor a second decode of the full-size pixels, and it stays inside the
decode memory budget. It is shrunk further only when its long side exceeds
THUMBNAIL_MAX_SIDE (a crop-mode panorama), then encoded as WebP: at this size
about 5-15 KB, a tenth of a JPEG museum "web" image.

A thumbnail is a convenience, never a reason to lose a row: any error gives
None, the row is still embedded, and the explorer shows the original URL.
"""
from __future__ import annotations

import dataclasses
import io
import logging
from typing import Optional

from PIL import Image

THUMBNAIL_MAX_SIDE = 256
THUMBNAIL_FORMAT = "webp"
THUMBNAIL_MIME = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}
_QUALITY = 80
# libwebp's effort (0-6). Every embedded image pays for its thumbnail on the worker's CPU, beside an
# int8 model that takes ~36 ms an image: effort 2 encodes a 224 px thumbnail in about half the time
# of effort 4 (~2.7 ms against ~5 ms here) for files about 2% larger.
_METHOD = 2

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Thumbnail:
    """An encoded thumbnail and its pixel size."""

    data: bytes
    width: int
    height: int
    format: str = THUMBNAIL_FORMAT

    @property
    def mime_type(self) -> str:
        return THUMBNAIL_MIME.get(self.format, "application/octet-stream")


def make_thumbnail(resized: Image.Image, max_side: int = THUMBNAIL_MAX_SIDE) -> Optional[Thumbnail]:
    """A WebP thumbnail of an already resized RGB or L image, or None when it cannot be made."""
    try:
        img = resized if resized.mode in ("RGB", "L") else resized.convert("RGB")
        if max(img.size) > max_side:
            img = img.copy()
            img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "WEBP", quality=_QUALITY, method=_METHOD)
        return Thumbnail(buf.getvalue(), img.size[0], img.size[1])
    except Exception as e:  # an encoder problem costs the thumbnail, never the row
        _LOG.debug("no thumbnail: %s: %s", type(e).__name__, e)
        return None
