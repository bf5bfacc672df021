"""A fake model handler, as apache_beam/ml/inference/base_test.py uses: the pipeline without VGG16.

FakeEmbedder maps an image to a deterministic vector from its pixels (an 8x8
thumbnail of each channel, tiled to the dimension asked for), so similar
images get similar vectors and an all-black image gets the zero vector (a
degenerate embedding). An image whose id contains "explode" makes the batch
raise, like a model failing on a batch.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult


class FakeEmbedder:
    def __init__(self, dim: int):
        self.dim = dim

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        small = pixels.reshape(len(pixels), 8, pixels.shape[1] // 8, 8, pixels.shape[2] // 8, 3).mean(axis=(2, 4))
        flat = small.reshape(len(pixels), -1).astype(np.float32)
        # Tile each row on its own: np.resize on the 2-D array would cycle through the whole batch,
        # making an image's vector depend on the images batched with it.
        vectors = np.tile(flat, (1, -(-self.dim // flat.shape[1])))[:, :self.dim]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1)
        valid = norms > 0
        vectors[valid] /= norms[valid, None]
        return vectors, valid


class FakeModelHandler(ModelHandler):
    def __init__(self, dim: int = 512, max_batch_size: int = 4):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self._dim = dim
        self.loads = 0

    def load_model(self) -> FakeEmbedder:
        return FakeEmbedder(self._dim)

    def run_inference(self, batch: Sequence, model: FakeEmbedder,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        if any("explode" in image.row.id for image in batch):
            raise RuntimeError("the fake model refuses this batch")
        vectors, valid = model(np.stack([image.pixels for image in batch]))
        return [PredictionResult(image, (v, bool(ok))) for image, v, ok in zip(batch, vectors, valid)]
