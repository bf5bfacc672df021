"""The pipeline's index step: one worker builds the index, or the workers build it in shards.

    embedding files ─► [footers ─► IndexPlan] ─► one searcher: read the files, build_and_publish, on a worker
                                              └► sharded:     BuildShardedIndex (transforms/sharded_index.py)
                                              └► grown:       GrowShardedIndex (transforms/grow_index.py)

It waits for the embeddings sink to finalise (its file names arrive as a side
input). With `sharding="auto"` the plan is made from the files' footers when
the pipeline runs (the number of vectors is known only then), and exactly one
of the two branches does the work; without it the graph holds the one-worker
step only (DirectRunner runs every step of a graph, even idle ones, so small
local runs keep the short graph). `imgsim index` plans before the pipeline
starts (pipelines/index_pipeline.py) and builds only the branch it needs. An index below --min-recall, or a LATEST that another run
replaced meanwhile, is reported rather than raised: the run's data is still
good. Storage errors do raise, so the runner retries the step; LATEST is
written last, so a failed attempt leaves the previous one untouched.
"""
from __future__ import annotations

import logging
from typing import Optional

import apache_beam as beam

from imgsim.index.build import IndexInputError, IndexSettings, RecallTooLow, build_and_publish
from imgsim.index.growth import with_growth
from imgsim.index.sources import file_info, plan_index
from imgsim.runs.layout import RunLayout
from imgsim.runs.outputs import read_tables
from imgsim.runs.summary import add_counts
from imgsim.storage import ObjectStore
from imgsim.transforms.grow_index import GrowShardedIndex
from imgsim.transforms.sharded_index import BuildShardedIndex

_LOG = logging.getLogger("imgsim.index")


class BuildIndex(beam.PTransform):
    """{"embedding_files", "counts" ((name, count) pairs, added up by name)} -> PCollection with one index
    report dict.

    sharding: None (one worker builds it) or "auto" (the plan, made from the footers at run time,
    says one worker or shards)."""

    def __init__(self, layout: RunLayout, settings: IndexSettings, input_description: dict,
                 expected_latest_generation: int, model: Optional[dict] = None, model_dir: Optional[str] = None,
                 sharding=None):
        super().__init__()
        self._layout = layout
        self._settings = settings
        self._input_description = input_description
        self._generation = expected_latest_generation
        self._model = model
        self._model_dir = model_dir
        self._sharding = sharding

    def expand(self, pcolls):
        p = pcolls["counts"].pipeline
        files = beam.pvalue.AsList(pcolls["embedding_files"])
        counts = beam.pvalue.AsList(pcolls["counts"])
        one_worker = _BuildIndexFn(self._layout, self._settings, self._input_description, self._generation,
                                   self._model, self._model_dir)
        if self._sharding is None:  # reports are dicts, declared so that Beam need not infer it from bytecode
            return p | "Once" >> beam.Create([None]) | "BuildAndPublish" >> beam.ParDo(
                one_worker, files=files, counts=counts).with_output_types(dict)
        infos = (pcolls["embedding_files"]
                 | "SortFiles" >> beam.combiners.ToList()
                 | "NumberFiles" >> beam.FlatMap(lambda paths: enumerate(sorted(paths)))
                 | "SpreadFiles" >> beam.Reshuffle()
                 | "Footers" >> beam.ParDo(_Footer()))
        plan = (infos
                | "AllFooters" >> beam.combiners.ToList()
                | "Plan" >> beam.Map(_plan, settings=self._settings, output=self._layout.output))
        one = p | "Once" >> beam.Create([None]) | "BuildAndPublish" >> beam.ParDo(
            one_worker, files=files, counts=counts, plan=beam.pvalue.AsSingleton(plan)).with_output_types(dict)
        sharded = {"infos": infos, "plan": plan, "counts": pcolls["counts"]} | "Sharded" >> BuildShardedIndex(
            self._layout, self._settings, self._input_description, self._generation, self._model, self._model_dir)
        grown = {"infos": infos, "plan": plan, "counts": pcolls["counts"]} | "Grown" >> GrowShardedIndex(
            self._layout, self._settings, self._input_description, self._generation, self._model, self._model_dir)
        return (one, sharded, grown) | "Report" >> beam.Flatten()


def _plan(infos, settings, output):
    """The plan from the footers, growing the published index where it can."""
    return with_growth(plan_index(infos, settings), ObjectStore(), settings, output)


class _Footer(beam.DoFn):
    def setup(self):
        self._store = ObjectStore()

    def process(self, numbered):
        number, path = numbered
        yield file_info(self._store, path, number)


class _BuildIndexFn(beam.DoFn):
    def __init__(self, layout, settings, input_description, generation, model, model_dir):
        self._layout = layout
        self._settings = settings
        self._input_description = input_description
        self._generation = generation
        self._model = model
        self._model_dir = model_dir

    def setup(self):
        self._store = ObjectStore()

    def process(self, _, files, counts, plan=None):
        if plan is not None and plan.sharded:
            # the workers build it (BuildShardedIndex)
            return
        try:
            tables = read_tables(sorted(files), self._store)
            report = build_and_publish(self._store, tables, self._settings, self._layout, self._generation,
                                       self._input_description, add_counts(counts), self._model,
                                       self._model_dir)
        except RecallTooLow as e:
            report = {"published": False, "reason": str(e), "refused": "recall", **e.report}
        except IndexInputError as e:
            report = {"published": False, "reason": str(e)}
        _LOG.info("index: %s", report.get("latest") or report.get("reason"))
        yield report
