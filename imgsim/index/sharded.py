"""Assembling a sharded index: partitions, shards, the recall gate, neighbours, groups, manifest.

    sample -> train_partitions (one worker: k-means, split oversized partitions, recall queries)
    rows -> nearest centroid -> shard_build.stage_shard per shard (its worker), answering the recall queries
    finish_shards: offsets, recall over the whole index as served, search parameters and
        shards_to_search (imgsim.index.tuning), or RecallTooLow
    shard_neighbors units -> offers packed per query shard -> merge -> neighbors/part-*.parquet
        (each part also checked against the recall queries' exact answers: neighbors.recall)
    pairs among the neighbour lists -> connected groups -> groups.parquet
    each item's outlier score from its list -> the most isolated -> outliers.parquet
    sharded_fields -> manifest (format 2)

The pipeline (transforms/sharded_index.py) runs each step on workers, and no
step holds every vector; `build_sharded_artifact` runs the same functions one
after another in this process, for `imgsim.build_index` on in-memory vectors.
"""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from imgsim.embed.signature import ModelSignature
from imgsim.index import artifact, filters, outliers, strength
from imgsim.index.exact import connected_groups
from imgsim.index.fanout import Candidates, route
from imgsim.index.kmeans import assign, split_oversized, train_centroids
from imgsim.index.artifact import IDS, VECTORS, load_vectors
from imgsim.index.shard_build import StagedShard, stage_shard
from imgsim.index.shard_neighbors import (BATCH_ROWS, IdsOf, Offer, Pairs, RowIds, ShardData, exact_unit,
                                          groups_report, groups_table, merged_batches, pack_offers,
                                          pairs_from_candidates, part_name, part_table, searcher_unit)
from imgsim.index.sharding import ROUTING_SLACK, ShardPlan
from imgsim.index.tuning import (RecallQueries, TableTruth, choose, params_for, recall_points,
                                 table_report)
from imgsim.runs.outputs import vectors as table_vectors

CENTROIDS = artifact.CENTROIDS
PARTITIONING = "spherical k-means on a uniform sample; partitions too large for --index-memory-mb split in two"


@dataclasses.dataclass(frozen=True)
class Partitions:
    """The trained centroids (row = partition number) and the recall queries drawn with them."""

    centroids: np.ndarray  # float32 (partitions, dim)
    queries: RecallQueries
    sample_size: int


def train_partitions(ids: Sequence[str], sample: np.ndarray, plan: ShardPlan, recall_queries: int,
                     seed: int = 0) -> Partitions:
    """Centroids from a sample of (id, vector), whatever order it arrived in (at most
    plan.sample_size of it is used, chosen by seed among the ids in id order); recall_queries of
    them, chosen by seed too, become the recall queries (with as many held-out ones)."""
    by_id = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    order = by_id[np.sort(np.random.default_rng(seed).permutation(len(by_id))[:plan.sample_size])]
    ids = [ids[i] for i in order]
    sample = np.asarray(sample, np.float32)[order]
    shuffled = np.random.default_rng(seed + 1).permutation(len(ids))  # recall queries: a random subset
    centroids = train_centroids(sample, plan.shards, seed=seed)
    centroids = split_oversized(sample, centroids, plan.max_share, seed=seed)
    pick = shuffled[:min(recall_queries, len(ids))]
    return Partitions(centroids, RecallQueries.drawn([ids[i] for i in pick], sample[pick], seed), len(ids))


@dataclasses.dataclass(frozen=True)
class ShardedOutcome:
    """The shards as built and what the recall gate decided."""

    entries: list  # artifact.ShardEntry, in shard order
    centroids: np.ndarray  # float32 (len(entries), dim): the entries' centroids, same order
    count: int
    shards_to_search: int
    curve: list  # recall@k when searching 1, 2, ... shards (at the chosen search parameters)
    recall: dict  # the manifest's recall report
    truth: TableTruth  # what the neighbours table is checked against
    filters: dict  # the columns every shard can filter (imgsim.index.filters)
    refused: Optional[str] = None  # why the index is not published (recall below --min-recall)

    def shard_data(self, number: int, vectors: np.ndarray) -> ShardData:
        entry = self.entry(number)
        return ShardData(number, entry.offset, entry.count, vectors)

    def entry(self, number: int) -> artifact.ShardEntry:
        return next(e for e in self.entries if e.shard == number)

    def slot(self, number: int) -> int:
        return next(i for i, e in enumerate(self.entries) if e.shard == number)


def recall_k(settings, count: int) -> int:
    return max(1, min(settings.recall_k, count - 1))


def neighbors_k(settings, count: int) -> int:
    return max(1, min(settings.neighbors_k, count - 1))


