"""imgsim's Python API: the functions the `imgsim` command itself calls.

    import imgsim
    summary = imgsim.run(input="manifest.csv", output="out/", layer="pool")    # -> RunSummary
    report = imgsim.build_index("out/", embeddings="out/runs/R/embeddings/*.parquet")   # a Beam pipeline
    report = imgsim.build_index("out/", ids=ids, vectors=vectors, metadata={"title": titles})
    index = imgsim.ImageIndex.open("out/")

Keyword options are the flags of `imgsim run` with underscores (`layer`,
`weights`, `allow_private_addresses`, ...); they are checked exactly as the
command line is (imgsim.config), and bad configuration raises ConfigError
before any work starts.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

from imgsim.config.flags import ConfigError
from imgsim.config.options import (EvaluateOptions, ExploreOptions, ExportOptions, IndexCommandOptions, IndexFlags,
                                   PlanOptions, RunOptions, ServeOptions)
from imgsim.embed.signature import ModelSignature
from imgsim.index.build import RecallTooLow, build_and_publish
from imgsim.index.latest import read_latest
from imgsim.records import EMBEDDING_COLUMNS
from imgsim.runs.layout import RunLayout, new_run_id
from imgsim.runs.outputs import embeddings_schema
from imgsim.storage import ObjectStore


def run(input: str, output: str, *, beam_options: Union[Sequence[str], Mapping[str, Any]] = (),
        store: Optional[ObjectStore] = None, **options):
    """Embed a collection and publish its index; the Python form of `imgsim run`.

    beam_options: Beam's own pipeline options, as flags (["--runner", "DataflowRunner", ...]) or a
    mapping ({"runner": "DataflowRunner", "project": "p"}). On a local runner this waits and returns
    the RunSummary; on Dataflow it returns the LaunchedJob (or, with wait=True, the RunSummary).
    Raises ConfigError before any work starts; RunFailed (or RunInterrupted) if the job ends without a
    summary: its cause, the next step, and the run's error.txt (imgsim.runs.stops)."""
    return run_options(RunOptions(input=input, output=output, **options), beam_args(beam_options), store)


def run_options(options: RunOptions, beam_args: Sequence[str] = (), store: Optional[ObjectStore] = None):
    """`run` for already parsed options (the CLI's path)."""
    try:
        from imgsim.pipelines import launcher
    except ImportError as e:
        raise ConfigError(f"imgsim run needs the pipeline extra: pip install 'imgsim[pipeline]' ({e})") from None
    return launcher.launch(options, list(beam_args), store or ObjectStore())


def beam_args(beam_options: Union[Sequence[str], Mapping[str, Any]]) -> list[str]:
    if isinstance(beam_options, Mapping):
        return [f"--{name}={value}" for name, value in beam_options.items()]
    return list(beam_options)


def build_index(output: str, *, embeddings: Optional[str] = None, ids: Optional[Sequence[str]] = None,
                vectors=None, metadata: Union[pa.Table, Mapping[str, Sequence], None] = None,
                signature: Optional[ModelSignature] = None, run_id: Optional[str] = None,
                store: Optional[ObjectStore] = None,
                beam_options: Union[Sequence[str], Mapping[str, Any]] = (), **index_options):
    """Build, check and publish an index under output.

    Either embeddings (a glob of imgsim embeddings Parquet files): the Python form of `imgsim index`,
    a Beam pipeline (beam_options as for `run`; local runners wait and return the report, Dataflow
    returns the LaunchedJob). Or ids and vectors (any (n, d) array; rows are L2-normalised here) with
    optional per-item metadata columns, built in this process without Beam (sharded here too when
    the sharding options say so). Vectors from elsewhere carry no VGG16 signature unless given one,
    so `search_image` refuses them.
    index_options: the index flags (neighbors_k, min_recall, index_mode, index_shards, ...).
    Returns the index report; raises ConfigError, RecallTooLow, IndexInputError or ArtifactError."""
    if (embeddings is None) == (vectors is None):
        raise ConfigError("give either embeddings (a glob of Parquet files) or ids and vectors")
    if embeddings is not None:
        return index_embeddings(IndexCommandOptions(embeddings=embeddings, output=output, run_id=run_id,
                                                    **index_options), beam_args(beam_options), store)
    table = vectors_table(ids, vectors, metadata, signature)
    return _publish(store or ObjectStore(), [table], IndexFlags(**index_options).index_settings(), output, run_id,
                    {"kind": "vectors", "count": table.num_rows})


def index_embeddings(options: IndexCommandOptions, beam_args: Sequence[str] = (),
                     store: Optional[ObjectStore] = None, settings=None):
    """`build_index` from embeddings files, for already parsed options (the CLI's path): the index
    pipeline. The report (local runners), or the LaunchedJob; RecallTooLow when the index was refused.
    settings: IndexSettings beyond the flags (tests)."""
    try:
        from imgsim.pipelines import index_pipeline
    except ImportError as e:
        raise ConfigError(f"imgsim index needs the pipeline extra: pip install 'imgsim[pipeline]' ({e})") from None
    report = index_pipeline.launch(options, list(beam_args), store or ObjectStore(), settings)
    if isinstance(report, dict) and report.get("refused") == "recall":
        raise RecallTooLow(report, report["reason"])
    return report


