"""A host's limits hold for the job: rows go down lanes, each with its share, whatever the workers."""
import io
import os
import time

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from catalogue_server import CatalogueServer
from imgsim.embed.decode import DecodeConfig
from imgsim.fetch.http import FetchConfig
from imgsim.fetch.lanes import STORAGE_SPREAD, Lanes, host_of
from imgsim.records import CatalogueRow
from imgsim.transforms.download import DownloadImages


def test_a_hosts_connections_and_rate_are_split_among_its_lanes():
    lanes = Lanes.sharing(4, max_connections=6, max_rps=12.0)
    assert [lanes.connections(n) for n in range(4)] == [2, 2, 1, 1]  # 6 in all, none without one
    limiter = lanes.limiter(("museum.example", 0))
    assert limiter._max_connections == 2 and limiter._interval == pytest.approx(4 / 12.0)
    assert Lanes.sharing(4, max_connections=2, max_rps=0).count == 2  # never more lanes than connections
    assert lanes.limiter(("", 3)) is None  # storage rows: no host to spare
    with pytest.raises(ValueError):
        Lanes(count=3, max_connections=2, max_rps=0)


def test_rows_spread_over_a_hosts_lanes_the_same_way_in_every_process():
    lanes = Lanes.sharing(4, 8, 20.0)
    keys = [lanes.key(f"https://Museum.Example:8443/img/{i}.jpg", f"id-{i}") for i in range(2000)]
    assert {host for host, _ in keys} == {"museum.example"}
    counts = np.bincount([n for _, n in keys], minlength=4)
    assert len(counts) == 4 and counts.min() > 400  # each lane takes a fair share
    assert lanes.key("https://museum.example/x.jpg", "id-7") == keys[7]  # crc32, not Python's salted hash
    storage = {lanes.key(f"gs://bucket/{i}.jpg", str(i)) for i in range(2000)}
    assert {host for host, _ in storage} == {""} and len(storage) > 1950  # nearly a key each: no lanes to keep
    assert all(0 <= n < STORAGE_SPREAD for _, n in storage)
    assert host_of("ftp://museum.example/x") == "" and host_of("not a url") == ""


def jpeg(seed: int) -> bytes:
    sink = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(sink, "JPEG")
    return sink.getvalue()


@pytest.mark.model  # the slow tier: worker processes
def test_two_worker_processes_together_keep_to_one_hosts_limits(tmp_path, monkeypatch):
    """Two DirectRunner worker processes download 48 images of one host whose answers take 0.2 s:
    the server never has more requests in flight than --max-connections-per-host, nor more starts in
    any second than the rate allows, while both processes download."""
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.abspath(__file__)))
    server = CatalogueServer().start()
    connections, rps = 4, 8.0

    def slow(data):
        def respond(h):
            time.sleep(0.2)
            h.send(200, data, "image/jpeg")
        return respond

    rows = [CatalogueRow(id=f"r{i:02d}", url=server.route(f"/i/{i}.jpg", slow(jpeg(i))), metadata={}, position=i)
            for i in range(48)]
    config = FetchConfig(allow_private_addresses=True, max_connections_per_host=connections,
                         max_requests_per_second_per_host=rps, max_retries=0)
    lanes = Lanes.sharing(4, connections, rps)
    try:
        options = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                                   "--direct_num_workers=2"])
        with beam.Pipeline(options=options) as p:
            images = (p | beam.Create(rows, reshuffle=False)
                      | DownloadImages(config, DecodeConfig(), threads=8, lanes=lanes)).images
            assert_that(images | beam.Map(lambda d: d.row.id), equal_to([r.id for r in rows]))
            assert_that(images | "Pid" >> beam.Map(lambda _: os.getpid()) | beam.Distinct()
                        | beam.combiners.Count.Globally(), equal_to([2]), label="both processes downloaded")
    finally:
        server.stop()
    starts = sorted(entry["time"] for entry in server.log)
    assert len(starts) == 48
    assert server.max_in_flight <= connections
    # Each lane starts at most rps/lanes requests a second, the first at once: a one-second window
    # holds at most rps + lanes starts (without lanes, two processes may start twice the rate).
    busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert busiest <= rps + lanes.count
    assert (len(starts) - lanes.count) / (starts[-1] - starts[0]) <= rps * 1.05
