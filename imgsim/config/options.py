"""The typed options of every command, declared once (each field is a flag; see imgsim.config.flags).

Constructing an options object is parsing: it checks types, ranges and
combinations, touches nothing outside the process, and raises ConfigError
with one line. Checks that need storage, the network or the weights run
afterwards, in one preflight step (imgsim.config.preflight).

`RunOptions` is `imgsim run` (and the Flex Template, and `imgsim.run(...)`);
its fields are grouped by the mixins below, in --help order.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from imgsim.catalogue.cma import DEFAULT_API_URL, MAX_PAGE_SIZE, CmaQuery
from imgsim.catalogue.values import DEFAULT_MAX_METADATA_BYTES
from imgsim.config.flags import ConfigError, Flags, flag
from imgsim.embed.decode import DEFAULT_MAX_PIXELS, RESIZE_MODES, DecodeConfig, max_decode_cost
from imgsim.embed.memory import DEFAULT_DECODE_MEMORY_MB, MB
from imgsim.embed.model import BACKENDS, LAYER_DIMS, PRECISIONS, ModelSpec
from imgsim.embed.weights import IMAGENET
from imgsim.explorer.build import ExploreSettings
from imgsim.fetch.http import DEFAULT_USER_AGENT, FetchConfig
from imgsim.fetch.lanes import Lanes
from imgsim.index.build import IndexSettings
from imgsim.index.filtered import ORDERS
from imgsim.index.export import FORMATS as EXPORT_FORMATS
from imgsim.index.export import parse_columns
from imgsim.index.filters import Filter
from imgsim.index.searcher import MODES, REORDER_TYPES, IndexOptions
from imgsim.index.sharding import DEFAULT_MEMORY_MB, ShardingOptions
from imgsim.runs.layout import RUN_ID_PATTERN, check_run_id

# API pages are JSON, bigger than most images are allowed to be.
API_MAX_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class CatalogueFlags(Flags):
    GROUP = "input"

    input: Optional[str] = flag(
        None, "a manifest (.csv/.jsonl/.parquet, optionally .gz; local or gs://), a glob or directory of "
        "images, 'cma' for the Cleveland Museum of Art API, or iiif:URL for a IIIF manifest or collection",
        required=True, label="Input",
        template_help="what to embed: a manifest (.csv, .jsonl, .parquet, optionally .gz) with an id and a "
        "url column, a glob or directory of images on gs:// (e.g. gs://bucket/scans/**), 'cma' for the "
        "Cleveland Museum of Art Open Access API, or iiif:URL for a IIIF Presentation manifest or collection",
        template_regex="^(cma|gs://[^ ]+|iiif:(https?|gs)://[^ ]+)$")
    limit: Optional[int] = flag(None, "process only the first N input rows", minimum=1, label="Row limit",
                                default_text="all")
    id_column: str = flag("id", "the manifest column that holds each row's id", label="Id column")
    url_column: str = flag("url", "the manifest column that holds each row's image URL", label="URL column")
    max_metadata_bytes: int = flag(
        DEFAULT_MAX_METADATA_BYTES, "the most bytes (UTF-8) a metadata value or a CSV/JSONL manifest line may "
        "hold; a row over it fails as invalid_record, and a longer line is skipped without being held in memory",
        minimum=1,
        label="Maximum metadata bytes")
    cma_api_url: str = flag(DEFAULT_API_URL, "the Cleveland Museum of Art API endpoint, for --input cma",
                            label="CMA API URL", template_regex="^https?://[^ ]+$")
    cma_cc0: bool = flag(False, "for --input cma: only CC0 works", label="CMA: CC0 only")
    cma_type: Optional[str] = flag(None, "for --input cma: only works of this type, e.g. Painting",
                                   label="CMA: type")
    cma_department: Optional[str] = flag(None, "for --input cma: only works of this department",
                                         label="CMA: department")
    cma_page_size: int = flag(MAX_PAGE_SIZE, "for --input cma: records per API page (the API's maximum)",
                              minimum=1, maximum=MAX_PAGE_SIZE, label="CMA: page size")

    def cma_query(self) -> CmaQuery:
        return CmaQuery(api_url=self.cma_api_url, cc0=self.cma_cc0, type=self.cma_type,
                        department=self.cma_department, page_size=self.cma_page_size)


@dataclasses.dataclass(frozen=True)
class OutputFlags(Flags):
    GROUP = "output"

    output: Optional[str] = flag(
        None, "a local directory or gs://bucket/prefix", required=True, label="Output root",
        template_help="gs://bucket/prefix the run is written under (runs/RUN_ID/...) and whose LATEST "
        "pointer is updated", template_regex="^gs://[^ ]+$")
    run_id: Optional[str] = flag(
        None, "the run's name under OUTPUT/runs/; a restart with the same id resumes", label="Run id",
        default_text="a UTC timestamp such as 20261125T033100Z", template_regex=RUN_ID_PATTERN)
    full: bool = flag(False, "embed everything again instead of reusing the unchanged embeddings of the run "
                      "LATEST points at", label="Full rebuild")
    checkpoint_rows: int = flag(500, "checkpoint embeddings every N rows so that a restart with the same "
                                "--run-id resumes (0: no checkpoint)", minimum=0, label="Checkpoint rows")
    checkpoint_seconds: float = flag(60.0, "and at least every this many seconds while embeddings arrive, so "
                                     "small runs resume too", positive=True, label="Checkpoint seconds")
    progress_interval: float = flag(
        10.0, "seconds between progress lines on local runners (0: none)", minimum=0, template=False,
        template_excluded="progress lines are printed on local runners only; on Dataflow the counters in "
        "namespace imgsim show progress")
    wait: bool = flag(False, "on Dataflow, follow the job to its end and print its summary", template=False,
                      template_excluded="a Flex Template launcher must return once the job is submitted; "
                      "following the job would hold the launcher VM until the launch times out")
    max_attempts: int = flag(2, "on runners imgsim waits for, start a job that failed once started up to this many "
                             "times in all, each attempt resuming from the checkpoint (a lost worker process, a "
                             "killed node)", minimum=1, template=False,
                             template_excluded="Dataflow retries failed work items itself")
    no_index: bool = flag(False, "write embeddings only; build and publish no index", label="No index")
    thumbnails: bool = flag(True, "write a small WebP thumbnail of every embedded image (from the pixels decoded "
                            "for the model) to runs/RUN_ID/thumbnails/, for the explorer", label="Thumbnails")
    site: bool = flag(False, "after publishing, build the explorer (a static site) into runs/RUN_ID/site/ and "
                      "point OUTPUT/site/index.html at it", label="Explorer site")
    title: Optional[str] = flag(None, "the explorer site's title (with --site)", label="Site title",
                                default_text="the collection's name: the museum, the manifest's or the folder's")
    originals: bool = flag(False, "let the explorer site load items' original images from their own hosts (with "
                           "--site)", label="Site loads originals")
    iiif_viewer: Optional[str] = flag(None, "a IIIF viewer's address for an item's manifest, with {manifest} "
                                      "where its URL goes (with --site)", label="Site IIIF viewer",
                                      default_text="none: the manifest is linked")
    site_output: Optional[str] = flag(None, "build the explorer here instead (local or gs://, e.g. a bucket with "
                                      "website hosting); its entry page moves only while LATEST points at this run "
                                      "(with --site)", label="Site output", metavar="SITE",
                                      default_text="OUTPUT/runs/RUN_ID/site/, and OUTPUT/site/index.html forwards")


@dataclasses.dataclass(frozen=True)
class ModelFlags(Flags):
    GROUP = "model"

    layer: str = flag("fc2", "the embedding layer: fc2 (4096-d), fc1 (4096-d), pool (block5 average pooling, "
                      "512-d), gem (generalized-mean pooling of block5, 512-d) or pool45 (block4 and block5 average "
                      "pooling, 1024-d)", choices=tuple(LAYER_DIMS), label="VGG16 layer")
    weights: str = flag(IMAGENET, "'imagenet' (the official Keras files, MD5-checked) or a Keras weights "
                        "file, local or gs://", label="Weights",
                        template_help="'imagenet' (the official Keras files, MD5-checked) or a Keras "
                        "weights file on gs://", template_regex="^(imagenet|gs://[^ ]+)$")
    backend: str = flag("keras", "keras (TensorFlow), or openvino (the `openvino` extra: fp32, bf16 and int8 on "
                        "CPUs)", choices=BACKENDS, label="Inference backend")
    precision: str = flag("fp32", "fp32; bf16 (about twice as fast on CPUs with AVX512-BF16 or AMX); or int8 "
                          "(--backend openvino: quantised once per run from a calibration sample, about four "
                          "times fp32 on CPUs with AVX512-VNNI or AMX)", choices=PRECISIONS, label="Precision")
    calibration: Optional[str] = flag(None, "int8: a glob or folder of images (local or gs://) to calibrate on",
                                      default_text="the first --calibration-size images of the input",
                                      label="Calibration images")
    calibration_size: int = flag(64, "int8: how many images to calibrate on, and to check agreement with fp32 on",
                                 minimum=16, label="Calibration size")
    min_int8_agreement: float = flag(0.9, "int8: refuse to embed when int8's top-10 neighbours agree with fp32's "
                                     "on less than this share of the sample", minimum=0, maximum=1,
                                     label="Minimum int8 agreement")
    resize: str = flag("pad", "pad (letterbox the whole image) or crop (the centre square)",
                       choices=RESIZE_MODES, label="Resize mode")
    min_batch_size: int = flag(1, "the smallest inference batch", minimum=1, label="Minimum batch size")
    max_batch_size: int = flag(32, "the largest inference batch", minimum=1, label="Maximum batch size")
    large_model: bool = flag(False, "one model per worker machine, shared by its SDK processes, instead of "
                             "one per process", label="Large model")


@dataclasses.dataclass(frozen=True)
class DownloadFlags(Flags):
    GROUP = "downloads"

    download_threads: int = flag(16, "concurrent downloads (each decoded on its thread) per worker thread",
                                 minimum=1, label="Download threads")
    connect_timeout: float = flag(10.0, "seconds per connection attempt", positive=True,
                                  label="Connect timeout")
    read_timeout: float = flag(30.0, "seconds per socket read", positive=True, label="Read timeout")
    download_deadline: float = flag(120.0, "seconds for one download, retries and waits included",
                                    positive=True, label="Download deadline")
    max_download_mb: float = flag(50.0, "byte cap per image in MB, enforced while streaming", positive=True,
                                  label="Maximum download size")
    max_retries: int = flag(3, "retries on connection errors, timeouts, 408, 429 and 5xx", minimum=0,
                            label="Maximum retries")
    retry_after_max: float = flag(60.0, "a server's Retry-After is honoured up to this many seconds",
                                  minimum=0, label="Retry-After cap")
    max_redirects: int = flag(5, "redirects followed per download", minimum=0, label="Maximum redirects")
    user_agent: str = flag(DEFAULT_USER_AGENT, "the User-Agent sent to image hosts", label="User agent")
    allow_private_addresses: bool = flag(
        False, "fetch URLs whose host resolves to loopback, private or link-local addresses (the cloud "
        "metadata server among them): unsafe in clouds", label="Allow private addresses")
    max_connections_per_host: int = flag(8, "concurrent connections per host, for the whole job (per worker "
                                         "process with --host-lanes 0)", minimum=1, label="Connections per host")
    max_requests_per_second_per_host: float = flag(
        20.0, "request starts per second per host, for the whole job (per worker process with --host-lanes 0; "
        "0: unlimited)", minimum=0, label="Requests per second per host")
    host_lanes: int = flag(4, "keys a host's rows are spread over, each with its share of the host's limits, so "
                           "that the limits hold across workers; at most --max-connections-per-host are used "
                           "(0: no lanes, the limits hold per worker process)", minimum=0, label="Lanes per host")
    respect_robots: bool = flag(False, "honour robots.txt (RFC 9309)", label="Respect robots.txt")
    max_image_pixels: int = flag(DEFAULT_MAX_PIXELS, "larger images are refused as decompression bombs",
                                 minimum=1, label="Maximum image pixels")
    decode_memory_mb: int = flag(DEFAULT_DECODE_MEMORY_MB, "memory one worker process may spend decoding "
                                 "images at once; a large image waits until it fits", minimum=64,
                                 label="Decode memory (MB)")


@dataclasses.dataclass(frozen=True)
class IndexFlags(Flags):
    GROUP = "index"

    index_mode: str = flag("auto", "the ScaNN configuration (auto: chosen by collection size)", choices=MODES,
                           label="Index mode")
    index_leaves: Optional[int] = flag(None, "tree_ah: the number of partitions", minimum=1,
                                       label="Index leaves", default_text="about the square root of the count")
    index_leaves_to_search: Optional[int] = flag(None, "tree_ah: partitions searched per query", minimum=1,
                                                 label="Leaves to search", default_text="5% of the leaves")
    index_reorder: Optional[int] = flag(None, "candidates re-scored exactly", minimum=1,
                                        label="Re-ordering candidates", default_text="max(100, 10k)")
    index_reorder_type: str = flag("float32", "the precision of the re-ordering data", choices=REORDER_TYPES,
                                   label="Re-ordering precision")
    neighbors_k: int = flag(20, "neighbours per item in neighbors.parquet", minimum=1,
                            label="Neighbours per item")
    exact_neighbors_max: int = flag(200_000, "neighbors.parquet is exact (all pairs: time grows with the square "
                                    "of the count) up to this many items, and found through the index above",
                                    minimum=0, label="Exact neighbours up to")
    min_recall: float = flag(0.95, "refuse to publish an index whose measured recall@10 is lower", minimum=0,
                             maximum=1, label="Minimum recall")
    recall_queries: int = flag(1000, "queries used to measure recall", minimum=1, label="Recall queries")
    duplicate_threshold: float = flag(0.95, "the cosine similarity at which two items join a near-duplicate "
                                      "group", minimum=-1, maximum=1, label="Duplicate threshold")
    keep_runs: Optional[int] = flag(None, "after publishing, delete finished runs beyond the N most recent (this "
                                    "run included); unfinished runs are never deleted", minimum=1,
                                    label="Keep runs", default_text="keep all")
    index_shards: Optional[int] = flag(
        None, "split the index into N shards (partitions of the vectors, each its own searcher), built in "
        "parallel on the workers; 1: one searcher", minimum=1, label="Index shards",
        default_text="as many as --index-memory-mb needs; one for collections within it")
    index_memory_mb: Optional[int] = flag(
        None, "the memory one worker may use to build one searcher; a collection that needs more is sharded",
        minimum=1, label="Index memory per worker (MB)", default_text=f"{DEFAULT_MEMORY_MB}")
    index_shards_to_search: Optional[int] = flag(
        None, "sharded index: how many of the nearest shards a query searches", minimum=1,
        label="Shards to search", default_text="the fewest that keep the measured recall")
    full_rebuild: bool = flag(False, "build the whole index even when the published sharded index could grow "
                              "(at most 10% of its items new, changed or deleted)", label="Full rebuild")

    def __post_init__(self):
        super().__post_init__()
        _checked(self.index_settings)

    def sharding_options(self) -> ShardingOptions:
        return ShardingOptions(shards=self.index_shards, memory_mb=self.index_memory_mb,
                               shards_to_search=self.index_shards_to_search)

    def index_settings(self) -> IndexSettings:
        options = IndexOptions(mode=self.index_mode, num_leaves=self.index_leaves,
                               leaves_to_search=self.index_leaves_to_search, reorder=self.index_reorder,
                               reorder_type=self.index_reorder_type)
        return IndexSettings(options=options, neighbors_k=self.neighbors_k, min_recall=self.min_recall,
                             recall_queries=self.recall_queries, duplicate_threshold=self.duplicate_threshold,
                             exact_neighbors_max=self.exact_neighbors_max, keep_runs=self.keep_runs,
                             sharding=self.sharding_options(), full_rebuild=self.full_rebuild)


@dataclasses.dataclass(frozen=True)
class RunOptions(IndexFlags, DownloadFlags, ModelFlags, OutputFlags, CatalogueFlags):
    """`imgsim run`: embed a collection and publish its index. Beam's own options travel separately."""

    def __post_init__(self):
        super().__post_init__()
        if self.min_batch_size > self.max_batch_size:
            raise ConfigError("--min-batch-size and --max-batch-size need 1 <= min <= max")
        if self.site and self.no_index:
            raise ConfigError("--site shows the index: it cannot be combined with --no-index")
        if (self.title is not None or self.originals or self.site_output or self.iiif_viewer) and not self.site:
            raise ConfigError("--title, --originals, --iiif-viewer and --site-output describe the explorer site: "
                              "add --site")
        if self.run_id is not None:
            _checked(check_run_id, self.run_id)
        worst = max_decode_cost(self.max_image_pixels)
        if worst > self.decode_memory_mb * MB:
            raise ConfigError(f"an image of --max-image-pixels {self.max_image_pixels} can take {worst // MB + 1} MB "
                              f"to decode, more than --decode-memory-mb {self.decode_memory_mb}: raise "
                              "--decode-memory-mb or lower --max-image-pixels")
        # Building the typed configurations checks whatever the flags alone could not.
        _checked(self.fetch_config)
        _checked(self.site_settings)
        _checked(self.model_spec)
        _checked(self.decode_config)
        _checked(self.cma_query)
        _checked(self.index_settings)

    def fetch_config(self) -> FetchConfig:
        return FetchConfig(
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout, deadline=self.download_deadline,
            max_bytes=int(self.max_download_mb * 1024 * 1024), max_retries=self.max_retries,
            retry_after_max=self.retry_after_max, max_redirects=self.max_redirects, user_agent=self.user_agent,
            allow_private_addresses=self.allow_private_addresses,
            max_connections_per_host=self.max_connections_per_host,
            max_requests_per_second_per_host=self.max_requests_per_second_per_host,
            respect_robots=self.respect_robots)

    def lanes(self) -> Optional[Lanes]:
        """The job-wide host limits as lanes (imgsim.fetch.lanes); None: per worker process."""
        if not self.host_lanes:
            return None
        return Lanes.sharing(self.host_lanes, self.max_connections_per_host, self.max_requests_per_second_per_host)

    def api_fetch_config(self) -> FetchConfig:
        """The museum API's pages: the same guard and limits, a larger cap, never robots-gated."""
        fetch = self.fetch_config()
        return dataclasses.replace(fetch, max_bytes=max(fetch.max_bytes, API_MAX_BYTES), respect_robots=False)

    def site_settings(self) -> ExploreSettings:
        return ExploreSettings(title=self.title, originals=self.originals, iiif_viewer=self.iiif_viewer)

    def model_spec(self) -> ModelSpec:
        return ModelSpec(layer=self.layer, weights=self.weights, precision=self.precision, backend=self.backend)

    @property
    def decode_memory_bytes(self) -> int:
        return self.decode_memory_mb * MB

    def decode_config(self) -> DecodeConfig:
        return DecodeConfig(resize=self.resize, max_pixels=self.max_image_pixels)


