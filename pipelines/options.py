"""Command-line flags -> typed options -> the RunConfig that transforms are built from.

ImgsimOptions declares imgsim's flags beside Beam's own (so `--runner`,
`--project`, `--temp_location` ... pass straight through). RunConfig.from_options
checks everything that can be checked before a worker starts and raises
ConfigError with one line that says what to fix.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional
from apache_beam.options.pipeline_options import PipelineOptions

from imgsim import artifact, cma, reuse, weights
from imgsim.artifact import ArtifactError
from imgsim.commands import add_index_arguments, index_settings
from imgsim.fetch import DEFAULT_USER_AGENT, FetchConfig
from imgsim.indexer import IndexSettings
from imgsim.images import DEFAULT_MAX_PIXELS, RESIZE_MODES, DecodeConfig
from imgsim.inputs import InputSpec, resolve_input
from imgsim.layout import RunLayout, new_run_id
from imgsim.manifest import ManifestError
from imgsim.model import ARCHITECTURE, LAYER_DIMS, PRECISIONS, ModelSpec
from imgsim.signature import ModelSignature
from imgsim.storage import ObjectStore, is_gcs


class ConfigError(ValueError):
    """Bad configuration, found before any work starts."""


class ImgsimOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("imgsim input")
        g.add_argument("--input", help="manifest (.csv/.jsonl/.parquet, local or gs://), a glob or "
                       "directory of images, or 'cma' for the Cleveland Museum of Art API")
        g.add_argument("--limit", type=int, default=None, help="process only the first N input rows")
        g.add_argument("--cma-api-url", dest="cma_api_url", default=cma.DEFAULT_API_URL)
        g.add_argument("--cma-cc0", dest="cma_cc0", action="store_true", help="only CC0 works")
        g.add_argument("--cma-type", dest="cma_type", default=None, help="e.g. Painting")
        g.add_argument("--cma-department", dest="cma_department", default=None)
        g.add_argument("--cma-page-size", dest="cma_page_size", type=int, default=cma.MAX_PAGE_SIZE)

        g = parser.add_argument_group("imgsim output")
        g.add_argument("--output", help="local directory or gs://bucket/prefix")
        g.add_argument("--run-id", dest="run_id", default=None, help="default: a UTC timestamp")
        g.add_argument("--wait", action="store_true", help="follow a Dataflow job to its end")
        g.add_argument("--full", action="store_true",
                       help="embed everything again instead of reusing LATEST's unchanged embeddings")
        g.add_argument("--checkpoint-rows", dest="checkpoint_rows", type=int, default=500,
                       help="checkpoint embeddings every N rows so a restart with the same --run-id "
                            "resumes (0: no checkpoint)")
        g.add_argument("--progress-interval", dest="progress_interval", type=float, default=10.0,
                       help="seconds between progress lines on local runners (0: none)")

        g = parser.add_argument_group("imgsim model")
        g.add_argument("--layer", default="fc2", help=f"one of {', '.join(LAYER_DIMS)}")
        g.add_argument("--weights", default=weights.IMAGENET,
                       help="'imagenet' (Keras download), or a Keras weights file: local path or gs://")
        g.add_argument("--precision", default="fp32", help=f"one of {', '.join(PRECISIONS)}")
        g.add_argument("--resize", default="pad", help=f"one of {', '.join(RESIZE_MODES)}")
        g.add_argument("--min-batch-size", dest="min_batch_size", type=int, default=1)
        g.add_argument("--max-batch-size", dest="max_batch_size", type=int, default=32)
        g.add_argument("--large-model", dest="large_model", action="store_true",
                       help="one model per machine, shared across worker processes")

        g = parser.add_argument_group("imgsim downloads")
        g.add_argument("--download-threads", dest="download_threads", type=int, default=16)
        g.add_argument("--connect-timeout", dest="connect_timeout", type=float, default=10.0)
        g.add_argument("--read-timeout", dest="read_timeout", type=float, default=30.0)
        g.add_argument("--download-deadline", dest="download_deadline", type=float, default=120.0,
                       help="seconds for one download, retries included")
        g.add_argument("--max-download-mb", dest="max_download_mb", type=float, default=50.0)
        g.add_argument("--max-retries", dest="max_retries", type=int, default=3)
        g.add_argument("--retry-after-max", dest="retry_after_max", type=float, default=60.0,
                       help="cap on a server's Retry-After, in seconds")
        g.add_argument("--max-redirects", dest="max_redirects", type=int, default=5)
        g.add_argument("--user-agent", dest="user_agent", default=DEFAULT_USER_AGENT)
        g.add_argument("--allow-private-addresses", dest="allow_private_addresses", action="store_true",
                       help="allow URLs whose host is loopback, private or link-local (unsafe in clouds)")
        g.add_argument("--max-connections-per-host", dest="max_connections_per_host", type=int, default=8)
        g.add_argument("--max-requests-per-second-per-host", dest="max_requests_per_second_per_host",
                       type=float, default=20.0, help="per worker process; 0 = unlimited")
        g.add_argument("--respect-robots", dest="respect_robots", action="store_true",
                       help="honour robots.txt")
        g.add_argument("--max-image-pixels", dest="max_image_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                       help="larger images are refused as decompression bombs")
        parser.add_argument("--no-index", dest="no_index", action="store_true",
                            help="write embeddings only; build and publish no index")
        add_index_arguments(parser)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything the pipeline graph is built from; checked on the launcher."""

    input: InputSpec
    layout: RunLayout
    model: ModelSpec
    weights_checksum: str
    decode: DecodeConfig
    fetch: FetchConfig
    api_fetch: FetchConfig
    download_threads: int = 16
    min_batch_size: int = 1
    max_batch_size: int = 32
    large_model: bool = False
    progress_interval: float = 10.0
    index: Optional[IndexSettings] = IndexSettings()  # None: no index step
    latest_generation: int = 0  # LATEST's version when the run started (0: none yet)
    reuse_sources: tuple = ()  # imgsim.reuse.ReuseSource: earlier embeddings that may stand in
    reuse_notes: tuple = ()
    checkpoint_rows: int = 500
    started_at: float = dataclasses.field(default_factory=time.time)

    @property
    def signature(self) -> ModelSignature:
        return ModelSignature(model=ARCHITECTURE, layer=self.model.layer, dim=self.model.dim,
                              weights=self.model.weights, weights_checksum=self.weights_checksum,
                              preprocessing=self.decode.preprocessing_id, precision=self.model.precision)

    @classmethod
    def from_options(cls, options: PipelineOptions, *, check_weights_fit: bool = True,
                     remote_workers: bool = False) -> "RunConfig":
        """remote_workers: the workers are other machines (Dataflow), so local paths cannot work."""
        o = options.view_as(ImgsimOptions)
        try:
            if remote_workers:
                _check_reachable_from_workers(o)
            return cls._build(o, check_weights_fit)
        except ConfigError:
            raise
        except (ValueError, FileNotFoundError, ManifestError, ArtifactError) as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def _build(cls, o: ImgsimOptions, check_weights_fit: bool) -> "RunConfig":
        if not o.output:
            raise ConfigError("--output is required: a local directory or gs://bucket/prefix")
        _require(o.download_threads >= 1, "--download-threads must be at least 1")
        _require(1 <= o.min_batch_size <= o.max_batch_size,
                 "--min-batch-size and --max-batch-size need 1 <= min <= max")
        _require(o.max_download_mb > 0, "--max-download-mb must be positive")
        _require(o.max_image_pixels >= 1, "--max-image-pixels must be positive")
        model = ModelSpec(layer=o.layer, weights=o.weights, precision=o.precision)
        decode = DecodeConfig(resize=o.resize, max_pixels=o.max_image_pixels)
        fetch = FetchConfig(
            connect_timeout=o.connect_timeout, read_timeout=o.read_timeout, deadline=o.download_deadline,
            max_bytes=int(o.max_download_mb * 1024 * 1024), max_retries=o.max_retries,
            retry_after_max=o.retry_after_max, max_redirects=o.max_redirects, user_agent=o.user_agent,
            allow_private_addresses=o.allow_private_addresses,
            max_connections_per_host=o.max_connections_per_host,
            max_requests_per_second_per_host=o.max_requests_per_second_per_host,
            respect_robots=o.respect_robots)
        # API pages are JSON, bigger than most images are allowed to be, and never robots-gated.
        api_fetch = dataclasses.replace(fetch, max_bytes=max(fetch.max_bytes, 256 * 1024 * 1024),
                                        respect_robots=False)
        query = cma.CmaQuery(api_url=o.cma_api_url, cc0=o.cma_cc0, type=o.cma_type,
                             department=o.cma_department, page_size=o.cma_page_size)
        spec = resolve_input(o.input, limit=o.limit, cma_query=query)
        index = None if o.no_index else index_settings(o)
        layout = RunLayout(o.output, o.run_id or new_run_id())
        _check_output(layout)
        _require(o.checkpoint_rows >= 0, "--checkpoint-rows must not be negative")
        store = ObjectStore()
        latest = artifact.read_latest(store, o.output)
        checksum = _weights_checksum(model, check_weights_fit)
        config = cls(input=spec, layout=layout, model=model, weights_checksum=checksum, decode=decode,
                   fetch=fetch, api_fetch=api_fetch, download_threads=o.download_threads,
                   min_batch_size=o.min_batch_size, max_batch_size=o.max_batch_size,
                   large_model=o.large_model, progress_interval=o.progress_interval, index=index,
                   latest_generation=latest.generation if latest else 0, checkpoint_rows=o.checkpoint_rows)
        sources, notes = reuse.discover_sources(store, layout, latest, config.signature, o.full)
        return dataclasses.replace(config, reuse_sources=tuple(sources), reuse_notes=tuple(notes))