def _publish(store: ObjectStore, tables: list[pa.Table], settings, output: str, run_id: Optional[str],
             source: dict) -> dict:
    latest = read_latest(store, output)
    layout = RunLayout(output, run_id or new_run_id())
    return build_and_publish(store, tables, settings, layout, latest.generation if latest else 0, source,
                             {"embedded": sum(t.num_rows for t in tables)})


def export(index: str, *, output: str, format: str = "vertex", restricts: Optional[Sequence[str]] = None,
           store: Optional[ObjectStore] = None, **options) -> dict:
    """Write a published index's items in a managed service's import format; the Python form of
    `imgsim export`. restricts: metadata columns to export as restrict namespaces.
    options: rows_per_file, run_id, cache_dir."""
    return export_options(ExportOptions(index=index, output=output, format=format,
                                        restricts=",".join(restricts or []) or None, **options), store)


def export_options(options: ExportOptions, store: Optional[ObjectStore] = None) -> dict:
    """`export` for already parsed options (the CLI's path)."""
    from imgsim.index.consumer import ImageIndex
    from imgsim.index.export import export_vertex

    store = store or ObjectStore()
    index = ImageIndex.open(options.index, run_id=options.run_id, cache_dir=options.cache_dir, store=store)
    try:
        return export_vertex(index, store, options.output, options.restrict_columns, options.rows_per_file)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def evaluate(index: str, *, labels: Optional[str] = None, near_duplicates: Optional[str] = None,
             store: Optional[ObjectStore] = None, **options) -> dict:
    """Measure a published index; the Python form of `imgsim evaluate`.

    labels: a CSV of id,label (labelled retrieval: precision@1/5/10, mAP@10, per label, confused
    pairs); near_duplicates: a glob of images (seeded perturbed copies, embedded with the index's
    model: recall@1, pair precision and recall at the index's threshold, a recommended threshold).
    options: compare=OTHER_OUT, report=HTML path, run_id, weights, seed, cache_dir."""
    return evaluate_options(EvaluateOptions(index=index, labels=labels, near_duplicates=near_duplicates,
                                            **options), store)


def evaluate_options(options: EvaluateOptions, store: Optional[ObjectStore] = None) -> dict:
    """`evaluate` for already parsed options (the CLI's path)."""
    from imgsim.quality.evaluation import difference, evaluate_index
    from imgsim.quality.report import render
    from imgsim.quality.retrieval import read_labels

    store = store or ObjectStore()
    labels = originals = None
    if options.labels:
        try:
            labels = read_labels(store.read_bytes(options.labels).decode("utf-8-sig"))
        except (FileNotFoundError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"--labels {options.labels!r}: {e}") from None
    if options.near_duplicates:
        paths = store.glob(options.near_duplicates)
        if not paths:
            raise ConfigError(f"--near-duplicates {options.near_duplicates!r} matches no files")
        originals = [(path.rsplit("/", 1)[-1], store.read_bytes(path)) for path in paths]
    common = dict(labels=labels, originals=originals, weights=options.weights, seed=options.seed,
                  cache_dir=options.cache_dir)
    result = evaluate_index(store, options.index, run_id=options.run_id, **common)
    evaluated = [result]
    if options.compare:
        other = evaluate_index(store, options.compare, **common)
        evaluated.append(other)
        result = {**result, "compare": other, "difference": difference(result, other)}
    if options.report:
        store.write_bytes(options.report, render(evaluated).encode(), content_type="text/html")
        result["report"] = options.report
    return result


def explore(index: str, output: str, *, run_id: Optional[str] = None, store: Optional[ObjectStore] = None,
            **options) -> dict:
    """Write the explorer, a static site over a published index; the Python form of `imgsim explore`.

    index: an output root (LATEST, or run_id) or an index directory; output: the site's directory,
    local or gs://. options: title, facets ("type,department"), clusters, cache_dir.
    Returns the build report; raises ConfigError (bad options, or an index that cannot be read)."""
    return explore_options(ExploreOptions(index=index, output=output, run_id=run_id, **options), store)


def explore_options(options: ExploreOptions, store: Optional[ObjectStore] = None) -> dict:
    """`explore` for already parsed options (the CLI's path)."""
    from imgsim.explorer.build import build_site
    from imgsim.explorer.source import IndexContents
    from imgsim.index.artifact import ArtifactError

    store = store or ObjectStore()
    try:
        contents = IndexContents.open(options.index, run_id=options.run_id, cache_dir=options.cache_dir, store=store)
        return build_site(contents, options.output, options.explore_settings(), store)
    except (ArtifactError, ValueError) as e:
        raise ConfigError(str(e)) from None


def plan(input: str, *, store: Optional[ObjectStore] = None, **options) -> dict:
    """Count input and estimate a run's time and cost; the Python form of `imgsim plan`.

    options: the flags of `imgsim plan` with underscores (workers, precision, machine_type, prices, ...).
    Returns {"input", "count", "measured", "prices", "estimates": [...]}; ConfigError for bad options."""
    return plan_options(PlanOptions(input=input, **options), store)