@dataclasses.dataclass(frozen=True)
class IndexCommandOptions(IndexFlags):
    """`imgsim index`: build and publish an index from existing embeddings, without inference."""

    GROUP = "index"

    embeddings: Optional[str] = flag(None, "a glob of embeddings Parquet files, local or gs://", required=True)
    output: Optional[str] = flag(None, "the output root to publish under, local or gs://", required=True)
    run_id: Optional[str] = flag(None, "the run's name under OUTPUT/runs/", default_text="a UTC timestamp")

    def __post_init__(self):
        super().__post_init__()
        if self.run_id is not None:
            _checked(check_run_id, self.run_id)
        _checked(self.index_settings)


@dataclasses.dataclass(frozen=True)
class QueryOptions(Flags):
    """`imgsim query`: the items most like an id, several ids or an image, or the outliers."""

    index: Optional[str] = flag(None, "an output root (follows LATEST) or an index directory, local or gs://",
                                required=True)
    run_id: Optional[str] = flag(None, "query this run instead of the one LATEST points at")
    id: tuple[str, ...] = flag((), "find items like this id; repeat it for items like all of them", metavar="ID")
    not_id: tuple[str, ...] = flag((), "with --id: and unlike this id (repeatable)", metavar="ID")
    image: Optional[str] = flag(None, "find items like this image file (local or gs://)", metavar="PATH")
    outliers: bool = flag(False, "list the most isolated items instead (most first)")
    k: int = flag(10, "how many results", minimum=1, short="-k")
    order: str = flag("most", "most: the most similar first; least: the least similar first", choices=ORDERS)
    filter: tuple[str, ...] = flag((), "keep results whose COLUMN is VALUE (repeatable: a column's values OR-ed, "
                                   "columns AND-ed)", metavar="COLUMN:VALUE")
    range: tuple[str, ...] = flag((), "keep results whose number or ISO date COLUMN lies in LOW..HIGH (either end "
                                  "may be empty)", metavar="COLUMN:LOW..HIGH")
    include_self: bool = flag(False, "with one --id: the item itself first, as rank 0 (it is left out otherwise)")
    weights: Optional[str] = flag(None, "for --image: the weights file, when the manifest's is not reachable here",
                                  default_text="the file the index was built with")
    backend: Optional[str] = flag(None, "for --image: the inference backend (refused unless the index's)",
                                  choices=BACKENDS, default_text="the index's")
    cache_dir: Optional[str] = flag(None, "where the index is copied to", default_text="~/.cache/imgsim/index")

    def __post_init__(self):
        super().__post_init__()
        if sum((bool(self.id), self.image is not None, self.outliers)) != 1:
            raise ConfigError("give exactly one of --id, --image and --outliers")
        if self.not_id and not self.id:
            raise ConfigError("--not-id needs --id: items like those and unlike these")
        if self.include_self and len(self.id) != 1:
            raise ConfigError("--include-self needs exactly one --id")
        if self.order == "least" and (len(self.id) > 1 or self.not_id or self.outliers):
            raise ConfigError("--order least takes one --id or --image")
        _checked(self.where)

    def where(self) -> Filter:
        return Filter.parse(self.filter, self.range)