def _weights_checksum(model: ModelSpec, check_fit: bool) -> str:
    if model.weights == weights.IMAGENET:
        return weights.weights_checksum(model.weights, model.include_top)  # Keras verifies the file
    local = weights.resolve(model.weights, model.include_top)
    if check_fit:
        from imgsim.model import build_model  # imports TensorFlow: only when a file must be checked
        build_model(model, local.path)
    return local.checksum


def _check_reachable_from_workers(o: ImgsimOptions) -> None:
    for flag, value, allowed in (("--input", o.input, ("cma",)), ("--output", o.output, ()),
                                 ("--weights", o.weights, (weights.IMAGENET,))):
        if value and value not in allowed and not is_gcs(value):
            raise ConfigError(f"{flag} {value!r} is a local path, which Dataflow workers cannot read: "
                              "use a gs:// location")


def _check_output(layout: RunLayout) -> None:
    store = ObjectStore()
    if store.exists(layout.summary_path):
        raise ConfigError(f"run {layout.run_id!r} already finished under {layout.output}; "
                          "choose another --run-id")
    try:
        store.check_writable(layout.run_dir)
    except Exception as e:
        raise ConfigError(f"--output {layout.output!r} is not writable ({type(e).__name__}: {e})") from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def unknown_flags(argv: list[str]) -> list[str]:
    """Flags that neither imgsim nor any Beam options class knows (Beam would only warn)."""
    parsers = []
    PipelineOptions(argv).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(argv)
    return [arg for arg in unknown if arg.startswith("-")]
