"""Where a run's outputs live under --output (local directory or gs:// prefix).

    OUT/LATEST                          pointer to the newest published index
    OUT/runs/RUN_ID/embeddings/*.parquet
    OUT/runs/RUN_ID/failures/*.parquet
    OUT/runs/RUN_ID/thumbnails/*.parquet  thumbnail packs (imgsim.thumbnails.packs)
    OUT/runs/RUN_ID/started.json        written when the work starts: run id, input, output, when
    OUT/runs/RUN_ID/stopped.json        written when a run fails or is interrupted: why, and the next step
    OUT/runs/RUN_ID/error.txt           the full traceback of a run that failed
    OUT/runs/RUN_ID/summary.json        written last: the run's data is complete
    OUT/runs/RUN_ID/checkpoint/         embeddings so far, while the run works (restarts resume)
    OUT/runs/RUN_ID/index/              the index artifact
    OUT/runs/RUN_ID/site/               the explorer (imgsim run --site, imgsim explore)
    OUT/site/index.html                 forwards to the site of the run LATEST points at
    OUT/runs/RUN_ID/index-work/         a sharded build's rows on their way to their shard (removed when it ends)
"""
from __future__ import annotations

import dataclasses
import datetime
import re

from imgsim.storage import join

RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_RUN_ID = re.compile(RUN_ID_PATTERN)


def new_run_id(now: datetime.datetime | None = None) -> str:
    """A UTC timestamp that sorts in time order, e.g. 20261125T033100Z."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id or ""):
        raise ValueError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    return run_id


@dataclasses.dataclass(frozen=True)
class RunLayout:
    output: str
    run_id: str

    def __post_init__(self):
        check_run_id(self.run_id)

    @property
    def run_dir(self) -> str:
        return join(runs_dir(self.output), self.run_id)

    @property
    def embeddings_dir(self) -> str:
        return join(self.run_dir, "embeddings")

    @property
    def failures_dir(self) -> str:
        return join(self.run_dir, "failures")

    @property
    def thumbnails_dir(self) -> str:
        return join(self.run_dir, "thumbnails")

    @property
    def checkpoint_dir(self) -> str:
        return join(self.run_dir, "checkpoint")

    @property
    def checkpoint_thumbnails_dir(self) -> str:
        return join(self.checkpoint_dir, "thumbnails")

    @property
    def site_dir(self) -> str:
        return join(self.run_dir, "site")

    @property
    def summary_path(self) -> str:
        return join(self.run_dir, "summary.json")

    @property
    def started_path(self) -> str:
        return join(self.run_dir, "started.json")

    @property
    def stopped_path(self) -> str:
        return join(self.run_dir, "stopped.json")

    @property
    def error_path(self) -> str:
        return join(self.run_dir, "error.txt")

    @property
    def index_dir(self) -> str:
        return join(self.output, self.relative_index_dir(self.run_id))

    @property
    def index_work_dir(self) -> str:
        return join(self.run_dir, "index-work")

    @staticmethod
    def relative_index_dir(run_id: str) -> str:
        """A run's index directory relative to the output root (what LATEST records)."""
        return f"runs/{run_id}/index"


def runs_dir(output: str) -> str:
    """OUT/runs: every run's directory."""
    return join(output, "runs")