@dataclasses.dataclass(frozen=True)
class EvaluateOptions(Flags):
    """`imgsim evaluate`: how good the neighbours of a published index are."""

    index: Optional[str] = flag(None, "an output root (follows LATEST) or an index directory, local or gs://",
                                required=True)
    run_id: Optional[str] = flag(None, "evaluate this run instead of the one LATEST points at")
    labels: Optional[str] = flag(None, "a CSV file with columns id and label (ids of the indexed run), local or "
                                 "gs://: labelled retrieval metrics", metavar="CSV")
    near_duplicates: Optional[str] = flag(None, "a glob of image files, local or gs://: the near-duplicate "
                                          "benchmark on perturbed copies of them", metavar="GLOB")
    compare: Optional[str] = flag(None, "another output root or index to evaluate the same way, side by side",
                                  metavar="OTHER_OUT")
    report: Optional[str] = flag(None, "write a self-contained HTML report with plots here", metavar="HTML")
    weights: Optional[str] = flag(None, "for --near-duplicates: the weights file, when the manifest's is not "
                                  "reachable here", default_text="the file the index was built with")
    seed: int = flag(0, "seed of the perturbed copies", minimum=0)
    cache_dir: Optional[str] = flag(None, "where the index is copied to", default_text="~/.cache/imgsim/index")

    def __post_init__(self):
        super().__post_init__()
        if self.labels is None and self.near_duplicates is None:
            raise ConfigError("give --labels, --near-duplicates or both: there is nothing to evaluate")