def finish_shards(staged: Sequence[StagedShard], partitions: Partitions, settings) -> ShardedOutcome:
    """Offsets, recall over all vectors as a consumer is served, the search parameters and
    shards_to_search (imgsim.index.tuning), and the gate (--min-recall)."""
    staged = sorted(staged, key=lambda s: s.number)
    count = sum(s.count for s in staged)
    centroids = partitions.centroids[[s.number for s in staged]]
    k = recall_k(settings, count)
    partials = [s.recall for s in staged]
    queries = partitions.queries
    order = route(queries.vectors, centroids, len(staged))
    choice = choose(lambda step: recall_points(partials, order, queries, k, step), list(partials[0].steps),
                    len(staged), settings.min_recall, k, settings.sharding.shards_to_search, ROUTING_SLACK)
    step, searched = choice.point.step, choice.point.shards
    curve = [round(p.all.tie, 5) for p in recall_points(partials, order, queries, k, step)]
    entries, offset = [], 0
    for row, shard in enumerate(staged):
        search = params_for(shard.config, step).to_dict()
        entries.append(artifact.ShardEntry(shard.number, shard.count, offset, row, shard.config, shard.files,
                                           search or None))
        offset += shard.count
    recall = {**choice.report(k, len(queries), settings.min_recall), "shards_searched": searched}
    truth = TableTruth.of(partials, {e.shard: e.offset for e in entries}, queries, k)
    return ShardedOutcome(entries, centroids, offset, searched, curve, recall, truth,
                          filters.combine([s.filters for s in staged]), choice.refused)


def uses_exact_neighbors(settings, count: int) -> bool:
    return count <= settings.exact_neighbors_max


def groups_result(pairs: Pairs, threshold: float, ids_of: IdsOf) -> tuple[pa.Table, dict]:
    """groups.parquet and the manifest's groups report, from the pairs alone (and the ids of
    the rows in groups)."""
    groups = connected_groups(pairs.rows)
    return groups_table(groups, ids_of), groups_report(groups, threshold)


def sharded_fields(outcome: ShardedOutcome, signature: ModelSignature, settings, plan: ShardPlan,
                   partitions: Partitions, *, run_id: str, input_description: dict, counts: dict,
                   groups: dict, table_hits: Sequence, outliers_kept: int, score_counts: Sequence,
                   model: Optional[dict] = None, build: Optional[dict] = None) -> dict:
    """The manifest's fields (format 2) besides shards and files; table_hits: the parts'
    (TableTruth.hits); build: how it was built (grown from a run, or why it was built whole)."""
    from imgsim.index.scann_import import scann_version

    return {
        "run_id": run_id,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_signature": signature.to_dict(),
        "dimension": signature.dim,
        "count": outcome.count,
        "scann": {"version": scann_version(), "distance": "dot_product",
                  "modes": sorted({e.scann["mode"] for e in outcome.entries})},
        "sharding": {"shards": len(outcome.entries), "requested_shards": settings.sharding.shards,
                     "memory_mb": settings.sharding.memory_mb, "max_shard_items": plan.max_shard_items,
                     "partitioning": PARTITIONING, "sample": partitions.sample_size, "seed": 0,
                     "shards_to_search": outcome.shards_to_search,
                     "shards_to_search_from": ("--index-shards-to-search" if settings.sharding.shards_to_search
                                               else "the recall curve"),
                     "recall_by_shards_searched": outcome.curve},
        "recall": outcome.recall,
        "neighbors": {"k": neighbors_k(settings, outcome.count),
                      "exact": uses_exact_neighbors(settings, outcome.count), "batch_rows": BATCH_ROWS,
                      "recall": table_report(table_hits, outcome.recall["k"],
                                             uses_exact_neighbors(settings, outcome.count)),
                      "score_quantiles": strength.quantiles(np.sum(list(score_counts), axis=0)
                                                            if len(score_counts) else [])},
        "groups": groups,
        "filters": outcome.filters,
        "outliers": outliers.report(outcome.count, outliers_kept),
        "input": input_description,
        "counts": counts,
        "build": {"settings": settings.growth_key(), **(build or {})},
        **({"model": model} if model else {}),
    }


def write_centroids(path: str, centroids: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(centroids, np.float32), allow_pickle=False)


