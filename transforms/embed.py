"""Batched VGG16 inference through Beam's RunInference, with a model handler of our own.

Beam's TensorFlow handler imports tensorflow_hub and cannot load Keras 3
models, so Vgg16ModelHandler builds the model with imgsim.embed.model. The base
class supplies batching (min/max batch size) and sharing: one model per
worker process, used by all its threads (or, with large_model, one per
machine across processes). A batch the model raises on becomes
`inference_error` failures for its rows instead of failing the job.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from imgsim.embed import weights
from imgsim.embed.model import Embedder, ModelSpec, load_embedder
from imgsim.embed.quantized import quantized_model_copy
from imgsim.failures import STAGE_EMBED, Failure
from imgsim.records import DecodedImage, EmbeddingRow
from imgsim.storage import ObjectStore
from imgsim.transforms.failures import FAILURES, NAMESPACE, counted, failed


class WeightsChanged(RuntimeError):
    """The weights a worker loaded are not the ones the launcher signed the run with."""


class Vgg16ModelHandler(ModelHandler[DecodedImage, PredictionResult, Embedder]):
    def __init__(self, spec: ModelSpec, weights_checksum: str, min_batch_size: int = 1,
                 max_batch_size: int = 32, large_model: bool = False, model_copies: Optional[int] = None,
                 quantized_dir: Optional[str] = None, quantization: str = ""):
        """quantized_dir, quantization: for int8, where the run's quantised model is (local or gs://)
        and its checksum."""
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError("batch sizes must satisfy 1 <= min_batch_size <= max_batch_size")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size,
                         large_model=large_model, model_copies=model_copies)
        self._spec = spec
        self._checksum = weights_checksum
        self._quantized_dir = quantized_dir
        self._quantization = quantization

    def load_model(self) -> Embedder:
        store = ObjectStore()
        if self._spec.precision == "int8":  # the quantised model holds its weights
            local_dir = quantized_model_copy(store, self._quantized_dir, self._quantization)
            return load_embedder(self._spec, "", quantized_dir=local_dir)
        local = weights.resolve(self._spec.weights, self._spec.include_top, store)
        if local.checksum != self._checksum:
            raise WeightsChanged(
                f"--weights {self._spec.weights} now has checksum {local.checksum}, but the run "
                f"was started with {self._checksum}; embeddings of one run must come from one model")
        return load_embedder(self._spec, local.path)

    def run_inference(self, batch: Sequence[DecodedImage], model: Embedder,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        vectors, valid = model(np.stack([image.pixels for image in batch]))
        return [PredictionResult(image, (vector, bool(ok))) for image, vector, ok in zip(batch, vectors, valid)]

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        # The default pickles every element just to measure it.
        return sum(image.pixels.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return "imgsim_vgg16"


class EmbedImages(beam.PTransform):
    """decoded images -> (EmbeddingRows, failures).

    The handler's predictions are (vector, valid) pairs per image: Vgg16ModelHandler
    in a run, any ModelHandler with that contract in tests."""

    def __init__(self, handler: ModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, decoded):
        predictions, errors = decoded | "RunInference" >> RunInference(self._handler).with_exception_handling()
        outputs = predictions | "ToRows" >> beam.ParDo(_ToEmbeddingRow()).with_outputs(FAILURES, main="rows")
        batch_failures = errors.failed_inferences | "FailedBatches" >> beam.ParDo(_FailedBatch())
        failures = (outputs[FAILURES], batch_failures) | "EmbedFailures" >> beam.Flatten()
        return outputs.rows, failures


class _ToEmbeddingRow(beam.DoFn):
    def __init__(self):
        self._embedded = Metrics.counter(NAMESPACE, "embedded")

    def process(self, prediction: PredictionResult):
        image: DecodedImage = prediction.example
        vector, ok = prediction.inference
        if not ok:
            yield failed(Failure(image.row.id, image.row.url, STAGE_EMBED, "degenerate_embedding",
                                 "the raw vector is all zeros or not finite"))
            return
        self._embedded.inc()
        yield EmbeddingRow.computed(image, vector)


class _FailedBatch(beam.DoFn):
    def process(self, element):
        batch, error = element
        detail = f"{type(error).__name__}: {error}"[:300]
        for image in batch:
            yield counted(Failure(image.row.id, image.row.url, STAGE_EMBED, "inference_error", detail))