@dataclasses.dataclass(frozen=True)
class ExploreOptions(Flags):
    """`imgsim explore`: a static site for browsing a published index."""

    index: Optional[str] = flag(None, "an output root (follows LATEST) or an index directory, local or gs://",
                                required=True)
    run_id: Optional[str] = flag(None, "show this run instead of the one LATEST points at")
    output: Optional[str] = flag(None, "the site's directory, local or gs://", required=True, metavar="SITE")
    title: Optional[str] = flag(None, "the site's title", default_text="the collection's name: the museum, the "
                                "manifest's or the folder's")
    originals: bool = flag(False, "let the site load items' original images from their own hosts (by default "
                           "it asks nothing of any host but its own unless a visitor asks for an original)")
    iiif_viewer: Optional[str] = flag(None, "a IIIF viewer's address for an item's manifest, with {manifest} where "
                                      "its URL goes (e.g. https://projectmirador.org/embed/?iiif-content={manifest})",
                                      default_text="none: the manifest is linked")
    facets: Optional[str] = flag(None, "comma-separated metadata fields offered as filters and map colours",
                                 default_text="text fields with 2 to 64 distinct values")
    clusters: int = flag(12, "colours of the map's clusters (k-means)", minimum=1, maximum=255)
    cache_dir: Optional[str] = flag(None, "where the index is copied to", default_text="~/.cache/imgsim/index")

    def __post_init__(self):
        super().__post_init__()
        _checked(self.explore_settings)

    def explore_settings(self) -> ExploreSettings:
        facets = tuple(f.strip() for f in self.facets.split(",") if f.strip()) if self.facets else None
        return ExploreSettings(title=self.title, facets=facets, clusters=self.clusters, originals=self.originals,
                               iiif_viewer=self.iiif_viewer)


