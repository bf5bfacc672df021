"""`imgsim index`: an index from existing embeddings files, as a Beam pipeline (no inference).

    files (glob) ─► footers ─► IndexPlan ─► one searcher (BuildIndex, one worker) or BuildShardedIndex (workers),
                                           or GrowShardedIndex (the published index grown: imgsim.index.growth)
                                         ─► OUT/runs/RUN_ID/index_report.json

The plan is made before the pipeline starts, from the files' footers alone
(imgsim.index.sources): mixed models, stray files and configurations a
sharded index cannot take are refused in one line before any work, and the
graph holds only the branch the collection needs. Beam's options pass through
as for `imgsim run` (DirectRunner locally, Dataflow at scale); on a local
runner `launch` waits and returns the report, on Dataflow the submitted job.
`run(argv, test_pipeline=None)` is the entry point Beam's examples use.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence, Union

import apache_beam as beam

from imgsim.config.flags import ConfigError
from imgsim.config.options import IndexCommandOptions
from imgsim.config.parser import parse_index_args
from imgsim.index.build import IndexSettings
from imgsim.index.growth import with_growth
from imgsim.index.latest import read_latest
from imgsim.index.sources import IndexPlan, file_infos, plan_index
from imgsim.pipelines.beam_options import pipeline_options, shares_filesystem, submits_and_returns
from imgsim.pipelines.launcher import LaunchedJob
from imgsim.runs.layout import RunLayout, new_run_id
from imgsim.storage import ObjectStore, is_gcs, join
from imgsim.transforms.build_index import BuildIndex
from imgsim.transforms.grow_index import GrowShardedIndex
from imgsim.transforms.sharded_index import BuildShardedIndex

REPORT = "index_report.json"


@dataclasses.dataclass(frozen=True)
class IndexRun:
    """A checked `imgsim index`: where it publishes, with what, from which files."""

    layout: RunLayout
    settings: IndexSettings
    plan: IndexPlan
    generation: int  # LATEST's, when the run started
    source: dict

    @property
    def report_path(self) -> str:
        return join(self.layout.run_dir, REPORT)


def preflight(options: IndexCommandOptions, store: ObjectStore, remote_workers: bool = False) -> IndexRun:
    """Glob and read the footers; ConfigError or IndexInputError (one line) before any work."""
    files = store.glob(options.embeddings)
    if not files:
        raise ConfigError(f"--embeddings {options.embeddings!r} matches no files")
    if remote_workers:
        local = [path for path in [options.output, *files] if not is_gcs(path)]
        if local:
            raise ConfigError(f"{local[0]} is not on gs://: this runner's workers could not reach it")
    settings = options.index_settings()
    plan = with_growth(plan_index(file_infos(store, files), settings).check(), store, settings, options.output)
    latest = read_latest(store, options.output)
    layout = RunLayout(options.output, options.run_id or new_run_id())
    source = {"kind": "embeddings", "pattern": options.embeddings, "files": len(files)}
    return IndexRun(layout, settings, plan, latest.generation if latest else 0, source)


def build(p: beam.Pipeline, run: IndexRun):
    """Add the index pipeline to p; returns the PCollection holding its report."""
    plan = run.plan
    counts = p | "Counts" >> beam.Create([("embedded", plan.count)])
    if plan.growth is not None:
        report = ({"infos": p | "Files" >> beam.Create(list(plan.files)),
                   "plan": p | "Plan" >> beam.Create([plan]), "counts": counts}
                  | "GrowShardedIndex" >> GrowShardedIndex(run.layout, run.settings, run.source, run.generation))
    elif plan.sharded:
        report = ({"infos": p | "Files" >> beam.Create(list(plan.files)),
                   "plan": p | "Plan" >> beam.Create([plan]), "counts": counts}
                  | "BuildShardedIndex" >> BuildShardedIndex(run.layout, run.settings, run.source, run.generation))
    else:
        files = p | "Files" >> beam.Create([info.path for info in plan.files])
        report = {"embedding_files": files, "counts": counts} | "BuildIndex" >> BuildIndex(
            run.layout, run.settings, run.source, run.generation)
    report | "WriteReport" >> beam.ParDo(_WriteReport(run.report_path))
    return report


class _WriteReport(beam.DoFn):
    def __init__(self, path: str):
        self._path = path

    def process(self, report):
        ObjectStore().write_bytes(self._path, json.dumps(report, indent=2, default=str).encode(),
                                  content_type="application/json")


def launch(options: IndexCommandOptions, beam_args: Sequence[str], store: ObjectStore,
           settings: Optional[IndexSettings] = None) -> Union[dict, LaunchedJob]:
    """Plan, build and start the pipeline; the report on a local runner (waits), else the job.
    settings: IndexSettings beyond the flags (tests: a lower exact-neighbours limit)."""
    beam_options = pipeline_options(beam_args, "index")
    run = preflight(options, store, remote_workers=not shares_filesystem(beam_options))
    if settings is not None:
        plan = with_growth(plan_index(run.plan.files, settings).check(), store, settings, options.output)
        run = dataclasses.replace(run, settings=settings, plan=plan)
    p = beam.Pipeline(options=beam_options)
    build(p, run)
    result = p.run()
    if submits_and_returns(beam_options):
        try:
            job = result.job_id()
        except AttributeError:
            job = None
        return LaunchedJob(run.layout.run_id, job, run.layout.run_dir)
    state = result.wait_until_finish()
    if not store.exists(run.report_path):
        raise RuntimeError(f"the index pipeline ended ({state}) without writing {run.report_path}")
    return json.loads(store.read_bytes(run.report_path))


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None):
    """Parse, plan, build and start the pipeline from command-line flags (the convention of Beam's
    examples); returns (PipelineResult, IndexRun). test_pipeline: build into it instead."""
    options, beam_args = parse_index_args(list(argv or []))
    beam_options = pipeline_options(beam_args, "index")
    store = ObjectStore()
    index_run = preflight(options, store, remote_workers=not shares_filesystem(beam_options))
    p = test_pipeline or beam.Pipeline(options=beam_options)
    build(p, index_run)
    return p.run(), index_run
