"""Preflight: every check that touches storage, the network or the weights, in one step → a RunPlan.

    parse (RunOptions, pure) → preflight (this module: I/O, once) → plan (RunPlan) → the Beam graph

Every entry point (the CLI, the Flex Template, `imgsim.run(...)` and the
pipeline's `run(argv, test_pipeline)`) goes through `preflight`, so a bad
input, an unwritable output, a malformed LATEST, unreachable or ill-fitting
weights, or a restart with another model all fail the same way: one line,
before any work starts. Local runs resolve `--weights imagenet` here, so a
machine that cannot download them says so at once instead of in a worker's
traceback.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

from imgsim.catalogue import cma, iiif
from imgsim.catalogue.cma import CmaQuery
from imgsim.catalogue.iiif_documents import DocumentError, read_document
from imgsim.catalogue.inputs import CmaInput, IiifInput, InputSpec, resolve_input
from imgsim.catalogue.manifest import ManifestError
from imgsim.config.calibration import QuantizedModel, prepare_int8
from imgsim.config.flags import ConfigError
from imgsim.config.options import RunOptions
from imgsim.embed import weights
from imgsim.embed.decode import DecodeConfig
from imgsim.embed.model import ARCHITECTURE, ModelSpec, build_model
from imgsim.embed.signature import ModelSignature
from imgsim.failures import StageError
from imgsim.fetch.http import FetchConfig, Fetcher
from imgsim.index.artifact import ArtifactError
from imgsim.index.build import IndexSettings
from imgsim.index.latest import read_latest
from imgsim.runs.layout import RunLayout, new_run_id
from imgsim.runs.reuse import ReuseSource, discover_sources
from imgsim.storage import ObjectStore, is_gcs


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything the pipeline graph is built from: the options, checked and resolved once."""

    options: RunOptions
    input: InputSpec
    layout: RunLayout
    model: ModelSpec
    weights_checksum: str
    decode: DecodeConfig
    fetch: FetchConfig
    api_fetch: FetchConfig
    index: Optional[IndexSettings]  # None: no index step
    quantized: Optional[QuantizedModel] = None  # int8: the run's quantised model
    latest_generation: int = 0  # LATEST's version when the run started (0: none yet)
    reuse_sources: tuple[ReuseSource, ...] = ()  # earlier embeddings that may stand in
    reuse_notes: tuple[str, ...] = ()
    remote_workers: bool = False  # the workers are other machines (Dataflow)
    started_at: float = dataclasses.field(default_factory=time.time)

    @property
    def signature(self) -> ModelSignature:
        return ModelSignature(model=ARCHITECTURE, layer=self.model.layer, dim=self.model.dim,
                              weights=self.model.weights, weights_checksum=self.weights_checksum,
                              preprocessing=self.decode.preprocessing_id, precision=self.model.precision,
                              backend=self.model.backend,
                              quantization=self.quantized.checksum if self.quantized else "")

    def model_report(self) -> dict:
        """How the vectors are made, for the summary and the index manifest."""
        report = {"backend": self.model.backend, "precision": self.model.precision}
        return {**report, **self.quantized.describe()} if self.quantized else report


def preflight(options: RunOptions, store: ObjectStore, *, remote_workers: bool = False,
              check_weights_fit: bool = True) -> RunPlan:
    """Check what the run needs from the world and resolve it; ConfigError with one line otherwise.

    remote_workers: the workers are other machines (Dataflow), so local paths cannot work and the
    workers download the ImageNet weights themselves.
    check_weights_fit: build the model once to refuse a weights file that does not fit the layer."""
    try:
        return _preflight(options, store, remote_workers, check_weights_fit)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError, ManifestError, ArtifactError) as e:
        raise ConfigError(str(e)) from None


