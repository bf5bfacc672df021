"""The embedding pipeline graph: collection -> downloads -> VGG16 -> Parquet -> index -> summary.

    ReadCatalogue -> DeduplicateIds -> [PlanReuse] -> DownloadImages (+ decode) -> EmbedImages -> WriteEmbeddings
          \\______________\\_______________\\_______________\\______________\\-> WriteFailures  (+ WriteThumbnails)
                                                    BuildIndex -> [BuildSite] -> WriteRunSummary

Every stage sends its bad rows to the failures output with a reason, so each
input row ends in exactly one of embeddings or failures. `build` wires a
checked RunPlan into a pipeline; `run(argv, test_pipeline)` is the entry
point Beam's examples use (parse, preflight, build, run).
"""
from __future__ import annotations

from typing import Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import PipelineOptions

from imgsim.catalogue import cma, iiif
from imgsim.catalogue.inputs import CmaInput, IiifInput, ManifestInput
from imgsim.config.parser import parse_run_args
from imgsim.config.preflight import RunPlan, preflight
from imgsim.pipelines.beam_options import is_local, pipeline_options, shares_filesystem
from imgsim.records import RESUMED
from imgsim.runs.layout import RunLayout
from imgsim.runs.outputs import embeddings_schema
from imgsim.storage import ObjectStore
from imgsim.transforms.build_index import BuildIndex
from imgsim.transforms.build_site import BuildSite
from imgsim.transforms.checkpoint import WriteCheckpoint
from imgsim.transforms.counts import CountPerBundle
from imgsim.transforms.dedupe import DeduplicateIds
from imgsim.transforms.download import REUSED, DownloadImages
from imgsim.transforms.embed import EmbedImages, Vgg16ModelHandler
from imgsim.transforms.failures import FAILURES
from imgsim.transforms.progress import report_progress
from imgsim.transforms.read_catalogue import ReadCatalogue
from imgsim.transforms.reuse import DELETED, PlanReuse
from imgsim.transforms.write_outputs import WriteEmbeddings, WriteFailures, WriteRunSummary, WriteThumbnails


def metadata_schema(plan: RunPlan) -> pa.Schema:
    if isinstance(plan.input, ManifestInput):
        return plan.input.schema.metadata
    if isinstance(plan.input, CmaInput):
        return cma.METADATA_SCHEMA
    if isinstance(plan.input, IiifInput):
        return iiif.METADATA_SCHEMA
    return pa.schema([])


def model_handler(plan: RunPlan) -> Vgg16ModelHandler:
    o = plan.options
    return Vgg16ModelHandler(plan.model, plan.weights_checksum, o.min_batch_size, o.max_batch_size,
                             large_model=o.large_model,
                             quantized_dir=plan.quantized.directory if plan.quantized else None,
                             quantization=plan.quantized.checksum if plan.quantized else "")


