"""The run summary: what happened to every input row, in one small JSON file.

`accounted` is the pipeline's central invariant: input_rows equals embedded
plus failed. A run where it does not hold is reported as failed.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Iterable, Optional


def add_counts(partial_counts: Iterable[tuple[Any, int]]) -> dict:
    """{key: total} from (key, count) pairs: partial counts (per bundle) added up by key."""
    totals: dict = {}
    for key, count in partial_counts:
        totals[key] = totals.get(key, 0) + count
    return totals


def build_summary(*, run_id: str, input_description: dict, signature: dict, input_rows: int,
                  embedded: int, failure_counts: Iterable[tuple[tuple[str, str], int]],
                  started_at: float, finished_at: float, extra: Optional[dict] = None) -> dict:
    by_reason: dict[str, int] = {}
    by_stage: dict[str, int] = {}
    for (stage, reason), count in failure_counts:
        by_reason[reason] = by_reason.get(reason, 0) + count
        by_stage[stage] = by_stage.get(stage, 0) + count
    failed = sum(by_reason.values())
    wall = max(finished_at - started_at, 1e-9)
    summary = {
        "run_id": run_id,
        "input": input_description,
        "model_signature": signature,
        "counts": {"input_rows": input_rows, "embedded": embedded, "failed": failed},
        "accounted": input_rows == embedded + failed,
        "failures_by_reason": dict(sorted(by_reason.items())),
        "failures_by_stage": dict(sorted(by_stage.items())),
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "wall_seconds": round(wall, 3),
        "images_per_second": round(embedded / wall, 3),
    }
    if extra:
        summary.update(extra)
    return summary


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """A finished run, as summary.json records it (what `imgsim.run` returns and `imgsim run` prints)."""

    run_id: str
    path: str  # where summary.json is
    counts: dict
    accounted: bool
    failures_by_reason: dict
    wall_seconds: float
    images_per_second: float
    index: Optional[dict]  # the index step's report; None when the run built no index
    index_expected: bool
    document: dict  # the whole summary.json

    @classmethod
    def from_document(cls, document: dict, path: str, index_expected: bool) -> "RunSummary":
        return cls(run_id=document["run_id"], path=path, counts=document["counts"],
                   accounted=document["accounted"], failures_by_reason=document["failures_by_reason"],
                   wall_seconds=document["wall_seconds"], images_per_second=document["images_per_second"],
                   index=document.get("index"), index_expected=index_expected, document=document)

    @property
    def published(self) -> bool:
        """The index was published and LATEST now points at it."""
        return bool(self.index and self.index.get("published") and self.index.get("latest_updated"))

    def problems(self) -> list[str]:
        """Why the run did not fully succeed (empty when it did): exit code 1 of `imgsim run`."""
        problems = []
        if not self.accounted:
            problems.append("the run did not account for every input row")
        if self.index_expected:
            if not self.index or not self.index.get("published"):
                problems.append("no index was published: " + ((self.index or {}).get("reason") or "unknown reason"))
            elif not self.index.get("latest_updated"):
                problems.append(self.index.get("latest", "LATEST was not updated"))
        return problems

    def report(self) -> dict:
        """The short form `imgsim run` prints."""
        report = {"run_id": self.run_id, "counts": self.counts, "accounted": self.accounted,
                  "failures_by_reason": self.failures_by_reason, "wall_seconds": self.wall_seconds,
                  "images_per_second": self.images_per_second, "summary": self.path}
        if self.index_expected:
            report["index"] = self.index
        return report
