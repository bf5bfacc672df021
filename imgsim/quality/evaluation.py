"""One evaluation of one published index: labelled retrieval and/or the near-duplicate benchmark.

The artifact is opened as any consumer opens it (verified against its manifest);
retrieval uses its own vectors, the near-duplicate benchmark embeds originals and
copies with the model its signature names (imgsim.embed.reproduce), at the
duplicate threshold it was built with.
"""
from __future__ import annotations

from typing import Optional

from imgsim.embed.reproduce import embedder_for
from imgsim.quality.near_duplicates import near_duplicate_benchmark
from imgsim.quality.retrieval import evaluate_retrieval
from imgsim.index.consumer import ImageIndex
from imgsim.storage import ObjectStore

NEAR_DUPLICATE_KEYS = ("near_duplicate_recall_at_1", "recommended_threshold")


def evaluate_index(store: ObjectStore, location: str, *, run_id: Optional[str] = None,
                   labels: Optional[dict] = None, originals: Optional[list] = None, weights: Optional[str] = None,
                   seed: int = 0, cache_dir: Optional[str] = None) -> dict:
    """The metrics of one index (labels: id -> label; originals: (name, bytes) for the near-duplicate
    benchmark). Retrieval metrics are top-level keys; the benchmark's detail is under near_duplicates."""
    index = ImageIndex.open(location, run_id=run_id, cache_dir=cache_dir, store=store)
    result = {"index": location, "run_id": index.run_id, "model_signature": index.signature.to_dict()}
    if labels is not None:
        result.update(evaluate_retrieval(index.ids, index.vectors(), labels))
    if originals is not None:
        embedder, decode = embedder_for(index.signature, store, weights)
        threshold = float(index.manifest["groups"]["threshold"])
        near = near_duplicate_benchmark(originals, embedder, decode, threshold, seed=seed)
        result.update({key: near[key] for key in NEAR_DUPLICATE_KEYS})
        result["near_duplicates"] = near
    return result


def difference(first: dict, second: dict) -> dict:
    """second minus first, for every number both evaluations report at the top level."""
    return {key: round(second[key] - first[key], 6) for key in first
            if isinstance(first.get(key), float) and isinstance(second.get(key), float)}
