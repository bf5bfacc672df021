"""Labelled retrieval quality: do an item's nearest neighbours share its label?

For every labelled item of an index, its k nearest other labelled items are
found by exact cosine search over the index's own vectors (so the measure is
of the features, not of ScaNN's approximation, whose recall the manifest
reports), and scored:
- precision@k: the share of the k neighbours with the query's label;
- mAP@10: average precision over the first 10 neighbours, normalised by
  min(10, relevant items), as in image-retrieval benchmarks;
- per label: its count and precision@5; the most confused label pairs: how often
  an item's top-5 holds the other label.
Items whose label has no other member cannot be queried (they are counted as
`singletons`); labelled ids missing from the index are counted as `missing`.
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from imgsim.index.exact import similarity_blocks, top_k

CURVE_KS = tuple(range(1, 21))


def evaluate_retrieval(ids: Sequence[str], vectors: np.ndarray, labels: Mapping[str, str],
                       confused: int = 10) -> dict:
    """The retrieval report for the labelled items among (ids, unit vectors)."""
    row_of = {item: row for row, item in enumerate(ids)}
    present = [item for item in labels if item in row_of]
    missing = len(labels) - len(present)
    names = np.array([labels[item] for item in present])
    sizes = Counter(names.tolist())
    queryable = np.array([sizes[name] > 1 for name in names], dtype=bool)
    if len(present) < 2 or not queryable.any():
        raise ValueError(f"the labels name {len(present)} items of this index and no label has two of them: "
                         "nothing to evaluate")
    data = np.ascontiguousarray(vectors[[row_of[item] for item in present]], dtype=np.float32)
    k_max = min(max(CURVE_KS), len(present) - 1)
    neighbours = np.zeros((len(present), k_max), np.int64)
    for start, sims in similarity_blocks(data):
        own = np.arange(start, start + len(sims))
        sims[np.arange(len(sims)), own] = -np.inf  # an item is not its own neighbour
        neighbours[start:start + len(sims)] = top_k(sims, k_max)[0]
    same = names[neighbours] == names[:, None]
    same, names_q, neighbours_q = same[queryable], names[queryable], neighbours[queryable]
    relevant = np.array([sizes[name] - 1 for name in names_q])
    curve = {k: float(same[:, :k].mean()) for k in CURVE_KS if k <= k_max}
    report = {
        "labelled": int(queryable.sum()),
        "labels": len(sizes),
        "singletons": int((~queryable).sum()),
        "missing": missing,
        "precision_at_1": curve.get(1),
        "precision_at_5": curve.get(5),
        "precision_at_10": curve.get(10),
        "map_at_10": _mean_average_precision(same[:, :10], relevant),
        "precision_at_k": curve,
        "per_label": {name: {"count": sizes[name],
                             "precision_at_5": float(same[names_q == name, :5].mean())}
                      for name in sorted(sizes) if sizes[name] > 1},
        "confused_pairs": _confused(names_q, names[neighbours_q[:, :5]], confused),
    }
    return report


def _mean_average_precision(hits: np.ndarray, relevant: np.ndarray) -> float:
    k = hits.shape[1]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    ap = np.sum(precision_at * hits, axis=1) / np.minimum(k, relevant)
    return float(ap.mean())


def _confused(query_labels: np.ndarray, neighbour_labels: np.ndarray, most: int) -> list[dict]:
    pairs = Counter()
    for query, row in zip(query_labels, neighbour_labels):
        for other in row:
            if other != query:
                pairs[tuple(sorted((query, other)))] += 1
    total = neighbour_labels.size
    return [{"labels": list(pair), "count": count, "share_of_neighbours": round(count / total, 4)}
            for pair, count in pairs.most_common(most)]


def read_labels(text: str) -> dict[str, str]:
    """id -> label from CSV text with `id` and `label` columns (a later row of an id wins)."""
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"id", "label"} <= {f.strip() for f in reader.fieldnames}:
        raise ValueError(f"the labels file needs columns 'id' and 'label' (found {reader.fieldnames})")
    labels = {}
    for row in reader:
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        if row["id"] and row["label"]:
            labels[row["id"]] = row["label"]
    return labels