def _preflight(options: RunOptions, store: ObjectStore, remote_workers: bool, check_weights_fit: bool) -> RunPlan:
    if remote_workers:
        check_reachable_from_workers(options)
    spec = resolve_input(options.input, store, limit=options.limit, cma_query=options.cma_query(),
                         id_column=options.id_column, url_column=options.url_column,
                         max_metadata_bytes=options.max_metadata_bytes)
    layout = RunLayout(options.output, options.run_id or new_run_id())
    check_output(store, layout)
    if options.site_output:
        try:
            store.check_writable(options.site_output)
        except Exception as e:
            raise ConfigError(f"--site-output {options.site_output!r} is not writable ({type(e).__name__}: {e})") \
                from None
    latest = read_latest(store, options.output)
    model = options.model_spec()
    if model.backend == "openvino":
        check_openvino()
    checksum = weights_checksum(store, model, download=not remote_workers or model.precision == "int8",
                                check_fit=check_weights_fit)
    if isinstance(spec, CmaInput):  # after the local checks: the network is the slowest to say no
        check_api(spec.query, options.api_fetch_config())
    if isinstance(spec, IiifInput):
        check_iiif(spec.url, options.api_fetch_config(), store)
    quantized = None
    if model.precision == "int8":
        quantized = prepare_int8(store, model, weights.resolve(model.weights, model.include_top, store).path,
                                 checksum, layout, latest.run_id if latest else None, spec, options.fetch_config(),
                                 options.api_fetch_config(), options.decode_config(), options.calibration_size,
                                 options.calibration, options.min_int8_agreement, options.full)
    plan = RunPlan(options=options, input=spec, layout=layout, model=model, weights_checksum=checksum,
                   decode=options.decode_config(), fetch=options.fetch_config(),
                   api_fetch=options.api_fetch_config(),
                   index=None if options.no_index else options.index_settings(), quantized=quantized,
                   latest_generation=latest.generation if latest else 0, remote_workers=remote_workers)
    sources, notes = discover_sources(store, layout, latest.run_id if latest else None, plan.signature,
                                      options.full, thumbnails=options.thumbnails)
    return dataclasses.replace(plan, reuse_sources=tuple(sources), reuse_notes=tuple(notes))


def weights_checksum(store: ObjectStore, model: ModelSpec, download: bool, check_fit: bool) -> str:
    """The weights' checksum for the signature. download: fetch the ImageNet file now (a local run
    needs it anyway), so that a failed download is a one-line error here."""
    if model.weights == weights.IMAGENET and not download:
        return weights.weights_checksum(model.weights, model.include_top, store)  # Keras verifies the MD5
    local = weights.resolve(model.weights, model.include_top, store)
    if check_fit and model.weights != weights.IMAGENET:
        build_model(model, local.path)  # imports TensorFlow: only when a file must be checked
    return local.checksum


def check_openvino() -> None:
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--backend openvino needs the openvino extra: pip install 'imgsim[openvino]' ({e})") from None


def check_reachable_from_workers(options: RunOptions) -> None:
    for flag, value, allowed in (("--input", options.input, ("cma",)), ("--output", options.output, ()),
                                 ("--site-output", options.site_output, ()),
                                 ("--weights", options.weights, (weights.IMAGENET,))):
        where = value[len(iiif.PREFIX):] if flag == "--input" and value and value.startswith(iiif.PREFIX) else value
        if where and where not in allowed and not is_gcs(where) and not where.startswith(("http://", "https://")):
            raise ConfigError(f"{flag} {value!r} is a local path, which this runner's workers cannot read: "
                              "use a gs:// location")


def check_iiif(url: str, fetch: FetchConfig, store: ObjectStore) -> None:
    """The root IIIF document reads and parses as a manifest or collection, or a one-line ConfigError:
    a run cannot know its collection without it (its members are read by the workers)."""
    fetcher = Fetcher(fetch, pool_size=1)
    try:
        read_document(url, fetcher, store)
    except DocumentError as e:
        raise ConfigError(f"--input iiif:{url}: {e.problem.reason}: {e.problem.detail}; check the address and "
                          "that it is a IIIF Presentation 2.1 or 3.0 manifest or collection") from None
    finally:
        fetcher.close()


def check_api(query: CmaQuery, fetch: FetchConfig) -> int:
    """The museum API answers a one-record page (its total within the planning bound), or a one-line
    ConfigError: a blocked or unreachable API is found here, not in a worker's traceback."""
    url = query.page_url(0, 1)
    fetcher = Fetcher(fetch, pool_size=1)
    try:
        total, _ = cma.load_page(fetcher.fetch(url, headers={"Accept": "application/json"}).data)
        cma.plan_pages(total, query)
    except StageError as e:
        raise ConfigError(f"--input cma: the API at {query.api_url} cannot be read ({e}); check the address "
                          "(--cma-api-url) and this machine's network") from None
    except ValueError as e:
        raise ConfigError(f"--input cma: {query.api_url}: {e}") from None
    finally:
        fetcher.close()
    return total


def check_output(store: ObjectStore, layout: RunLayout) -> None:
    """The run has not finished already and the output root is writable. The probe goes to the root,
    so that a start that fails leaves no empty run directory behind."""
    if store.exists(layout.summary_path):
        raise ConfigError(f"run {layout.run_id!r} already finished under {layout.output}; "
                          "choose another --run-id")
    try:
        store.check_writable(layout.output)
    except Exception as e:
        raise ConfigError(f"--output {layout.output!r} is not writable ({type(e).__name__}: {e})") from None