def build_sharded_artifact(table: pa.Table, signature: ModelSignature, staging: str, settings, plan: ShardPlan, *,
                           run_id: str, input_description: dict, counts: dict, model: Optional[dict] = None,
                           seed: int = 0):
    """Stage a complete sharded artifact in `staging`, in this process, shard by shard; returns
    (manifest, None), or (None, outcome) when the recall gate refuses it."""
    data = table_vectors(table)
    ids = table.column("id").to_pylist()
    pick = np.sort(np.random.default_rng(seed).choice(len(data), size=plan.sample_size, replace=False))
    partitions = train_partitions([ids[i] for i in pick], data[pick], plan, settings.recall_queries, seed)
    labels = assign(data, partitions.centroids)
    del data
    staged = [stage_shard(table.take(np.flatnonzero(labels == number)), number, settings.options,
                          partitions.queries, recall_k(settings, len(ids)), staging)
              for number in np.unique(labels).tolist()]
    outcome = finish_shards(staged, partitions, settings)
    if outcome.refused:
        return None, outcome
    shards = [read_shard(staging, outcome, e, plan.dim) for e in outcome.entries]
    ids_of = RowIds(outcome.entries, lambda entry: read_ids(staging, entry))
    packs: dict[int, list] = {}
    for target in shards:
        searcher = None if uses_exact_neighbors(settings, outcome.count) else artifact.load_searcher(
            staging, outcome.entry(target.number).scann_dir)
        for q, offers in offers_by_query_shard(target_answers(outcome, settings, target, shards, searcher)):
            packs.setdefault(q, []).append(pack_offers(offers))
    k = neighbors_k(settings, outcome.count)
    pairs, hits, isolated, histograms = [], [], [], []
    for query in shards:
        for b, batch, merged in merged_batches(query.count, k, packs.pop(query.number)):
            first_row = query.offset + batch.start
            pairs.append(pairs_from_candidates(first_row, merged, settings.duplicate_threshold))
            hits.append(outcome.truth.hits(first_row, merged.rows, merged.scores))
            isolated.append(part_outliers(first_row, merged))
            histograms.append(strength.histogram(merged.scores))
            write_part(staging, query.number, b, ids_of(query.offset + np.arange(batch.start, batch.stop)), merged,
                       ids_of)
    table_, report = groups_result(Pairs.concat(pairs), settings.duplicate_threshold, ids_of)
    artifact.write_table(table_, os.path.join(staging, artifact.GROUPS))
    rows, values = outliers.merge_most_isolated(isolated)
    artifact.write_table(outliers.table(rows, values, ids_of), os.path.join(staging, outliers.OUTLIERS))
    write_centroids(os.path.join(staging, CENTROIDS), outcome.centroids)
    fields = sharded_fields(outcome, signature, settings, plan, partitions, run_id=run_id,
                            input_description=input_description, counts=counts, groups=report, table_hits=hits,
                            outliers_kept=len(rows), score_counts=histograms, model=model)
    return artifact.write_manifest(staging, fields, shards=outcome.entries), None


def target_answers(outcome: ShardedOutcome, settings, target: ShardData, queries: Iterable[ShardData],
                   searcher=None) -> Iterator[tuple[int, int, Offer]]:
    """(query shard, batch, offer): what target offers each batch of every query shard, exactly
    or, given target's searcher, for the rows routed to target (searched as consumers search it)."""
    k = neighbors_k(settings, outcome.count)
    params = outcome.entry(target.number).params
    for query in queries:
        if searcher is None:
            for b, found in exact_unit(query, target, k):
                yield query.number, b, found
        else:
            for b, found in searcher_unit(searcher, target, outcome.centroids, outcome.slot(target.number), query,
                                          outcome.shards_to_search, k, params):
                yield query.number, b, found


def offers_by_query_shard(answers: Iterable[tuple[int, int, Offer]]) -> Iterator[tuple[int, list[tuple[int, Offer]]]]:
    """target_answers grouped by query shard (they come shard after shard): (query shard, its
    (batch, offer) list), one query shard at a time."""
    for q, group in itertools.groupby(answers, key=lambda answer: answer[0]):
        yield q, [(b, offer) for _, b, offer in group]


def part_outliers(first_row: int, merged: Candidates) -> tuple[np.ndarray, np.ndarray]:
    """A neighbours part's most isolated rows (global) and their outlier scores."""
    return outliers.most_isolated(first_row + np.arange(len(merged)), outliers.scores(merged.scores))


def read_shard(root: str, outcome: ShardedOutcome, entry: artifact.ShardEntry, dim: int,
               with_vectors: bool = True) -> ShardData:
    """A built shard's vectors, read back from root (a local directory)."""
    vectors = (load_vectors(os.path.join(root, *entry.path(VECTORS).split("/")), entry.count, dim)
               if with_vectors else np.zeros((0, dim), np.float32))
    return outcome.shard_data(entry.shard, vectors)


def read_ids(root: str, entry) -> pa.Array:
    """A built shard's ids (its ids.parquet under root), in row order."""
    import pyarrow.parquet as pq

    return pq.read_table(os.path.join(root, *entry.path(IDS).split("/")), columns=["id"]).column("id").combine_chunks()


def write_part(root: str, shard: int, batch: int, query_ids, found: Candidates, ids_of: IdsOf) -> str:
    rel = part_name(shard, batch)
    path = os.path.join(root, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    artifact.write_table(part_table(query_ids, found, ids_of), path)
    return rel
