"""The runs under an output root and their state: what `imgsim runs` shows an operator.

A run is `finished` when its summary.json exists (written last, so its data is
complete); `failed` or `interrupted` when its stopped.json says so (with the
cause and the next step); `unfinished` otherwise: still working, or killed
where it could not say (a restart with the same --run-id resumes from its
checkpoint either way). It is `published` when its index artifact exists, and
`latest` when LATEST points at it.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

from imgsim.index.artifact import MANIFEST
from imgsim.index.latest import read_latest
from imgsim.runs.layout import RunLayout, runs_dir
from imgsim.storage import ObjectStore, join


@dataclasses.dataclass(frozen=True)
class RunState:
    run_id: str
    finished: bool
    published: bool
    latest: bool
    checkpoint_files: int
    counts: Optional[dict] = None
    recall: Optional[float] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    stopped: Optional[dict] = None  # stopped.json: state, cause, next, at

    @property
    def state(self) -> str:
        if self.finished:
            return "finished"
        return (self.stopped or {}).get("state") or "unfinished"

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "state": self.state, "published": self.published, "latest": self.latest,
                "checkpoint_files": self.checkpoint_files, "counts": self.counts, "recall": self.recall,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "cause": (self.stopped or {}).get("cause"), "next": (self.stopped or {}).get("next")}


def run_ids(store: ObjectStore, output: str) -> list[str]:
    """Every run directory under OUT/runs, in run id order."""
    prefix = runs_dir(output).rstrip("/") + "/"
    return sorted({p[len(prefix):].split("/", 1)[0] for p in store.list(runs_dir(output)) if p.startswith(prefix)})


def list_runs(store: ObjectStore, output: str) -> list[RunState]:
    latest = read_latest(store, output)
    paths = set(store.list(runs_dir(output)))
    states = []
    for run_id in run_ids(store, output):
        layout = RunLayout(output, run_id)
        summary = _document(store, layout.summary_path) if layout.summary_path in paths else None
        started = _document(store, layout.started_path) if layout.started_path in paths else None
        stopped = _document(store, layout.stopped_path) if layout.stopped_path in paths else None
        index = (summary or {}).get("index") or {}
        checkpoint = layout.checkpoint_dir.rstrip("/") + "/"
        states.append(RunState(
            run_id=run_id, finished=summary is not None,
            published=join(layout.index_dir, MANIFEST) in paths,
            latest=latest is not None and latest.run_id == run_id,
            checkpoint_files=sum(1 for p in paths if p.startswith(checkpoint)),
            counts=(summary or {}).get("counts"), recall=(index.get("recall") or {}).get("value"),
            started_at=(summary or started or {}).get("started_at"), finished_at=(summary or {}).get("finished_at"),
            stopped=stopped if isinstance(stopped, dict) else None))
    return states


def _document(store: ObjectStore, path: str) -> Optional[dict]:
    try:
        document = json.loads(store.read_bytes(path))
    except (ValueError, FileNotFoundError):
        return None
    return document if isinstance(document, dict) else None


def table(states: list[RunState]) -> str:
    """A fixed-width table for people."""
    rows = [("RUN", "STATE", "PUBLISHED", "LATEST", "INPUT", "EMBEDDED", "FAILED", "RECALL")]
    for s in states:
        counts = s.counts or {}
        rows.append((s.run_id, s.state + (f" ({s.checkpoint_files} checkpoint files)" if s.checkpoint_files else ""),
                     "yes" if s.published else "no", "*" if s.latest else "",
                     _n(counts.get("input_rows")), _n(counts.get("embedded")), _n(counts.get("failed")),
                     "" if s.recall is None else f"{s.recall:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines += [f"{s.run_id}: {s.stopped.get('cause')}; next: {s.stopped.get('next')}"
              for s in states if s.stopped and not s.finished]
    return "\n".join(lines)


def _n(value) -> str:
    return "" if value is None else f"{value:,}"