def build(p: beam.Pipeline, plan: RunPlan, show_progress: bool = False,
          handler: Optional[ModelHandler] = None) -> dict:
    """Add the pipeline to p; returns its main PCollections by name.

    handler: the model handler (default: VGG16 as the plan says; tests pass a fake one).

    Embeddings arrive from up to three places (computed, reused after a
    conditional download, resumed from a checkpoint). Each part gets its own
    sink and checkpoint writer instead of one Flatten in front of a single
    sink: DirectRunner materialises a Flatten's inputs in memory before its
    consumer runs, which would hold every vector of the run at once and make
    checkpoints appear only at the very end. Dataflow is indifferent. A run
    with nothing earlier to reuse (no LATEST, --full, another model) has only
    the computed part.
    """
    o = plan.options
    rows, read_failures = p | "ReadCatalogue" >> ReadCatalogue(plan.input, plan.api_fetch)
    input_rows = ((rows, read_failures)
                  | "AllInputRows" >> beam.Flatten()
                  | "CountInputRows" >> beam.ParDo(CountPerBundle(lambda _: "input_rows")))
    unique = rows | "DeduplicateIds" >> DeduplicateIds()
    to_fetch, parts, outputs = unique.rows, {}, {}
    if plan.reuse_sources:
        reuse_plan = unique.rows | "PlanReuse" >> PlanReuse(list(plan.reuse_sources))
        to_fetch, outputs["deleted"], parts[RESUMED] = reuse_plan.rows, reuse_plan[DELETED], reuse_plan[RESUMED]
    downloaded = to_fetch | "DownloadImages" >> DownloadImages(plan.fetch, plan.decode, o.download_threads,
                                                               o.decode_memory_bytes, thumbnails=o.thumbnails,
                                                               lanes=o.lanes())
    parts["embedded"], embed_failures = downloaded.images | "EmbedImages" >> EmbedImages(
        handler or model_handler(plan))
    if plan.reuse_sources:  # only a row PlanReuse paired with an earlier one can be reused: else no sinks
        parts[REUSED] = downloaded[REUSED]
    failure_parts = [read_failures, unique[FAILURES], downloaded[FAILURES], embed_failures]
    failures = failure_parts | "AllFailures" >> beam.Flatten()

    schema = embeddings_schema(plan.signature, metadata_schema(plan))
    embedding_files, thumbnail_files = [], []
    for name, part in parts.items():
        embedding_files.append(part | f"WriteEmbeddings[{name}]" >> WriteEmbeddings(plan.layout, schema, name))
        if o.thumbnails:
            thumbnail_files.append(part | f"WriteThumbnails[{name}]" >> WriteThumbnails(plan.layout, name))
        if o.checkpoint_rows and name != RESUMED:  # resumed rows are in the checkpoint already
            part | f"WriteCheckpoint[{name}]" >> WriteCheckpoint(plan.layout, schema, o.checkpoint_rows,
                                                                  thumbnails=o.thumbnails,
                                                                  seconds=o.checkpoint_seconds)
    embedding_files = embedding_files | "AllEmbeddingFiles" >> beam.Flatten()
    failure_files = failures | "WriteFailures" >> WriteFailures(plan.layout)
    written = (embedding_files, failure_files, *thumbnail_files) | "AllWritten" >> beam.Flatten()
    outputs.update({"input_rows": input_rows, "failures": failures, "written": written,
                    **{f"embeddings:{name}": part for name, part in parts.items()}})
    if plan.index is not None:
        outputs["index"] = {"embedding_files": embedding_files, "counts": input_rows} | "BuildIndex" >> BuildIndex(
            plan.layout, plan.index, plan.input.describe(), plan.latest_generation, plan.model_report(),
            plan.quantized.directory if plan.quantized else None, sharding=index_sharding(p, plan))
        if o.site:
            outputs["site"] = outputs["index"] | "BuildSite" >> BuildSite(plan.layout, o.site_settings(), o.site_output)
    reuse_report = {"sources": [s.describe() for s in plan.reuse_sources], "notes": list(plan.reuse_notes)}
    outputs["summary"] = outputs | "WriteRunSummary" >> WriteRunSummary(
        plan.layout, plan.input.describe(), plan.signature.to_dict(), plan.started_at, reuse_report,
        plan.model_report())
    if show_progress and o.progress_interval > 0:
        report_progress(list(parts.values()), failure_parts, input_rows, o.progress_interval)
    return outputs


def index_sharding(p: beam.Pipeline, plan: RunPlan) -> Optional[str]:
    """"auto" (shard when the run's collection needs it) on Dataflow, or when the sharding flags
    ask; else None: local runners keep the one-worker step's short graph."""
    return "auto" if plan.index.sharding.requested or not is_local(p.options) else None


def clear_unfinished_outputs(store: ObjectStore, layout: RunLayout) -> None:
    """A restarted run (same --run-id, no summary yet) starts its outputs afresh; its checkpoint stays."""
    if store.exists(layout.summary_path):
        return
    for directory in (layout.embeddings_dir, layout.thumbnails_dir, layout.failures_dir, layout.index_dir,
                      layout.index_work_dir, layout.site_dir):
        store.delete_prefix(directory)


def run_plan(plan: RunPlan, options: PipelineOptions, store: ObjectStore, test_pipeline=None,
             handler: Optional[ModelHandler] = None) -> beam.runners.runner.PipelineResult:
    """Build the checked plan into a pipeline (or test_pipeline) and start it."""
    clear_unfinished_outputs(store, plan.layout)
    p = test_pipeline or beam.Pipeline(options=options)
    build(p, plan, show_progress=is_local(p.options), handler=handler)
    return p.run()


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None):
    """Parse, preflight, build and start the pipeline from command-line flags (the convention of
    Beam's examples); returns (PipelineResult, RunPlan).

    test_pipeline: a TestPipeline to build into instead of a new Pipeline."""
    options, beam_args = parse_run_args(list(argv or []))
    beam_options = pipeline_options(beam_args)
    store = ObjectStore()
    plan = preflight(options, store, remote_workers=not shares_filesystem(beam_options))
    return run_plan(plan, beam_options, store, test_pipeline), plan
