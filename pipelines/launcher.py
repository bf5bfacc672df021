"""Launching a run: Beam options, preflight, the pipeline, then (locally) its summary.

    imgsim.run(...) / `imgsim run` / the Flex Template's main.py  ->  launch()  ->  embed_pipeline

Local runs wait and return the RunSummary; Dataflow runs return the submitted
job (LaunchedJob) unless --wait follows it to its end.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Optional, Sequence, Union

from apache_beam.ml.inference.base import ModelHandler

from imgsim.config.options import RunOptions
from imgsim.config.preflight import preflight
from imgsim.pipelines.beam_options import is_local, pipeline_options
from imgsim.pipelines.embed_pipeline import run_plan
from imgsim.runs.summary import RunFailed, RunSummary
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


def launch(options: RunOptions, beam_args: Sequence[str], store: ObjectStore,
           handler: Optional[ModelHandler] = None) -> Union[RunSummary, LaunchedJob]:
    """Run imgsim: ConfigError before any work starts, RunFailed when the job ends without a summary."""
    beam_options = pipeline_options(beam_args)
    local = is_local(beam_options)
    plan = preflight(options, store, remote_workers=not local)
    _LOG.info("run %s: input %s -> %s", plan.layout.run_id, json.dumps(plan.input.describe()), plan.layout.run_dir)
    result = run_plan(plan, beam_options, store, handler=handler)
    if not local and not options.wait:
        try:
            job = result.job_id()
        except AttributeError:  # Beam only wrote the job file (a Flex Template launch): the service submits it
            job = None
        return LaunchedJob(plan.layout.run_id, job, plan.layout.run_dir)
    state = result.wait_until_finish()
    path = plan.layout.summary_path
    if not store.exists(path):
        raise RunFailed(f"the job ended ({state}) without writing {path}")
    return RunSummary.from_document(json.loads(store.read_bytes(path)), path, index_expected=plan.index is not None)