@dataclasses.dataclass(frozen=True)
class ServeOptions(Flags):
    """`imgsim serve`: the HTTP service over a published index, and its explorer."""

    index: Optional[str] = flag(None, "an output root (follows LATEST) or an index directory, local or gs://",
                                required=True)
    run_id: Optional[str] = flag(None, "serve this run and no other (LATEST is followed otherwise)")
    refresh_seconds: float = flag(30.0, "how often to check LATEST for a new run to swap in", positive=True)
    host: str = flag("127.0.0.1", "the address to listen on (0.0.0.0: every interface)")
    port: int = flag(8000, "the port to listen on (0: any free port)", minimum=0, maximum=65535)
    workers: int = flag(1, "worker processes behind the port, sharing one copy of the index", minimum=1,
                        maximum=64)
    allowed_hosts: tuple[str, ...] = flag((), "a Host the service answers to, besides the bind address, localhost, "
                                          "127.0.0.1 and ::1 (repeatable; * for any)", metavar="HOST")
    cors_origin: tuple[str, ...] = flag((), "an origin whose pages may call the API (repeatable; none by default)",
                                        metavar="ORIGIN")
    header_timeout: float = flag(10.0, "seconds a connection has to send complete request headers (and the "
                                 "longest pause in a body)", positive=True)
    min_body_rate_kb: float = flag(8.0, "the slowest an upload may arrive, in KB/s, after 3 s", minimum=0)
    weights: Optional[str] = flag(None, "for search by image: the weights file, when the manifest's is not "
                                  "reachable here", default_text="the file the index was built with")
    backend: Optional[str] = flag(None, "for search by image: the inference backend (refused unless the index's)",
                                  choices=BACKENDS, default_text="the index's")
    site: Optional[str] = flag(None, "an explorer site to serve at / (built from the index into the cache when "
                               "not given)", metavar="SITE")
    max_upload_mb: float = flag(10.0, "the largest image a search may upload or fetch, in MB", positive=True)
    max_image_pixels: int = flag(50_000_000, "the most pixels a searched image may have", minimum=1)
    max_concurrent_searches: int = flag(2, "searches by image at once; more are answered 503", minimum=1)
    url_deadline: float = flag(10.0, "seconds to fetch an image URL for a search (outside the model's slots)",
                               positive=True)
    decode_memory_mb: int = flag(DEFAULT_DECODE_MEMORY_MB, "memory the service may spend decoding searched "
                                 "images at once", minimum=64)
    allow_private_addresses: bool = flag(False, "let searches fetch URLs on loopback, private or link-local "
                                         "addresses: unsafe in clouds")
    cache_dir: Optional[str] = flag(None, "where the index is copied to", default_text="~/.cache/imgsim/index")

    def fetch_config(self) -> FetchConfig:
        """Image URLs given to a search: the pipeline's address guard and limits, one image's worth."""
        return FetchConfig(deadline=self.url_deadline, max_bytes=int(self.max_upload_mb * 1024 * 1024),
                           read_timeout=min(30.0, self.url_deadline), connect_timeout=min(10.0, self.url_deadline),
                           max_retries=1, allow_private_addresses=self.allow_private_addresses)