def plan_options(options: PlanOptions, store: Optional[ObjectStore] = None) -> dict:
    """`plan` for already parsed options (the CLI's path)."""
    from imgsim.catalogue.inputs import resolve_input
    from imgsim.config.preflight import check_api
    from imgsim.fetch.http import FetchConfig
    from imgsim.planning.costs import PROFILES, Measured, Prices, estimate
    from imgsim.planning.count import count_input

    store = store or ObjectStore()
    try:
        prices = Prices.load(options.prices)
        spec = resolve_input(options.input, store, limit=options.limit, cma_query=options.cma_query(),
                             id_column=options.id_column, url_column=options.url_column,
                             max_metadata_bytes=options.max_metadata_bytes)
        fetch = FetchConfig(allow_private_addresses=options.allow_private_addresses)
        count = count_input(spec, store, fetch, api_total=lambda cma: check_api(cma.query, fetch))
        measured = Measured.packaged()
        chosen = [options.precision] if options.precision else list(PROFILES)
        rows = [estimate(count.images, p, options.workers, prices, measured,
                         options.machine_type if p != "gpu" else None, options.disk_gb) for p in chosen]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {"input": options.input, "count": count.to_dict(),
            "measured": {"date": measured.measured, "machine": measured.machine, "vcpus": measured.vcpus,
                         "images_per_second": measured.images_per_second},
            "prices": {"source": prices.source, "as_of": prices.as_of, "currency": prices.currency},
            "estimates": [r.to_dict() for r in rows]}


def serve(index: str, *, ready=None, store: Optional[ObjectStore] = None, **options) -> None:
    """Serve an index over HTTP until interrupted; the Python form of `imgsim serve`.

    options: the flags of `imgsim serve` (host, port, site, weights, max_upload_mb, ...);
    ready(base_url) is called once it listens. Needs the `serve` extra (FastAPI, uvicorn)."""
    serve_options(ServeOptions(index=index, **options), ready, store)


def serve_options(options: ServeOptions, ready=None, store: Optional[ObjectStore] = None) -> None:
    """`serve` for already parsed options (the CLI's path)."""
    try:
        from imgsim.service.edge import EdgeSettings
        from imgsim.service.server import ServeSettings, serve as run_server
    except ImportError as e:
        raise ConfigError(f"imgsim serve needs the serve extra: pip install 'imgsim[serve]' ({e})") from None
    from imgsim.index.artifact import ArtifactError

    edge = EdgeSettings.for_address(options.host, options.allowed_hosts, cors_origins=options.cors_origin,
                                    header_timeout=options.header_timeout,
                                    min_body_rate=options.min_body_rate_kb * 1024)
    settings = ServeSettings(index=options.index, run_id=options.run_id, host=options.host, port=options.port,
                             site=options.site, weights=options.weights, backend=options.backend,
                             fetch=options.fetch_config(),
                             max_upload_bytes=int(options.max_upload_mb * 1024 * 1024),
                             max_pixels=options.max_image_pixels, max_concurrent=options.max_concurrent_searches,
                             decode_memory_mb=options.decode_memory_mb, cache_dir=options.cache_dir,
                             refresh_seconds=options.refresh_seconds, workers=options.workers, edge=edge)
    try:
        run_server(settings, ready, store)
    except (ArtifactError, ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None


def vectors_table(ids: Optional[Sequence[str]], vectors, metadata=None,
                  signature: Optional[ModelSignature] = None) -> pa.Table:
    """An embeddings table (the run's Parquet schema) from in-memory ids, vectors and metadata."""
    data = np.asarray(vectors, dtype=np.float32)
    if data.ndim != 2 or not len(data):
        raise ConfigError("vectors must be a non-empty (n, d) array")
    ids = [str(i) for i in (ids if ids is not None else range(len(data)))]
    if len(ids) != len(data):
        raise ConfigError(f"{len(ids)} ids for {len(data)} vectors")
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ConfigError("every vector must be finite and non-zero")
    columns = pa.table(metadata or {}) if not isinstance(metadata, pa.Table) else metadata
    reserved = sorted(set(columns.column_names) & (set(EMBEDDING_COLUMNS) | {"row"}))
    if reserved:
        raise ConfigError(f"rename the metadata column(s) {', '.join(reserved)}: the index uses these names")
    if columns.num_columns and columns.num_rows != len(ids):
        raise ConfigError(f"{columns.num_rows} metadata rows for {len(ids)} vectors")
    signature = signature or ModelSignature(model="custom", layer="custom", dim=data.shape[1], weights="",
                                            weights_checksum="", preprocessing="", precision="fp32")
    schema = embeddings_schema(signature, columns.schema)
    given = {"id": pa.array(ids, pa.string()),
             "embedding": pa.FixedSizeListArray.from_arrays(pa.array((data / norms).reshape(-1), pa.float32()),
                                                            data.shape[1]),
             **{name: columns.column(name) for name in columns.column_names}}
    return pa.Table.from_arrays([given.get(f.name, pa.nulls(len(ids), f.type)) for f in schema], schema=schema)
