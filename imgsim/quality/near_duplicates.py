"""The near-duplicate benchmark: does the model find an image's altered copies, and at what threshold?

Each original gets one seeded copy per perturbation kind (imgsim.quality.perturb).
Originals and copies are embedded with the index's own model and preprocessing,
then scored:
- near_duplicate_recall_at_1: the share of copies whose nearest original is their
  own (what a "more like this" or de-duplication query over the collection sees);
- precision and recall of the pairs (among originals and copies) at or above the
  index's --duplicate-threshold, against the truth that an original and its copies
  are duplicates of each other;
- a sweep of thresholds with the precision-recall curve, and the threshold with
  the best F1 (ties: the higher threshold) as `recommended_threshold`.
"""
from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from imgsim.embed.decode import DecodeConfig, decode_image
from imgsim.quality.perturb import encode, perturbations

SWEEP = tuple(round(float(t), 2) for t in np.arange(0.50, 1.0, 0.01))


def near_duplicate_benchmark(originals: Sequence[tuple[str, bytes]], embed: Callable[[np.ndarray], tuple],
                             decode: DecodeConfig, threshold: float, seed: int = 0, batch: int = 16) -> dict:
    """originals: (name, bytes); embed: uint8 (n, 224, 224, 3) -> (unit vectors, valid), as imgsim's Embedder."""
    rng = np.random.default_rng(seed)
    items, listed = [], []  # items: (group, kind, bytes)
    for group, (name, data) in enumerate(originals):
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        items.append((group, "original", data))
        for kind, copy, parameters in perturbations(image, rng):
            items.append((group, kind, encode(copy)))
            listed.append({"original": name, "kind": kind, "parameters": parameters})
    vectors = _embed([data for _, _, data in items], embed, decode, batch)
    groups = np.array([g for g, _, _ in items])
    kinds = np.array([k for _, k, _ in items])
    is_original = kinds == "original"

    sims_to_originals = vectors[~is_original] @ vectors[is_original].T
    found = groups[is_original][np.argmax(sims_to_originals, axis=1)]
    hit = found == groups[~is_original]
    own = vectors[~is_original] @ vectors[is_original].T
    own_score = own[np.arange(len(own)), groups[~is_original]]

    upper = np.triu_indices(len(items), k=1)
    pair_scores = (vectors @ vectors.T)[upper]
    pair_truth = (groups[:, None] == groups[None, :])[upper]
    at = _pair_scores(pair_scores, pair_truth, threshold)
    curve = [{"threshold": t, **_pair_scores(pair_scores, pair_truth, t)} for t in SWEEP]
    best = max(curve, key=lambda point: (point["f1"], point["threshold"]))
    names = [name for name, _ in originals]
    return {
        "near_duplicate_recall_at_1": float(hit.mean()),
        "threshold": threshold,
        "precision": at["precision"],
        "recall": at["recall"],
        "f1": at["f1"],
        "recommended_threshold": best["threshold"],
        "at_recommended": {k: best[k] for k in ("precision", "recall", "f1")},
        "originals": len(originals),
        "copies": int((~is_original).sum()),
        "seed": seed,
        "per_kind": {kind: {"recall_at_1": float(hit[kinds[~is_original] == kind].mean()),
                            "mean_cosine_to_original": float(own_score[kinds[~is_original] == kind].mean())}
                     for kind in dict.fromkeys(kinds[~is_original])},
        "misses": [{"original": names[groups[~is_original][i]], "kind": str(kinds[~is_original][i]),
                    "nearest": names[found[i]]} for i in np.flatnonzero(~hit)],
        "curve": curve,
        "perturbations": listed,
    }


def _embed(datas: list[bytes], embed, decode: DecodeConfig, batch: int) -> np.ndarray:
    out = []
    for start in range(0, len(datas), batch):
        pixels = np.stack([decode_image(d, decode).pixels for d in datas[start:start + batch]])
        vectors, valid = embed(pixels)
        if not np.all(valid):
            raise ValueError("an image of the benchmark gives an all-zero embedding")
        out.append(vectors)
    return np.concatenate(out)


def _pair_scores(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    found = scores >= threshold
    true_positive = int(np.sum(found & truth))
    precision = true_positive / int(found.sum()) if found.any() else 1.0
    recall = true_positive / int(truth.sum()) if truth.any() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "pairs_found": int(found.sum())}
