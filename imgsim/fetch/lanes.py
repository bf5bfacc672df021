"""Politeness for the job, not the worker: a host's rows go down a bounded number of lanes.

A lane is a key (host, n), n < lanes, chosen from the row's id. A runner hands all the rows of a key
to one worker at a time (Beam's GroupByKey), and each lane keeps to its share of the host's limits
(connections split among the lanes, requests per second divided by them), so however many workers a
job has, a host never sees more than the limits in total. Rows not fetched over HTTP(S) (gs://, local
files) have no host to spare: they spread over STORAGE_SPREAD keys, as many as a job's workers can
take (the model runs in the same step as the download, so the keys bound its parallelism too), with
no limit but the threads.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Optional
from urllib.parse import urlsplit

from imgsim.fetch.politeness import HostLimiter

STORAGE_SPREAD = 1 << 16
Key = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Lanes:
    """count lanes per host sharing max_connections and max_rps (the whole job's limits per host)."""

    count: int
    max_connections: int
    max_rps: float  # 0: no rate limit

    def __post_init__(self):
        if not 1 <= self.count <= self.max_connections:
            raise ValueError("lanes must be at least 1 and at most the connections per host")

    @classmethod
    def sharing(cls, lanes: int, max_connections: int, max_rps: float) -> "Lanes":
        """At most one lane per connection: a lane holds at least one."""
        return cls(max(1, min(lanes, max_connections)), max_connections, max_rps)

    def key(self, url: str, row_id: str) -> Key:
        host = host_of(url)
        return host, zlib.crc32(row_id.encode("utf-8", "surrogatepass")) % (self.count if host else STORAGE_SPREAD)

    def connections(self, lane: int) -> int:
        """Lane n's connections: the host's split as evenly as whole connections allow."""
        share, extra = divmod(self.max_connections, self.count)
        return share + (1 if lane < extra else 0)

    def limiter(self, key: Key) -> Optional[HostLimiter]:
        """The lane's own limits (for every host it meets, redirects included); None: storage rows."""
        host, lane = key
        if not host:
            return None
        return HostLimiter(self.connections(lane), self.max_rps / self.count)


def host_of(url: str) -> str:
    """The lower-cased host of an http(s) URL; '' for anything else."""
    try:
        parts = urlsplit(url)
        return (parts.hostname or "") if parts.scheme.lower() in ("http", "https") else ""
    except ValueError:
        return ""
