"""Decoding fetched bytes into the model's 224x224 input (imgsim.images does the work).

Runs on the download pool's threads (see download.py), so that decoding
overlaps inference instead of taking turns with it.
"""
from __future__ import annotations

from typing import Union

from imgsim.failures import STAGE_DECODE, Failure, StageError
from imgsim.images import DecodeConfig, decode_image
from imgsim.records import DecodedImage, FetchedImage
from imgsim.transforms.failures import failure_from


def decode_fetched(image: FetchedImage, config: DecodeConfig) -> Union[DecodedImage, Failure]:
    """A DecodedImage, or a decode-stage Failure; never raises."""
    try:
        result = decode_image(image.data, config)
    except StageError as e:
        e.attempts = image.attempts
        e.http_status = e.http_status or image.http_status
        return failure_from(image.row, STAGE_DECODE, e)
    except Exception as e:  # Pillow has many failure modes; none may cost the job
        return failure_from(image.row, STAGE_DECODE, StageError(
            "internal_error", f"{type(e).__name__}: {e}"[:300], image.http_status, image.attempts))
    return DecodedImage(row=image.row, sha256=image.sha256, width=result.width, height=result.height,
                        pixels=result.pixels, etag=image.etag, last_modified=image.last_modified)
