"""Recall as a consumer is served, and raising search parameters until it meets the target.

What is measured is what `ImageIndex` answers with its defaults: in-index
queries as `similar` issues them (k + 1 asked, the item itself dropped) and
held-out queries (a perturbed copy of an item, which is not in the index),
each against the exact top k over every vector, reported strictly (the share
of the exact top k found) and with ann-benchmarks' tie rule (a result counts
when its true score is within `tolerance` of the k-th exact score).

ScaNN takes leaves searched and re-ordering candidates per query, so tuning
needs no rebuild: each searcher answers the recall queries once per step of
a ladder of raised parameters (`LADDER`, factors over its built configuration,
at most MAX_FACTOR times each: the work bound), and the cheapest step (and,
sharded, the fewest shards searched) whose recall meets --min-recall is
chosen and recorded in the manifest, which consumers then search with.
Parameters the user set (--index-leaves-to-search, --index-reorder,
--index-shards-to-search) are never raised. numpy only.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

TOLERANCE = 1e-3
MAX_FACTOR = 16
# (leaves factor, re-ordering factor), cheapest first: each step costs about twice the one before
LADDER = ((1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (8, 4), (8, 8), (16, 8), (16, 16))
HELD_OUT_COSINE = 0.8  # a held-out query's similarity to the item it was made from


@dataclasses.dataclass(frozen=True)
class SearchParams:
    """Per-query search parameters (None: the searcher's own)."""

    leaves_to_search: Optional[int] = None
    reorder: Optional[int] = None

    def kwargs(self) -> dict:
        """Keyword arguments of ScaNN's search_batched."""
        out = {}
        if self.leaves_to_search is not None:
            out["leaves_to_search"] = self.leaves_to_search
        if self.reorder is not None:
            out["pre_reorder_num_neighbors"] = self.reorder
        return out

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def widened(self, k: int, config: dict, leaves_factor: int = 1) -> "SearchParams":
        """These parameters for a query asking k results of a searcher built as config says: at least
        k candidates re-ordered, so that all k come with exact scores, and leaves_factor times the
        leaves searched (a filtered query over-fetches past what the searcher was built for)."""
        if config.get("mode") in (None, "brute_force"):
            return self
        reorder = max(k, self.reorder or config["reorder"])
        leaves = self.leaves_to_search
        if config["mode"] == "tree_ah" and leaves_factor > 1:
            leaves = min(config["num_leaves"], (leaves or config["leaves_to_search"]) * leaves_factor)
        return SearchParams(leaves, reorder if reorder != config["reorder"] or self.reorder else None)

    @classmethod
    def from_dict(cls, value) -> "SearchParams":
        """From a manifest's `search` entry; ValueError unless it has only positive integers."""
        if value is None:
            return cls()
        if not isinstance(value, dict) or set(value) - {"leaves_to_search", "reorder"}:
            raise ValueError(f"search parameters must be leaves_to_search and reorder, not {value!r}")
        for name, number in value.items():
            if type(number) is not int or number < 1:
                raise ValueError(f"search parameter {name} is {number!r}, not a positive integer")
        return cls(**value)


def ladder(leaves_fixed: bool, reorder_fixed: bool) -> list[tuple[int, int]]:
    """The steps tuning may take: a parameter the user set keeps factor 1."""
    out = []
    for leaves, reorder in LADDER:
        step = (1 if leaves_fixed else leaves, 1 if reorder_fixed else reorder)
        if step not in out:
            out.append(step)
    return out


def params_for(config: dict, step: tuple[int, int]) -> SearchParams:
    """A searcher's parameters at a ladder step (config: its IndexConfig as a dict)."""
    if config["mode"] == "brute_force" or step == (1, 1):
        return SearchParams()
    leaves = None
    if config["mode"] == "tree_ah":
        leaves = min(config["num_leaves"], config["leaves_to_search"] * step[0])
    return SearchParams(leaves_to_search=leaves, reorder=config["reorder"] * step[1])


def held_out(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Queries that are not items: each vector moved in a random direction to cosine HELD_OUT_COSINE."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(size=vectors.shape, dtype=np.float32)
    noise -= np.einsum("ij,ij->i", noise, vectors)[:, None] * vectors  # orthogonal to the item
    noise /= np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
    sine = np.sqrt(1 - HELD_OUT_COSINE ** 2)
    return (HELD_OUT_COSINE * vectors + sine * noise).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Agreement:
    tie: float
    strict: float


def agreement(found_keys: np.ndarray, found_true: np.ndarray, exact_keys: np.ndarray, exact_scores: np.ndarray,
              k: int, tolerance: float = TOLERANCE) -> Agreement:
    """Found answers (keys, -1 where none, and their true scores) against the exact top k (keys, -1
    where the index has fewer than k other items). Each share is of the exact answers there are."""
    found_keys, found_true = found_keys[:, :k], found_true[:, :k]
    exact_keys, exact_scores = exact_keys[:, :k], exact_scores[:, :k]
    wanted = exact_keys >= 0
    total = int(wanted.sum())
    if not total:
        return Agreement(1.0, 1.0)
    valid = found_keys >= 0
    kth = np.where(wanted.all(axis=1), exact_scores[:, -1], -np.inf)[:, None]
    tie = np.minimum((valid & (found_true >= kth - tolerance)).sum(axis=1), wanted.sum(axis=1)).sum()
    strict = sum(len(set(f[v].tolist()) & set(e[w].tolist()))
                 for f, v, e, w in zip(found_keys, valid, exact_keys, wanted))
    return Agreement(float(tie) / total, strict / total)


@dataclasses.dataclass(frozen=True)
class Point:
    """One (step, shards searched) tried: its recall for each kind of query, and its cost."""

    step: tuple[int, int]
    shards: int
    in_index: Agreement
    held_out: Agreement
    ms_per_query: float

    @property
    def all(self) -> Agreement:
        """What the gate checks: the lower of the two kinds' (the neighbours table is in-index
        queries, so it meets the gate too)."""
        return Agreement(min(self.in_index.tie, self.held_out.tie), min(self.in_index.strict, self.held_out.strict))

    def to_dict(self) -> dict:
        return {"leaves_factor": self.step[0], "reorder_factor": self.step[1], "shards_searched": self.shards,
                "recall": round(self.all.tie, 5), "strict": round(self.all.strict, 5),
                "ms_per_query": round(self.ms_per_query, 4)}


@dataclasses.dataclass(frozen=True)
class Choice:
    point: Point
    tried: list  # every Point measured, in the order tried
    refused: Optional[str] = None

    def report(self, k: int, queries: int, min_recall: float) -> dict:
        """The manifest's `recall`."""
        p = self.point
        return {"k": k, "value": round(p.all.tie, 5), "strict": round(p.all.strict, 5), "min": min_recall,
                "tolerance": TOLERANCE, "queries": queries,
                "in_index": {"value": round(p.in_index.tie, 5), "strict": round(p.in_index.strict, 5)},
                "held_out": {"value": round(p.held_out.tie, 5), "strict": round(p.held_out.strict, 5)},
                "leaves_factor": p.step[0], "reorder_factor": p.step[1],
                "tried": [t.to_dict() for t in self.tried],
                "measured": "as ImageIndex answers: in-index queries without the item itself, and held-out "
                            "queries, against exact brute force over every vector; value and strict are the lower "
                            "of the two kinds'"}


def choose(measure, steps: Sequence[tuple[int, int]], shards: int, min_recall: float, k: int,
           requested_shards: Optional[int] = None, routing_slack: float = 0.0) -> Choice:
    """The cheapest (step, shards searched) meeting min_recall.

    measure(step) -> list of Points for 1..shards searched at that step. Within a step, the fewest
    shards within routing_slack of searching all of them (and at least min_recall); steps are
    tried cheapest first until one meets min_recall; else the best point tried, refused."""
    tried: list[Point] = []
    for step in steps:
        curve = measure(step)
        if requested_shards is not None:
            candidates = [curve[min(requested_shards, shards) - 1]]
        else:
            target = max(min_recall, curve[-1].all.tie - routing_slack)
            candidates = [next((p for p in curve if p.all.tie >= target - 1e-12), curve[-1])]
        tried.extend(curve if requested_shards is None else candidates)
        if candidates[0].all.tie >= min_recall - 1e-12:
            return Choice(candidates[0], tried)
    pool = tried if requested_shards is None else [t for t in tried if t.shards == min(requested_shards, shards)]
    best = max(pool, key=lambda t: (t.all.tie, -t.shards, -t.step[0] * t.step[1]))
    return Choice(best, tried, refused=refusal(best, shards, min_recall, k))


def refusal(best: Point, shards: int, min_recall: float, k: int) -> str:
    where = f"searching {best.shards} of {shards} shards, " if shards > 1 else ""
    raised = (f"{best.step[0]}x the leaves and {best.step[1]}x the re-ordering candidates"
              if best.step != (1, 1) else "the configured parameters")
    return (f"recall@{k} {best.all.tie:.4f} at best ({where}{raised}) is below --min-recall {min_recall}: the index "
            f"was not published; --min-recall {floor(best.all.tie)} would publish it, or raise --index-leaves / "
            "--index-reorder, or use --index-mode brute_force")


def floor(value: float) -> str:
    return f"{np.floor(value * 1000) / 1000:.3f}"


# the recall queries, and each searcher's answers to them ---------------------------------------

KEY_BITS = 32  # answers are told apart by (shard << 32 | row) before the shards' offsets exist


@dataclasses.dataclass(frozen=True)
class RecallQueries:
    """The vectors recall is measured with: items of the collection (each is left out of both the
    exact and the searched answer, as `similar` leaves it out), then as many held-out queries (id
    None: vectors that are no item's), made from the items where they are used (seeded), so that
    only the items' vectors travel to the workers."""

    items: tuple  # the items' ids
    item_vectors: np.ndarray  # float32 (q, dim)
    seed: int = 0

    @classmethod
    def drawn(cls, ids: Sequence[str], vectors: np.ndarray, seed: int = 0) -> "RecallQueries":
        return cls(tuple(ids), np.asarray(vectors, np.float32), seed)

    @property
    def ids(self) -> tuple:
        return self.items + (None,) * len(self.items)

    @property
    def vectors(self) -> np.ndarray:
        """float32 (2q, dim): the items', then the held-out queries."""
        return np.concatenate([self.item_vectors, held_out(self.item_vectors, self.seed)])

    def __len__(self) -> int:
        return 2 * len(self.items)

    @property
    def in_index(self) -> np.ndarray:
        return np.arange(len(self)) < len(self.items)


@dataclasses.dataclass(frozen=True)
class RecallPartial:
    """One searcher's answers to the recall queries (a shard's, or a whole collection's): the exact
    top k among its items (keys shard << 32 | row, scores), and, for each ladder step, its
    searcher's top k (keys, -1 where none; exact scores of the same items) with the query's own
    item left out, and the milliseconds per query it took."""

    shard: int
    steps: tuple  # the ladder steps answered, in order
    exact_keys: np.ndarray  # int64 (q, k)
    exact: np.ndarray  # float32 (q, k), -inf where the shard has fewer
    keys: np.ndarray  # int64 (steps, q, k)
    true: np.ndarray  # float32 (steps, q, k)
    ms_per_query: tuple  # per step
    own: np.ndarray  # int64 (q,): the query item's row here, or -1


def recall_partial(number: int, searcher, data: np.ndarray, ids: np.ndarray, queries: RecallQueries, k: int,
                   config: dict, steps: Sequence[tuple[int, int]]) -> RecallPartial:
    """A searcher's exact and searched answers to the recall queries at every step (ids in the
    searcher's row order, sorted or not: a grown shard appends)."""
    import time

    from imgsim.index.exact import exact_candidates
    from imgsim.index.fanout import without_own

    q = len(queries)
    vectors = queries.vectors
    own = np.full(q, -1, np.int64)
    if q and len(ids):
        query_ids = np.asarray(queries.items, dtype=object)
        by_id = np.argsort(ids, kind="stable")
        at = by_id[np.minimum(np.searchsorted(ids[by_id], query_ids), len(ids) - 1)]
        own[:len(query_ids)] = np.where(ids[at] == query_ids, at, -1)
    exact, _ = exact_candidates(vectors, own, data, 0, k)
    exact_keys = np.where(exact.rows >= 0, (number << KEY_BITS) | np.maximum(exact.rows, 0), -1)
    keys = np.full((len(steps), q, k), -1, np.int64)
    true = np.full((len(steps), q, k), -np.inf, np.float32)
    timings = []
    answered: dict = {}
    for s, step in enumerate(steps):
        params = params_for(config, step)
        if params in answered:  # brute force, or a step that changes nothing here
            keys[s], true[s] = keys[answered[params]], true[answered[params]]
            timings.append(timings[answered[params]])
            continue
        answered[params] = s
        started = time.perf_counter()
        found, _ = searcher.search_batched(vectors, final_num_neighbors=min(k + 1, len(data)),
                                           **params.kwargs()) if q else (np.zeros((0, 0)), None)
        timings.append((time.perf_counter() - started) * 1000 / max(1, q))
        found = np.asarray(found, np.int64).reshape(q, -1)
        rows = without_own(found, np.zeros(found.shape, np.float32), own)[0][:, :k]
        width = rows.shape[1]
        keys[s, :, :width] = np.where(rows >= 0, (number << KEY_BITS) | np.maximum(rows, 0), -1)
        for start in range(0, q, 256):  # (256, dim) at a time, never (q, k, dim)
            block = slice(start, start + 256)
            for j in range(width):
                scores = np.einsum("qd,qd->q", vectors[block], data[np.maximum(rows[block, j], 0)])
                true[s, block, j] = np.where(rows[block, j] >= 0, scores, -np.inf)
    return RecallPartial(number, tuple(steps), exact_keys, exact.scores, keys, true, tuple(timings), own)


def recall_points(partials: Sequence[RecallPartial], order: np.ndarray, queries: RecallQueries, k: int,
                  step: tuple[int, int]) -> list[Point]:
    """Recall at one step when each query searches its 1, 2, ... nearest searchers (order: (q, n)
    slots in partials, nearest first), as a consumer merges them: by score, ties to the lower key."""
    from imgsim.index.fanout import Candidates, merge

    n = len(partials)
    s = partials[0].steps.index(step)
    truth = merge([Candidates(p.exact_keys, p.exact) for p in partials], k)
    keys = np.stack([p.keys[s] for p in partials])
    true = np.stack([p.true[s] for p in partials])
    ms = float(np.mean([p.ms_per_query[s] for p in partials]))
    q = np.arange(len(queries))[:, None]
    kinds = queries.in_index
    points = []
    for searched in range(1, n + 1):
        slots = order[:, :searched]
        got = merge([Candidates(keys[slots[:, j], q[:, 0]], true[slots[:, j], q[:, 0]]) for j in range(searched)], k)

        def agree(mask):
            return agreement(got.rows[mask], got.scores[mask], truth.rows[mask], truth.scores[mask], k)

        points.append(Point(step, searched, agree(kinds), agree(~kinds), ms * searched))
    return points


@dataclasses.dataclass(frozen=True)
class TableTruth:
    """The in-index recall queries as rows of the built index (global rows) with their exact top k:
    what the neighbours table's rows for them are checked against, part by part."""

    rows: np.ndarray  # int64 (m,), sorted
    exact_rows: np.ndarray  # int64 (m, k)
    exact_scores: np.ndarray  # float32 (m, k)

    @classmethod
    def of(cls, partials: Sequence[RecallPartial], offsets: dict, queries: RecallQueries, k: int) -> "TableTruth":
        """offsets: shard number -> its first global row."""
        from imgsim.index.fanout import Candidates, merge

        def global_rows(keys):
            shard, row = keys >> KEY_BITS, keys & ((1 << KEY_BITS) - 1)
            base = np.vectorize(lambda s: offsets.get(int(s), 0), otypes=[np.int64])(shard) if keys.size else shard
            return np.where(keys >= 0, base + row, -1)

        truth = merge([Candidates(global_rows(p.exact_keys), p.exact) for p in partials], k)
        own = np.full(len(queries), -1, np.int64)
        for p in partials:
            own = np.where(p.own >= 0, offsets[p.shard] + p.own, own)
        pick = np.flatnonzero(own >= 0)
        order = pick[np.argsort(own[pick], kind="stable")]
        return cls(own[order], truth.rows[order], truth.scores[order])

    def hits(self, first_row: int, rows: np.ndarray, scores: np.ndarray) -> tuple[int, int, int]:
        """(tie hits, strict hits, queries) of a block of the neighbours table: rows and scores of
        global rows first_row, first_row + 1, ... (best first, -1 where none)."""
        lo, hi = np.searchsorted(self.rows, [first_row, first_row + len(rows)])
        if hi <= lo:
            return 0, 0, 0
        k = min(self.exact_rows.shape[1], rows.shape[1])
        at = self.rows[lo:hi] - first_row
        found = np.where(np.isfinite(scores[at, :k]), rows[at, :k], -1)
        got = agreement(found, scores[at, :k], self.exact_rows[lo:hi], self.exact_scores[lo:hi], k)
        n = hi - lo
        return round(got.tie * n * k), round(got.strict * n * k), int(n)


def table_report(hits: Sequence[tuple[int, int, int]], k: int, exact: bool) -> dict:
    """The manifest's neighbors.recall, from the parts' hits."""
    tie, strict, n = (sum(h[i] for h in hits) for i in range(3))
    return {"k": k, "value": round(tie / (n * k), 5) if n else 1.0, "strict": round(strict / (n * k), 5) if n else 1.0,
            "queries": n, "exact": exact}
