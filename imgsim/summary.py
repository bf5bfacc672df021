"""The run summary: what happened to every input row, in one small JSON file.

`accounted` is the pipeline's central invariant: input_rows equals embedded
plus failed. A run where it does not hold is reported as failed.
"""
from __future__ import annotations

import datetime
from typing import Iterable, Optional


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
