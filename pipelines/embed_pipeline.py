"""The embedding pipeline graph: collection -> downloads -> VGG16 -> Parquet -> summary.

    ReadCatalogue -> DeduplicateIds -> DownloadImages -> DecodeImages -> EmbedImages -> WriteEmbeddings
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
from imgsim.transforms.build_index import BuildIndex
from imgsim.transforms.decode import DecodeImages
from imgsim.transforms.dedupe import DeduplicateIds
from imgsim.transforms.download import DownloadImages
from imgsim.transforms.embed import EmbedImages, Vgg16ModelHandler
from imgsim.transforms.failures import FAILURES
from imgsim.transforms.progress import ReportProgress
from imgsim.transforms.read_catalogue import ReadCatalogue
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
    """Add the pipeline to p; returns its main PCollections by name."""
    rows, read_failures = p | "ReadCatalogue" >> ReadCatalogue(config.input, config.api_fetch)
    input_rows = ((rows, read_failures)
                  | "AllInputRows" >> beam.Flatten()
                  | "CountInputRows" >> beam.combiners.Count.Globally())
    unique = rows | "DeduplicateIds" >> DeduplicateIds()
    downloaded = unique.rows | "DownloadImages" >> DownloadImages(config.fetch, config.download_threads)
    decoded = downloaded.images | "DecodeImages" >> DecodeImages(config.decode)
    handler = Vgg16ModelHandler(config.model, config.weights_checksum, config.min_batch_size,
                                config.max_batch_size, large_model=config.large_model)
    embeddings, embed_failures = decoded.decoded | "EmbedImages" >> EmbedImages(handler)
    failures = ((read_failures, unique[FAILURES], downloaded[FAILURES], decoded[FAILURES], embed_failures)
                | "AllFailures" >> beam.Flatten())

    schema = embeddings_schema(config.signature, metadata_schema(config))
    embedding_files = embeddings | "WriteEmbeddings" >> WriteEmbeddings(config.layout, schema)
    failure_files = failures | "WriteFailures" >> WriteFailures(config.layout)
    written = (embedding_files, failure_files) | "AllWritten" >> beam.Flatten()
    outputs = {"input_rows": input_rows, "embeddings": embeddings, "failures": failures, "written": written}
    if config.index is not None:
        outputs["index"] = {"embedding_files": embedding_files, "input_rows": input_rows} | "BuildIndex" >> BuildIndex(
            config.layout, config.index, config.input.describe(), config.latest_generation)
    outputs["summary"] = outputs | "WriteRunSummary" >> WriteRunSummary(
        config.layout, config.input.describe(), config.signature.to_dict(), config.started_at)
    if show_progress and config.progress_interval > 0:
        (embeddings, failures) | "ReportProgress" >> ReportProgress(input_rows, config.progress_interval)
    return outputs


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
    p = test_pipeline or beam.Pipeline(options=options)
    build(p, config, show_progress=is_local(p.options))
    return p.run(), config
