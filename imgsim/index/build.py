"""Building an index artifact from embeddings, and publishing it (`build_and_publish`).

Used by the pipeline's final step when one worker builds the index (on a
Dataflow worker), and by the Python API's `imgsim.build_index` on in-memory
vectors (no Beam). Recall is measured as consumers are served, against exact
brute force, and the search parameters raised if needed (imgsim.index.tuning);
below `min_recall` at the most the ladder allows, the index is refused. A collection the sharding options split
(imgsim.index.sharding) is built as a sharded artifact (imgsim.index.sharded),
here one shard after another; the pipeline builds those on its workers.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import tempfile
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from imgsim.embed.openvino_backend import IR_FILES as QUANTIZED_FILES
from imgsim.embed.signature import ModelSignature
from imgsim.index import artifact, filters, outliers, strength
from imgsim.index.scann_import import scann_version
from imgsim.index.exact import Neighbors, connected_groups, exact_neighbors_and_pairs, pairs_from_neighbors
from imgsim.index.publish import publish
from imgsim.index.searcher import IndexOptions
from imgsim.index.shard_build import ShardingRefused, check_shardable, tuning_steps
from imgsim.index.shard_neighbors import BATCH_ROWS, groups_report, groups_table
from imgsim.index.sharded import build_sharded_artifact
from imgsim.index.sharding import ShardingOptions
from imgsim.index.tuning import (RecallQueries, SearchParams, TableTruth, choose, params_for, recall_partial,
                                 recall_points, table_report)
from imgsim.index.sources import IndexInputError
from imgsim.runs.layout import RunLayout
from imgsim.runs.outputs import signature_of, vectors
from imgsim.storage import ObjectStore, join


def model_files(model_dir: Optional[str]) -> dict[str, str]:
    """An int8 run's model files as the artifact holds them (artifact.MODEL_DIR): artifact path -> where
    the run wrote it. imgsim.embed.reproduce loads them from there to embed queries."""
    return {f"{artifact.MODEL_DIR}/{name}": join(model_dir, name) for name in QUANTIZED_FILES} if model_dir else {}


class RecallTooLow(Exception):
    def __init__(self, report: dict, message: Optional[str] = None):
        super().__init__(message or f"recall@{report['recall']['k']} {report['recall']['value']:.4f} is below "
                         f"--min-recall {report['recall']['min']}: the index was not published")
        self.report = report


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    options: IndexOptions = IndexOptions()
    neighbors_k: int = 20
    recall_k: int = 10
    recall_queries: int = 1000
    min_recall: float = 0.95
    duplicate_threshold: float = 0.95
    exact_neighbors_max: int = 200_000
    keep_runs: Optional[int] = None
    sharding: ShardingOptions = ShardingOptions()
    full_rebuild: bool = False  # never grow the published index (imgsim.index.growth)

    def __post_init__(self):
        if not 0.0 <= self.min_recall <= 1.0:
            raise ValueError("--min-recall must be between 0 and 1")
        if not -1.0 <= self.duplicate_threshold <= 1.0:
            raise ValueError("--duplicate-threshold is a cosine similarity, between -1 and 1")
        if self.neighbors_k < 1 or self.recall_k < 1 or self.recall_queries < 1:
            raise ValueError("--neighbors-k, the recall k and --recall-queries must be at least 1")
        if self.keep_runs is not None and self.keep_runs < 1:
            raise ValueError("--keep-runs must be at least 1")
        if self.sharding.shards is not None and self.sharding.shards > 1:
            check_shardable(self.options)

    def growth_key(self) -> dict:
        """What an index is built with, as its manifest records it (build.settings): a published
        index grows only into a build with the same (imgsim.index.growth)."""
        return {"options": dataclasses.asdict(self.options), "neighbors_k": self.neighbors_k,
                "recall_k": self.recall_k, "recall_queries": self.recall_queries, "min_recall": self.min_recall,
                "duplicate_threshold": self.duplicate_threshold, "exact_neighbors_max": self.exact_neighbors_max,
                "sharding": dataclasses.asdict(self.sharding)}


def build_and_publish(store: ObjectStore, tables: Sequence[pa.Table], settings: IndexSettings, layout: RunLayout,
                      expected_generation: int, input_description: dict, counts: dict,
                      model: Optional[dict] = None, model_dir: Optional[str] = None) -> dict:
    """Stage, validate and publish an index; returns the report the summary and CLI print.

    model: how the vectors were made (backend, precision, int8 agreement), for the manifest;
    model_dir: an int8 run's quantised model, copied into the artifact (model/) so that consumers
    embed query images with exactly that model.
    Raises RecallTooLow and IndexInputError (the run's data is still good) and ArtifactError."""
    table, signature, repeated = combine_embeddings(tables)
    plan = settings.sharding.plan(table.num_rows, signature.dim)
    staging = tempfile.mkdtemp(prefix="imgsim-index-")
    try:
        for rel, source in model_files(model_dir).items():
            store.download_to_file(source, os.path.join(staging, *rel.split("/")))
        details = dict(run_id=layout.run_id, input_description=input_description,
                       counts={**counts, "indexed": table.num_rows, "repeated_ids": repeated}, model=model)
        if plan.sharded:
            try:
                check_shardable(settings.options)
            except ShardingRefused as e:
                raise IndexInputError(str(e)) from None
            manifest, outcome = build_sharded_artifact(table, signature, staging, settings, plan, **details)
            if manifest is None:
                raise RecallTooLow({"count": outcome.count, "recall": outcome.recall,
                                    "sharding": {"shards": len(outcome.entries),
                                                 "recall_by_shards_searched": outcome.curve}},
                                   outcome.refused)
        else:
            manifest = build_artifact(table, signature, staging, settings, **details)
        result = publish(store, staging, layout, expected_generation, keep_runs=settings.keep_runs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return index_report(manifest, result)


def index_report(manifest: artifact.Manifest, result) -> dict:
    """What the summary and the CLI print about a published index."""
    report = {"published": True, "index": result.index_dir, "count": manifest.count,
              "recall": manifest.section("recall"), "scann": manifest.section("scann"),
              "groups": manifest.section("groups"), "latest_updated": result.latest_updated,
              "latest": result.latest_detail}
    if manifest.sharded:
        sharding = manifest.section("sharding")
        report["sharding"] = {key: sharding[key] for key in ("shards", "shards_to_search", "recall_by_shards_searched")}
    return report


def combine_embeddings(tables: Sequence[pa.Table]) -> tuple[pa.Table, ModelSignature, int]:
    """One table from embedding files of one model signature, in id order; repeated ids keep their first row.

    Why id order: the workers write rows in whatever order downloads finish and bundles run, and
    the order of the rows decides the index's row numbers and which of two equally similar
    neighbours (two copies of one image) comes first. In id order, the same embeddings give
    the same artifact and the same neighbour lists on every run."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        raise IndexInputError("there are no embeddings to index")
    try:
        signatures = [signature_of(t.schema) for t in tables]
    except ValueError as e:
        raise IndexInputError(str(e)) from None
    signature = signatures[0]
    for other in signatures[1:]:
        if not other.matches(signature):
            raise IndexInputError("embeddings of different models cannot share an index: "
                                  + "; ".join(signature.differences(other)))
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")
    ids = table.column("id").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)  # by id: the first row of each
    repeated = table.num_rows - len(first)
    if repeated or np.any(first[1:] < first[:-1]):
        table = table.take(first)
    return table, signature, repeated


def build_artifact(table: pa.Table, signature: ModelSignature, staging: str, settings: IndexSettings, *,
                   run_id: str, input_description: dict, counts: dict, seed: int = 0,
                   model: Optional[dict] = None) -> dict:
    """Stage the complete artifact in `staging`; returns the manifest. Raises RecallTooLow."""
    data = vectors(table)
    n = len(data)
    config = settings.options.resolve(n, k=settings.recall_k)
    searcher = config.build(data)
    scann_dir = os.path.join(staging, artifact.SCANN_DIR)
    os.makedirs(scann_dir, exist_ok=True)
    searcher.serialize(scann_dir, relative_path=True)

    k = max(1, min(settings.recall_k, n - 1))
    ids = table.column("id").to_numpy(zero_copy_only=False)  # in id order (combine_embeddings)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, settings.recall_queries), replace=False))
    queries = RecallQueries.drawn(ids[rows].tolist(), data[rows], seed)
    partial = recall_partial(0, searcher, data, ids, queries, k, config.to_dict(), tuning_steps(settings.options))
    order = np.zeros((len(queries), 1), np.int64)
    choice = choose(lambda step: recall_points([partial], order, queries, k, step), list(partial.steps), 1,
                    settings.min_recall, k)
    recall_report = choice.report(k, len(queries), settings.min_recall)
    search = params_for(config.to_dict(), choice.point.step)
    scann = {**config.to_dict(), **({"search": search.to_dict()} if search.to_dict() else {})}
    if choice.refused:
        raise RecallTooLow({"count": n, "recall": recall_report, "scann": scann}, choice.refused)

    neighbors_k = max(1, min(settings.neighbors_k, n - 1))
    exact = n <= settings.exact_neighbors_max
    if exact:
        neighbors, _ = exact_neighbors_and_pairs(data, neighbors_k)
    else:
        neighbors = approximate_neighbors(searcher, data, neighbors_k, search)
    groups = connected_groups(pairs_from_neighbors(neighbors, settings.duplicate_threshold))
    truth = TableTruth.of([partial], {0: 0}, queries, k)
    table_recall = table_report([truth.hits(0, neighbors.rows, np.nan_to_num(neighbors.scores, nan=-np.inf))], k,
                                exact)

    ids = table.column("id")
    ids_of = np.asarray(ids.to_pylist(), object).__getitem__
    artifact.write_table(table.add_column(0, "row", pa.array(np.arange(n, dtype=np.int64))),
                         os.path.join(staging, artifact.IDS))
    # row groups of BATCH_ROWS: a consumer reads an item's list from one (imgsim.index.readers.RowGroups)
    artifact.write_table(neighbors_table(ids, neighbors), os.path.join(staging, artifact.NEIGHBORS),
                         row_group_rows=BATCH_ROWS)
    artifact.write_table(groups_table(groups, ids_of), os.path.join(staging, artifact.GROUPS))
    filterable = filters.write(table, staging)
    isolated = outliers.most_isolated(np.arange(n), outliers.scores(neighbors.scores))
    artifact.write_table(outliers.table(*isolated, ids_of), os.path.join(staging, outliers.OUTLIERS))

    fields = {
        "run_id": run_id,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_signature": signature.to_dict(),
        "dimension": signature.dim,
        "count": n,
        "scann": {**scann, "version": scann_version(), "distance": "dot_product"},
        "recall": recall_report,
        "neighbors": {"k": neighbors.rows.shape[1], "exact": exact, "recall": table_recall,
                      "score_quantiles": strength.quantiles(strength.histogram(neighbors.scores))},
        "groups": groups_report(groups, settings.duplicate_threshold),
        "filters": filterable,
        "outliers": outliers.report(n, len(isolated[0])),
        "input": input_description,
        "counts": counts,
    }
    if model:
        fields["model"] = model
    return artifact.write_manifest(staging, fields)


def approximate_neighbors(searcher, data: np.ndarray, k: int, params: SearchParams = SearchParams(),
                          batch: int = 4096) -> Neighbors:
    """Each row's k nearest other rows as the consumer finds them (its search parameters)."""
    rows, scores = [], []
    for start in range(0, len(data), batch):
        found, sims = searcher.search_batched(data[start:start + batch], final_num_neighbors=k + 1,
                                              **params.kwargs())
        for offset, (f, s) in enumerate(zip(np.asarray(found), np.asarray(sims))):
            keep = f != start + offset
            rows.append(_pad(f[keep][:k], k, -1))
            scores.append(_pad(s[keep][:k], k, np.nan))
    return Neighbors(np.array(rows, np.int64), np.array(scores, np.float32))


def neighbors_table(ids: pa.ChunkedArray, neighbors: Neighbors) -> pa.Table:
    id_list = ids.to_pylist()
    rows = neighbors.rows
    valid = rows >= 0
    neighbor_ids = [[id_list[j] for j in r[v]] for r, v in zip(rows, valid)]
    scores = [s[v].astype(np.float32) for s, v in zip(neighbors.scores, valid)]
    return pa.table({"id": ids, "neighbor_ids": pa.array(neighbor_ids, pa.list_(pa.string())),
                     "scores": pa.array(scores, pa.list_(pa.float32()))})


def _pad(values: np.ndarray, k: int, fill) -> np.ndarray:
    if len(values) >= k:
        return values[:k]
    return np.concatenate([values, np.full(k - len(values), fill, dtype=np.asarray(values).dtype if len(values) else float)])