@dataclasses.dataclass(frozen=True)
class ExportOptions(Flags):
    """`imgsim export`: an index's items in a managed vector search service's import format."""

    index: Optional[str] = flag(None, "an output root (follows LATEST) or an index directory, local or gs://",
                                required=True)
    format: str = flag("vertex", "vertex: Vertex AI Vector Search's JSON input files", choices=EXPORT_FORMATS)
    output: Optional[str] = flag(None, "the directory to write the files to, local or gs://", required=True)
    restricts: Optional[str] = flag(None, "metadata columns to export as restrict namespaces (token filters), "
                                    "comma-separated, e.g. type,department", metavar="COLUMNS",
                                    default_text="none")
    rows_per_file: int = flag(100_000, "datapoints per file", minimum=1)
    run_id: Optional[str] = flag(None, "export this run instead of the one LATEST points at")
    cache_dir: Optional[str] = flag(None, "where the index is copied to", default_text="~/.cache/imgsim/index")

    @property
    def restrict_columns(self) -> list[str]:
        return parse_columns(self.restricts)


@dataclasses.dataclass(frozen=True)
class PlanOptions(CatalogueFlags):
    """`imgsim plan`: count an input and estimate the run's time and cost before launching it."""

    precision: Optional[str] = flag(None, "estimate this one only: fp32, bf16, int8 or gpu",
                                    choices=("fp32", "bf16", "int8", "gpu"), default_text="all four")
    workers: int = flag(10, "Dataflow workers (the profiles' --max-workers)", minimum=1)
    machine_type: Optional[str] = flag(None, "the CPU workers' machine type (a name in the price table)",
                                       default_text="each precision's own: n1-standard-4, c3d-standard-8, "
                                       "n2-standard-8; the GPU profile's n1-standard-8")
    disk_gb: int = flag(250, "each worker's disk (Dataflow's batch default)", minimum=1)
    prices: Optional[str] = flag(None, "a price table (JSON) in place of imgsim/planning/prices.json",
                                 default_text="Dataflow's us-central1 list prices, as of the file's date")
    allow_private_addresses: bool = flag(False, "let --input cma's API be on a private or loopback address")
    json: bool = flag(False, "print JSON instead of a table")


@dataclasses.dataclass(frozen=True)
class RunsOptions(Flags):
    """`imgsim runs`: every run under an output root, with its state."""

    output: Optional[str] = flag(None, "the output root, local or gs://", required=True)
    json: bool = flag(False, "print one JSON object per run instead of a table")


@dataclasses.dataclass(frozen=True)
class RollbackOptions(Flags):
    """`imgsim rollback`: point LATEST at an earlier published run."""

    output: Optional[str] = flag(None, "the output root, local or gs://", required=True)
    run_id: Optional[str] = flag(None, "the published run LATEST should point at", required=True)

    def __post_init__(self):
        super().__post_init__()
        _checked(check_run_id, self.run_id)


@dataclasses.dataclass(frozen=True)
class VerifyOptions(Flags):
    """`imgsim verify`: check a published index as a consumer would."""

    index: Optional[str] = flag(None, "an output root (follows LATEST) or an index directory, local or gs://",
                                required=True)
    run_id: Optional[str] = flag(None, "verify this run instead of the one LATEST points at")


def _checked(build, *args):
    try:
        return build(*args)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
