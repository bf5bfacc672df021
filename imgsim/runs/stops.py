"""Why a run stopped before its summary, in a few lines: the cause, and the next step.

A run that fails after it started (an API that went down, a worker that crashed)
or is interrupted (Ctrl-C) ends with a RunStopped: the CLI prints its lines,
the full traceback goes to runs/RUN_ID/error.txt (and to the log at
--log-level DEBUG), and runs/RUN_ID/stopped.json records the state for
`imgsim runs`. Every row already in the checkpoint is safe: the same command
with the same --run-id resumes from it. No Beam here.
"""
from __future__ import annotations

import datetime
import json
import logging
import re
import traceback
from typing import Optional

from imgsim.runs.layout import RunLayout
from imgsim.storage import ObjectStore

_LOG = logging.getLogger("imgsim")
# the last "SomethingError: message" line of a traceback, as Beam's runners pass a worker's on as text
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(?P<kind>\w*(?:Error|Exception|Exit)): (?P<message>.+)$", re.M)
# what to do next, by the kind of the failure's innermost exception
_NEXT_STEPS = {
    "CmaApiError": "check that the museum API answers, then",
    "MemoryError": "give the workers more memory (or lower --download-threads), then",
}


class RunStopped(RuntimeError):
    """The run ended without its summary. lines(): what the CLI prints; exit_code: how it exits."""

    exit_code = 1
    state = "failed"

    def __init__(self, cause: str, next_step: str, details: Optional[str] = None):
        super().__init__(cause)
        self.cause = cause
        self.next_step = next_step
        self.details = details

    def lines(self) -> list[str]:
        out = [self.cause, f"next: {self.next_step}"]
        if self.details:
            out.append(f"the full traceback: {self.details} (or run with --log-level DEBUG)")
        return out

    def record(self) -> dict:
        return {"state": self.state, "cause": self.cause, "next": self.next_step,
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


class RunFailed(RunStopped):
    """The pipeline failed, or ended without writing its summary."""


class RunInterrupted(RunStopped):
    """Interrupted (Ctrl-C): rows_safe embedded rows are in the checkpoint; the same command with
    --run-id run_id resumes (the CLI writes the command out: it knows the arguments)."""

    exit_code = 130
    state = "interrupted"

    def __init__(self, run_id: str, rows_safe: int):
        super().__init__(f"interrupted: {rows_safe:,} embedded row{'s' if rows_safe != 1 else ''} of run {run_id} "
                         "are safe in its checkpoint", resume_hint(run_id))
        self.run_id = run_id
        self.rows_safe = rows_safe

    def record(self) -> dict:
        return {**super().record(), "rows_safe": self.rows_safe}


def resume_hint(run_id: str) -> str:
    return (f"run the same command with --run-id {run_id}: rows in its checkpoint are not fetched or "
            "embedded again")


def failure_of(error: BaseException, layout: RunLayout, store: Optional[ObjectStore] = None) -> RunFailed:
    """A RunFailed naming the innermost cause of error, its traceback written to the run's error.txt."""
    text = "".join(traceback.format_exception(error))
    _LOG.debug("the run failed:\n%s", text)
    kind, message = innermost(error, text)
    details = None
    if store is not None:
        try:
            store.write_bytes(layout.error_path, text.encode("utf-8", "replace"))
            details = layout.error_path
        except Exception as e:  # the output itself may be what failed
            _LOG.debug("could not write %s: %s", layout.error_path, e)
    step = _NEXT_STEPS.get(kind, "fix the cause, then")
    return RunFailed(f"run {layout.run_id} failed: {kind}: {_short(message)}",
                     f"{step} {resume_hint(layout.run_id)}", details)


def innermost(error: BaseException, text: str) -> tuple[str, str]:
    """(kind, message) of the failure's root: the last exception line of the traceback text (Beam's
    runners carry a worker's exception as text inside their own), else the innermost chained one."""
    lines = [m for m in _EXCEPTION_LINE.finditer(text) if m["kind"] not in ("RuntimeError", "Exception")]
    if lines:
        last = lines[-1]
        return last["kind"], re.sub(r"\s*\[while running '[^']*'\]\s*$", "", last["message"]).strip()
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return type(error).__name__, str(error).strip().splitlines()[0] if str(error).strip() else ""


def _short(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def mark_started(store: ObjectStore, layout: RunLayout, description: dict) -> None:
    """runs/RUN_ID/started.json: the run's first file, so that `imgsim runs` knows it at once (and
    a resumed run's earlier stopped.json, no longer true, goes)."""
    if store.exists(layout.stopped_path):
        store.delete(layout.stopped_path)
    store.write_bytes(layout.started_path, json.dumps({
        "run_id": layout.run_id, "output": layout.output,
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **description}).encode(), content_type="application/json")


def stopped(store: ObjectStore, layout: RunLayout, stop: RunStopped) -> RunStopped:
    """Record stop in runs/RUN_ID/stopped.json (best effort) and return it, to be raised."""
    try:
        store.write_bytes(layout.stopped_path, json.dumps(stop.record()).encode(), content_type="application/json")
    except Exception as e:
        _LOG.debug("could not write %s: %s", layout.stopped_path, e)
    return stop


def checkpointed_rows(store: ObjectStore, layout: RunLayout) -> int:
    """Rows in the run's checkpoint files (a row a retried bundle wrote twice counts twice)."""
    import pyarrow.parquet as pq

    prefix = layout.checkpoint_dir.rstrip("/") + "/"
    rows = 0
    for path in store.list(layout.checkpoint_dir):
        if path.endswith(".parquet") and "/" not in path[len(prefix):]:
            try:
                with store.open_read(path) as f:
                    rows += pq.read_metadata(f).num_rows
            except Exception:  # a file cut short by the interrupt itself
                continue
    return rows
