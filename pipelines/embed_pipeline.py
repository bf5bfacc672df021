"""The embedding pipeline graph: collection -> downloads -> VGG16 -> Parquet -> summary.

    ReadCatalogue -> DeduplicateIds -> DownloadImages (+ decode) -> EmbedImages -> WriteEmbeddings
          \\______________\\_______________\\_______________\\______________\\-> WriteFailures
                                                                                   -> WriteRunSummary

Every stage sends its bad rows to the failures output with a reason, so each
input row ends in exactly one of embeddings or failures.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from imgsim import cma
from imgsim.inputs import CmaInput, ManifestInput
from imgsim.outputs import embeddings_schema
from imgsim.pipelines.options import RunConfig
from imgsim.storage import ObjectStore
from imgsim.transforms.build_index import BuildIndex
from imgsim.transforms.checkpoint import WriteCheckpoint
from imgsim.transforms.dedupe import DeduplicateIds
from imgsim.transforms.download import DownloadImages
from imgsim.transforms.embed import EmbedImages, Vgg16ModelHandler
from imgsim.transforms.failures import FAILURES
from imgsim.transforms.progress import report_progress
from imgsim.transforms.read_catalogue import ReadCatalogue
from imgsim.transforms.reuse import DELETED, REUSED, PlanReuse
from imgsim.transforms.write_outputs import WriteEmbeddings, WriteFailures, WriteRunSummary

LOCAL_RUNNERS = ("DirectRunner", "PrismRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")


def metadata_schema(config: RunConfig):
    import pyarrow as pa

    if isinstance(config.input, ManifestInput):
        return config.input.schema.metadata
    if isinstance(config.input, CmaInput):
        return cma.METADATA_SCHEMA
    return pa.schema([])


def build(p: beam.Pipeline, config: RunConfig, show_progress: bool = False) -> dict:
    """Add the pipeline to p; returns its main PCollections by name.

    Embeddings arrive from up to three places (computed, reused after a
    conditional download, resumed from a checkpoint). Each part gets its own
    sink and checkpoint writer instead of one Flatten in front of a single
    sink: DirectRunner materialises a Flatten's inputs in memory before its
    consumer runs, which would hold every vector of the run at once and make
    checkpoints appear only at the very end. Dataflow is indifferent.
    """
    rows, read_failures = p | "ReadCatalogue" >> ReadCatalogue(config.input, config.api_fetch)
    input_rows = ((rows, read_failures)
                  | "AllInputRows" >> beam.Flatten()
                  | "CountInputRows" >> beam.combiners.Count.Globally())
    unique = rows | "DeduplicateIds" >> DeduplicateIds()
    to_fetch, parts, deleted = unique.rows, {}, p | "NothingDeleted" >> beam.Create([])
    if config.reuse_sources:
        plan = unique.rows | "PlanReuse" >> PlanReuse(list(config.reuse_sources))
        to_fetch, deleted, parts["resumed"] = plan.rows, plan[DELETED], plan[REUSED]
    downloaded = to_fetch | "DownloadImages" >> DownloadImages(config.fetch, config.decode, config.download_threads)
    handler = Vgg16ModelHandler(config.model, config.weights_checksum, config.min_batch_size,
                                config.max_batch_size, large_model=config.large_model)
    parts["embedded"], embed_failures = downloaded.images | "EmbedImages" >> EmbedImages(handler)
    parts["reused"] = downloaded[REUSED]
    failure_parts = [read_failures, unique[FAILURES], downloaded[FAILURES], embed_failures]
    failures = failure_parts | "AllFailures" >> beam.Flatten()

    schema = embeddings_schema(config.signature, metadata_schema(config))
    embedding_files = []
    for name, part in parts.items():
        embedding_files.append(part | f"WriteEmbeddings[{name}]" >> WriteEmbeddings(config.layout, schema, name))
        if config.checkpoint_rows and name != "resumed":  # resumed rows are in the checkpoint already
            part | f"WriteCheckpoint[{name}]" >> WriteCheckpoint(config.layout, schema, config.checkpoint_rows)
    embedding_files = embedding_files | "AllEmbeddingFiles" >> beam.Flatten()
    failure_files = failures | "WriteFailures" >> WriteFailures(config.layout)
    written = (embedding_files, failure_files) | "AllWritten" >> beam.Flatten()
    outputs = {"input_rows": input_rows, "failures": failures, "written": written, "deleted": deleted,
               **{f"embeddings:{name}": part for name, part in parts.items()}}
    if config.index is not None:
        outputs["index"] = {"embedding_files": embedding_files, "input_rows": input_rows} | "BuildIndex" >> BuildIndex(
            config.layout, config.index, config.input.describe(), config.latest_generation)
    reuse_report = {"sources": [s.describe() for s in config.reuse_sources], "notes": list(config.reuse_notes)}
    outputs["summary"] = outputs | "WriteRunSummary" >> WriteRunSummary(
        config.layout, config.input.describe(), config.signature.to_dict(), config.started_at, reuse_report)
    if show_progress and config.progress_interval > 0:
        report_progress(list(parts.values()), failure_parts, input_rows, config.progress_interval)
    return outputs


def clear_unfinished_outputs(layout, store=None) -> None:
    """A restarted run (same --run-id, no summary yet) starts its outputs afresh; its checkpoint stays."""
    store = store or ObjectStore()
    if store.exists(layout.summary_path):
        return
    for directory in (layout.embeddings_dir, layout.failures_dir, layout.index_dir):
        store.delete_prefix(directory)


def is_local(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return name is None or name.split(".")[-1] in LOCAL_RUNNERS


def run(argv=None, test_pipeline=None):
    """Build and run the pipeline from command-line flags; returns (PipelineResult, RunConfig).

    test_pipeline: a TestPipeline to build into instead of a new Pipeline
    (the convention of Beam's examples).
    """
    options = PipelineOptions(argv)
    return run_with(options, RunConfig.from_options(options), test_pipeline)


def run_with(options: PipelineOptions, config: RunConfig, test_pipeline=None):
    clear_unfinished_outputs(config.layout)
    p = test_pipeline or beam.Pipeline(options=options)
    build(p, config, show_progress=is_local(p.options))
    return p.run(), config
