"""Launching a run: Beam options, preflight, the pipeline, then (locally) its summary.

    imgsim.run(...) / `imgsim run` / the Flex Template's main.py  ->  launch()  ->  embed_pipeline

Local runs wait and return the RunSummary; Dataflow runs return the submitted
job (LaunchedJob) unless --wait follows it to its end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
from typing import Optional, Sequence, Union

from apache_beam.ml.inference.base import ModelHandler

from imgsim.config.options import RunOptions
from imgsim.config.preflight import preflight
from imgsim.pipelines.beam_options import pipeline_options, shares_filesystem, submits_and_returns
from imgsim.pipelines.embed_pipeline import run_plan
from imgsim.runs.stops import (RunFailed, RunInterrupted, checkpointed_rows, failure_of, mark_started,
                               resume_hint, stopped)
from imgsim.runs.summary import RunSummary
from imgsim.storage import ObjectStore

_LOG = logging.getLogger("imgsim")


@dataclasses.dataclass(frozen=True)
class LaunchedJob:
    """A run submitted to Dataflow, not waited for."""

    run_id: str
    job_id: Optional[str]  # None when Beam only wrote the job file (a Flex Template launch)
    run_dir: str

    def report(self) -> dict:
        return {"run_id": self.run_id, "job_id": self.job_id, "run_dir": self.run_dir}


@contextlib.contextmanager
def _interrupts():
    """An Event set on Ctrl-C, which still raises KeyboardInterrupt. Beam's runners catch it in the
    step running, log it with a traceback as an error in every step it unwinds, and re-raise it
    wrapped: the event tells an interrupt from a failure, and Beam's logs are silenced once it
    came. The run unwinds once the downloads in flight end (at most --download-deadline); a second
    Ctrl-C ends the process at once (the signal's default). Outside the main thread (no signals
    there) nothing changes."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    beam_log = logging.getLogger("apache_beam")
    level = beam_log.level

    def on_interrupt(signum, frame):
        interrupted.set()
        beam_log.setLevel(logging.CRITICAL + 1)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
        beam_log.setLevel(level)


def launch(options: RunOptions, beam_args: Sequence[str], store: ObjectStore,
           handler: Optional[ModelHandler] = None) -> Union[RunSummary, LaunchedJob]:
    """Run imgsim: ConfigError before any work starts; once it has started, RunFailed (the cause and
    the next step, the traceback in runs/RUN_ID/error.txt) or RunInterrupted (Ctrl-C: what is safe
    and how to resume) when the job ends without a summary.

    A job imgsim waits for that fails is started again, up to --max-attempts in all, as the same
    run: the new attempt resumes from the checkpoint, so a lost worker process costs the rows it
    held, not the run (Dataflow retries work items itself)."""
    beam_options = pipeline_options(beam_args)
    remote = not shares_filesystem(beam_options)
    plan = preflight(options, store, remote_workers=remote, check_weights_fit=handler is None)
    attempts = 1 if submits_and_returns(beam_options) else options.max_attempts
    for attempt in range(1, attempts + 1):
        try:
            return _attempt(plan, options, beam_options, store, handler)
        except RunFailed as failure:
            if attempt == attempts:
                raise
            _LOG.warning("run %s: attempt %d of %d failed (%s); starting it again from its checkpoint",
                         plan.layout.run_id, attempt, attempts, failure.lines()[0])
            plan = preflight(dataclasses.replace(options, run_id=plan.layout.run_id), store, remote_workers=remote,
                             check_weights_fit=False)
    raise AssertionError("unreachable")


def _attempt(plan, options: RunOptions, beam_options, store: ObjectStore,
             handler: Optional[ModelHandler]) -> Union[RunSummary, LaunchedJob]:
    layout = plan.layout
    _LOG.info("run %s: input %s -> %s", layout.run_id, json.dumps(plan.input.describe()), layout.run_dir)
    mark_started(store, layout, {"input": plan.input.describe()})
    try:
        with _interrupts() as interrupted:
            result = run_plan(plan, beam_options, store, handler=handler)
            if submits_and_returns(beam_options) and not options.wait:
                try:
                    job = result.job_id()
                except AttributeError:  # Beam only wrote the job file (a Flex Template launch): the service submits it
                    job = None
                return LaunchedJob(layout.run_id, job, layout.run_dir)
            state = result.wait_until_finish()
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt) or interrupted.is_set():  # Beam wraps it in its own error
            raise stopped(store, layout, RunInterrupted(layout.run_id, checkpointed_rows(store, layout))) from None
        if not isinstance(e, Exception):
            raise
        raise stopped(store, layout, failure_of(e, layout, store)) from None
    path = layout.summary_path
    if not store.exists(path):
        raise stopped(store, layout, RunFailed(f"the job ended ({state}) without writing {path}",
                                               resume_hint(layout.run_id)))
    return RunSummary.from_document(json.loads(store.read_bytes(path)), path, index_expected=plan.index is not None)
