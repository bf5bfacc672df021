"""Downloading and decoding images, many at a time, so that both hide behind inference.

Beam calls a DoFn one element at a time per thread, and on DirectRunner the
whole fused chain runs in one thread: a decode step of its own would leave a
core idle while it ran, since the model waits for it. So each DoFn instance
keeps a pool of threads that download an image and decode it
(transforms/decode.py; Pillow releases the GIL): process() submits and
returns at once, emitting whatever has finished; only when too many images
are in flight does it wait. The model computes one batch while the next
images arrive and decode. Results that finish after their element's
process() call are emitted as WindowedValues carrying the original window.

Host limits and robots.txt rules are shared by all threads of a worker
process through apache_beam.utils.shared.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from imgsim import reuse
from imgsim.failures import STAGE_DOWNLOAD, StageError
from imgsim.fetch import FetchConfig, Politeness
from imgsim.images import DecodeConfig
from imgsim.records import SOURCE_STORAGE, CatalogueRow, DecodedImage, FetchedImage
from imgsim.storage import ObjectStore
from imgsim.transforms.decode import decode_fetched
from imgsim.transforms.failures import FAILURES, NAMESPACE, failed, failure_from
from imgsim.transforms.reuse import REUSED

_NOT_MODIFIED = "_not_modified"  # marks, on a reused row, whether the server answered 304


class DownloadImages(beam.PTransform):
    """rows -> outputs with `images` (DecodedImage), REUSED (embedding rows) and FAILURES.

    A row carrying an earlier embedding (`row.previous`) is fetched conditionally:
    if the server answers 304, or sends the same bytes again, the earlier
    embedding is reused and the image skips decoding and inference."""

    def __init__(self, config: FetchConfig, decode: DecodeConfig, threads: int = 16):
        super().__init__()
        if threads < 1:
            raise ValueError("download threads must be at least 1")
        self._config = config
        self._decode = decode
        self._threads = threads

    def expand(self, rows):
        return rows | "DownloadAndDecode" >> beam.ParDo(
            _DownloadFn(self._config, self._decode, self._threads, shared.Shared())
        ).with_outputs(FAILURES, REUSED, main="images")


class _DownloadFn(beam.DoFn):
    def __init__(self, config: FetchConfig, decode: DecodeConfig, threads: int, shared_handle: shared.Shared):
        self._config = config
        self._decode = decode
        self._threads = threads
        self._shared = shared_handle
        self._max_in_flight = 2 * threads
        self._downloaded = Metrics.counter(NAMESPACE, "downloaded")
        self._bytes = Metrics.counter(NAMESPACE, "bytes_downloaded")
        self._latency_ms = Metrics.distribution(NAMESPACE, "download_ms")
        self._not_modified = Metrics.counter(NAMESPACE, "reused_not_modified")
        self._same_bytes = Metrics.counter(NAMESPACE, "reused_same_bytes")
        self._decoded = Metrics.counter(NAMESPACE, "decoded")
        self._decode_ms = Metrics.distribution(NAMESPACE, "decode_ms")

    def setup(self):
        politeness = self._shared.acquire(lambda: Politeness(self._config), tag=repr(self._config))
        self._fetcher = politeness.fetcher(self._config, pool_size=self._threads)
        self._store = ObjectStore()
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="imgsim-download")

    def start_bundle(self):
        self._pending = {}

    def process(self, row: CatalogueRow, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        self._pending[self._pool.submit(self._download, row)] = (timestamp, window)
        yield from self._emit(wait_until=self._max_in_flight - 1)

    def finish_bundle(self):
        yield from self._emit(wait_until=0)

    def teardown(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if getattr(self, "_fetcher", None) is not None:
            self._fetcher.close()

    def _emit(self, wait_until: int):
        """Emit finished downloads; block while more than wait_until are still running."""
        while self._pending:
            done = [f for f in self._pending if f.done()]
            if not done:
                if len(self._pending) <= wait_until:
                    return
                done, _ = concurrent.futures.wait(self._pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                timestamp, window = self._pending.pop(future)
                result, fetched, download_s, decode_s = future.result()
                # Metrics are per thread in Beam: count here, on the bundle's thread.
                if fetched is not None:
                    self._downloaded.inc()
                    self._bytes.inc(fetched)
                    self._latency_ms.update(int(download_s * 1000))
                if isinstance(result, dict):  # an earlier embedding stands in
                    (self._not_modified if result.pop(_NOT_MODIFIED) else self._same_bytes).inc()
                    yield beam.pvalue.TaggedOutput(REUSED, WindowedValue(result, timestamp, [window]))
                elif isinstance(result, DecodedImage):
                    self._decoded.inc()
                    self._decode_ms.update(int(decode_s * 1000))
                    yield WindowedValue(result, timestamp, [window])
                else:
                    tagged = failed(result)
                    yield beam.pvalue.TaggedOutput(tagged.tag, WindowedValue(tagged.value, timestamp, [window]))

    def _download(self, row: CatalogueRow):
        """Runs on a pool thread and never raises: (DecodedImage, reused row or Failure,
        bytes fetched or None, download seconds, decode seconds)."""
        started = time.monotonic()
        result = self._fetch_row(row)
        fetched = time.monotonic()
        if not isinstance(result, FetchedImage):
            return result, None, fetched - started, 0.0
        decoded = decode_fetched(result, self._decode)
        return decoded, len(result.data), fetched - started, time.monotonic() - fetched

    def _fetch_row(self, row: CatalogueRow):
        etag = last_modified = None
        try:
            if row.source == SOURCE_STORAGE:
                data, status, attempts = self._read_storage(row.url), None, 1
            else:
                headers = reuse.conditional_headers(row.previous) if row.previous else None
                result = self._fetcher.fetch(row.url, headers=headers)
                data, status, attempts = result.data, result.status, result.attempts
                etag, last_modified = result.etag, result.last_modified
        except StageError as e:
            return failure_from(row, STAGE_DOWNLOAD, e)
        except Exception as e:  # a bug or an unforeseen library error must still account for the row
            return failure_from(row, STAGE_DOWNLOAD, StageError(
                "internal_error", f"{type(e).__name__}: {e}"[:300]))
        sha256 = hashlib.sha256(data).hexdigest()
        if row.previous is not None and (status == 304 or sha256 == row.previous.sha256):
            reused = reuse.reused_row(row, row.previous, reuse.REUSED, etag, last_modified)
            reused[_NOT_MODIFIED] = status == 304
            return reused
        if status == 304:  # a 304 we did not ask for
            return failure_from(row, STAGE_DOWNLOAD, StageError("empty_body", "304 without a request for it", 304))
        return FetchedImage(row=row, data=data, sha256=sha256, http_status=status, attempts=attempts,
                            etag=etag, last_modified=last_modified)

    def _read_storage(self, path: str) -> bytes:
        cap = self._config.max_bytes
        try:
            with self._store.open_read(path) as f:
                data = f.read(cap + 1)
        except Exception as e:
            raise StageError("read_error", f"{type(e).__name__}: {e}"[:300]) from None
        if len(data) > cap:
            raise StageError("too_large", f"file exceeds {cap} bytes")
        if not data:
            raise StageError("empty_body", "the file is empty")
        return data
