"""Decoding downloaded bytes into 224x224 RGB arrays (imgsim.images does the work)."""
from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from imgsim.failures import STAGE_DECODE, StageError
from imgsim.images import DecodeConfig, decode_image
from imgsim.records import DecodedImage, FetchedImage
from imgsim.transforms.failures import FAILURES, NAMESPACE, failed, failure_from


class DecodeImages(beam.PTransform):
    """images -> outputs with `decoded` (DecodedImage) and FAILURES."""

    def __init__(self, config: DecodeConfig):
        super().__init__()
        self._config = config

    def expand(self, images):
        return images | "Decode" >> beam.ParDo(_DecodeFn(self._config)).with_outputs(FAILURES, main="decoded")


class _DecodeFn(beam.DoFn):
    def __init__(self, config: DecodeConfig):
        self._config = config
        self._decoded = Metrics.counter(NAMESPACE, "decoded")
        self._decode_ms = Metrics.distribution(NAMESPACE, "decode_ms")

    def process(self, image: FetchedImage):
        started = time.monotonic()
        try:
            result = decode_image(image.data, self._config)
        except StageError as e:
            e.attempts = image.attempts
            e.http_status = e.http_status or image.http_status
            yield failed(failure_from(image.row, STAGE_DECODE, e))
            return
        except Exception as e:  # Pillow has many failure modes; none may cost the job
            yield failed(failure_from(image.row, STAGE_DECODE, StageError(
                "internal_error", f"{type(e).__name__}: {e}"[:300], image.http_status, image.attempts)))
            return
        self._decoded.inc()
        self._decode_ms.update(int((time.monotonic() - started) * 1000))
        yield DecodedImage(row=image.row, sha256=image.sha256, width=result.width, height=result.height,
                           pixels=result.pixels, etag=image.etag, last_modified=image.last_modified)
