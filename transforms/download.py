"""Downloading and decoding images, many at a time, so that both hide behind inference.

Beam calls a DoFn one element at a time per thread, and on DirectRunner the
whole fused chain runs in one thread: a decode step of its own would leave a
core idle while it ran, since the model waits for it. So each DoFn instance
keeps a pool of threads, each running imgsim.fetch.acquire (download, reuse
check, Pillow decode, which releases the GIL): process() submits and returns
at once, emitting whatever has finished; only when too many images are in
flight does it wait. The model computes one batch while the next images
arrive and decode. Results that finish after their element's process() call
are emitted as WindowedValues carrying the original window.

Every decision about a row lives in acquire(); this DoFn keeps the pool, the
windows and the metrics. Host limits, robots.txt rules and the decode memory
budget (imgsim.embed.memory) are shared by all threads of a worker process
through apache_beam.utils.shared, so decoding stays within --decode-memory-mb
per process however many download threads run.

With lanes (imgsim.fetch.lanes, the default), the host limits are the whole job's: rows are
keyed by (host, lane) and grouped, so one worker at a time downloads a lane's rows, at the lane's
share of the limits. A worker holding several lanes runs them side by side, round robin, each up to
its own connections. The grouping waits for the input to be read before the first download (the
rows, not the images, are shuffled). On Dataflow, a host's rows can keep at most `lanes` workers
busy: more workers than that (autoscaling on a single-host collection) find nothing to do for it,
and the throttling counter below keeps the autoscaler from asking for them.

Time spent waiting to be polite (host limits, Retry-After, backoff) is
reported as `cumulativeThrottlingSeconds`, the counter Dataflow's autoscaler
discounts, as Beam's own throttled I/O does (apache_beam.io.components.
adaptive_throttler): a job held back by a museum's limits should not get more
workers, which would only add load on the same server. The download threads
add to the Fetcher's ThrottleMeter; whole seconds are moved to the counter
here, on the bundle's thread, where Beam keeps metrics.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue

from imgsim.embed.decode import DecodeConfig
from imgsim.embed.memory import DEFAULT_DECODE_MEMORY_MB, MB, DecodeBudget, limit_arenas
from imgsim.fetch.acquire import Acquired, Reused, acquire
from imgsim.fetch.http import FetchConfig, Fetcher, shared_politeness
from imgsim.fetch.lanes import Lanes
from imgsim.records import DecodedImage, CatalogueRow
from imgsim.storage import ObjectStore
from imgsim.transforms.failures import FAILURES, NAMESPACE, failed

REUSED = "reused"
# The name Dataflow's autoscaler reads (in any namespace), as Beam's throttled I/O uses it.
THROTTLING_COUNTER = "cumulativeThrottlingSeconds"


class DownloadImages(beam.PTransform):
    """rows -> outputs with `images` (DecodedImage), REUSED (EmbeddingRow) and FAILURES.

    A row carrying an earlier embedding (`row.previous`) is fetched conditionally:
    if the server answers 304, or sends the same bytes again, the earlier
    embedding is reused and the image skips decoding and inference."""

    def __init__(self, config: FetchConfig, decode: DecodeConfig, threads: int = 16,
                 decode_memory_bytes: int = DEFAULT_DECODE_MEMORY_MB * MB, thumbnails: bool = False,
                 lanes: Optional[Lanes] = None):
        """lanes: the host limits hold for the whole job (None: per worker process)."""
        super().__init__()
        if threads < 1:
            raise ValueError("download threads must be at least 1")
        self._config = config
        self._decode = decode
        self._threads = threads
        self._decode_memory = decode_memory_bytes
        self._thumbnails = thumbnails
        self._lanes = lanes

    def expand(self, rows):
        args = (self._config, self._decode, self._threads, self._decode_memory, self._thumbnails)
        if self._lanes is None:
            return rows | "DownloadAndDecode" >> beam.ParDo(_DownloadFn(*args)).with_outputs(
                FAILURES, REUSED, main="images")
        return (rows
                | "KeyByLane" >> beam.Map(_keyed, self._lanes)
                | "GroupByLane" >> beam.GroupByKey()
                | "DownloadAndDecode" >> beam.ParDo(_LaneDownloadFn(*args, lanes=self._lanes)).with_outputs(
                    FAILURES, REUSED, main="images"))


def _keyed(row: CatalogueRow, lanes: Lanes):
    return lanes.key(row.url, row.id), row


@dataclasses.dataclass
class _Lane:
    """A lane's rows being downloaded: its own share of the host limits and its element's window."""

    rows: Iterator[CatalogueRow]
    fetcher: Fetcher
    connections: int
    timestamp: object
    window: object
    in_flight: int = 0


class _DownloadFn(beam.DoFn):
    def __init__(self, config: FetchConfig, decode: DecodeConfig, threads: int, decode_memory_bytes: int,
                 thumbnails: bool = False):
        self._config = config
        self._decode = decode
        self._threads = threads
        self._decode_memory = decode_memory_bytes
        self._thumbnails = thumbnails
        # Per worker process, shared by every DoFn instance and thread in it.
        self._shared_politeness = shared.Shared()
        self._shared_budget = shared.Shared()
        self._max_in_flight = 2 * threads
        self._downloaded = Metrics.counter(NAMESPACE, "downloaded")
        self._bytes = Metrics.counter(NAMESPACE, "bytes_downloaded")
        self._latency_ms = Metrics.distribution(NAMESPACE, "download_ms")
        self._not_modified = Metrics.counter(NAMESPACE, "reused_not_modified")
        self._same_bytes = Metrics.counter(NAMESPACE, "reused_same_bytes")
        self._decoded = Metrics.counter(NAMESPACE, "decoded")
        self._decode_ms = Metrics.distribution(NAMESPACE, "decode_ms")
        self._throttled = Metrics.counter(NAMESPACE, THROTTLING_COUNTER)
        self._no_thumbnail = Metrics.counter(NAMESPACE, "thumbnail_failed")

    def setup(self):
        limit_arenas()  # before this DoFn's download threads start (imgsim.embed.memory)
        politeness = self._shared_politeness.acquire(lambda: shared_politeness(self._config),
                                                     tag=repr(self._config))
        self._budget = self._shared_budget.acquire(lambda: DecodeBudget(self._decode_memory),
                                                   tag=str(self._decode_memory))
        self._fetcher = Fetcher(self._config, politeness, pool_size=self._threads)
        self._store = ObjectStore()
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="imgsim-download")

    def start_bundle(self):
        self._pending = {}

    def process(self, row: CatalogueRow, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        self._submit(row, self._fetcher, timestamp, window)
        yield from self._emit(wait_until=self._max_in_flight - 1)

    def _submit(self, row: CatalogueRow, fetcher: Fetcher, timestamp, window, lane: Optional[_Lane] = None):
        future = self._pool.submit(acquire, row, fetcher, self._store, self._decode, self._budget,
                                   thumbnails=self._thumbnails)
        self._pending[future] = (timestamp, window, lane)

    def _finished(self, lane: Optional[_Lane]) -> None:
        """A row's download ended (and was emitted)."""

    def finish_bundle(self):
        yield from self._emit(wait_until=0)

    def teardown(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if getattr(self, "_fetcher", None) is not None:
            self._fetcher.close()

    def _emit(self, wait_until: int):
        """Emit finished rows; block while more than wait_until are still running."""
        yield from self._emit_finished(wait_until)
        throttled = self._fetcher.throttled.take_whole_seconds()  # the fraction waits for the next call
        if throttled:
            self._throttled.inc(throttled)

    def _emit_finished(self, wait_until: int):
        while self._pending:
            done = [f for f in self._pending if f.done()]
            if not done:
                if len(self._pending) <= wait_until:
                    return
                done, _ = concurrent.futures.wait(self._pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                timestamp, window, lane = self._pending.pop(future)
                self._finished(lane)
                tag, value = self._outcome(future.result())
                windowed = WindowedValue(value, timestamp, [window])
                yield windowed if tag is None else beam.pvalue.TaggedOutput(tag, windowed)

    def _outcome(self, acquired: Acquired):
        """(output tag or None for the main output, value); counts metrics on the bundle's thread,
        where Beam keeps them."""
        if acquired.bytes_fetched is not None:
            self._downloaded.inc()
            self._bytes.inc(acquired.bytes_fetched)
            self._latency_ms.update(int(acquired.download_seconds * 1000))
        result = acquired.result
        if isinstance(result, Reused):
            (self._not_modified if result.not_modified else self._same_bytes).inc()
            return REUSED, result.row
        if isinstance(result, DecodedImage):
            self._decoded.inc()
            if self._thumbnails and result.thumbnail is None:
                self._no_thumbnail.inc()
            self._decode_ms.update(int(acquired.decode_seconds * 1000))
            return None, result
        tagged = failed(result)
        return tagged.tag, tagged.value


class _LaneDownloadFn(_DownloadFn):
    """((host, lane), rows) -> as _DownloadFn, each lane at its share of the host's limits."""

    def __init__(self, *args, lanes: Lanes):
        super().__init__(*args)
        self._lane_limits = lanes

    def start_bundle(self):
        super().start_bundle()
        self._lanes: list[_Lane] = []

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        key, rows = element
        limiter = self._lane_limits.limiter(key)
        if limiter is None:  # storage rows: only the threads limit them
            fetcher, connections = self._fetcher, self._threads
        else:
            fetcher, connections = self._fetcher.limited_by(limiter), self._lane_limits.connections(key[1])
        self._lanes.append(_Lane(iter(rows), fetcher, connections, timestamp, window))
        self._fill()
        yield from self._emit(wait_until=self._max_in_flight - 1)

    def finish_bundle(self):
        self._fill()
        yield from self._emit(wait_until=0)

    def _finished(self, lane: Optional[_Lane]) -> None:
        lane.in_flight -= 1
        self._fill()

    def _fill(self) -> None:
        """Start rows round robin over the lanes with a connection free, up to the in-flight bound."""
        started = True
        while started and len(self._pending) < self._max_in_flight:
            started = False
            for lane in list(self._lanes):
                if len(self._pending) >= self._max_in_flight:
                    return
                if lane.in_flight >= lane.connections:
                    continue
                row = next(lane.rows, None)
                if row is None:
                    self._lanes.remove(lane)
                    continue
                lane.in_flight += 1
                self._submit(row, lane.fetcher, lane.timestamp, lane.window, lane)
                started = True
