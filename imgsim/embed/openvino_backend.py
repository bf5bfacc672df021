"""VGG16 through OpenVINO: fp32, bf16, and int8 quantised once from a calibration sample.

Why OpenVINO: on CPUs with AVX512-VNNI or AMX (Zen 4, Intel Ice Lake and later, so
most Dataflow machine types), int8 arithmetic runs VGG16 about four times as fast as
fp32 (BENCHMARKS.md), and OpenVINO's post-training quantisation (NNCF) keeps the
neighbours almost unchanged. The path: the Keras model imgsim builds (same layers,
same weights) is exported as a TensorFlow SavedModel and converted; int8 is that
model quantised by NNCF on calibration images preprocessed exactly as the pipeline
does, saved as OpenVINO IR (model.xml + model.bin) and checksummed, so every worker
and every later query loads the same quantised model.

Imports OpenVINO (the `openvino` extra): load this module only for --backend openvino.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings

import numpy as np

from imgsim.embed.decode import MODEL_INPUT_SIZE, vgg16_preprocess

_LOG = logging.getLogger("imgsim.embed.openvino")
IR_FILES = ("model.xml", "model.bin")
# OpenVINO's CPU plugin would pick bf16 by itself on CPUs that have it: imgsim says which.
_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def _openvino():
    import openvino

    return openvino


def convert(keras_model):
    """The Keras model as an OpenVINO model with a dynamic batch dimension (fp32 weights)."""
    ov = _openvino()
    with tempfile.TemporaryDirectory(prefix="imgsim-savedmodel-") as saved:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keras_model.export(saved, format="tf_saved_model", verbose=False)
        model = ov.convert_model(saved)
    model.reshape([-1, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3])
    return model


def quantize(model, pixels: np.ndarray, batch: int = 16):
    """int8 post-training quantisation (NNCF) on calibration images: uint8 (n, 224, 224, 3) RGB."""
    import nncf

    batches = [vgg16_preprocess(pixels[start:start + batch]) for start in range(0, len(pixels), batch)]
    return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(pixels), fast_bias_correction=True)


def save(model, directory: str) -> str:
    """Write the model as OpenVINO IR into directory; returns its checksum (sha256 of both files)."""
    ov = _openvino()
    os.makedirs(directory, exist_ok=True)
    ov.save_model(model, os.path.join(directory, IR_FILES[0]), compress_to_fp16=False)
    return ir_checksum(directory)


def ir_checksum(directory: str) -> str:
    digest = hashlib.sha256()
    for name in IR_FILES:
        with open(os.path.join(directory, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def load(directory: str):
    return _openvino().Core().read_model(os.path.join(directory, IR_FILES[0]))


class OpenVinoEmbedder:
    """A compiled OpenVINO model, used as imgsim's Embedder is: uint8 pixels in, unit vectors out.

    Thread-safe: each call takes an inference request of its own; the compiled model is shared."""

    def __init__(self, model, dim: int, precision: str, threads: int = 0):
        ov = _openvino()
        config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.dim = dim
        self._compiled = ov.Core().compile_model(model, "CPU", config)
        self._local = threading.local()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def forward(self, preprocessed: np.ndarray) -> np.ndarray:
        """The model alone on already preprocessed float32 input (benchmarks measure this)."""
        result = self._request().infer({0: preprocessed})
        return np.asarray(result[self._compiled.output(0)], dtype=np.float32).reshape(len(preprocessed), -1)

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.forward(vgg16_preprocess(pixels))
        norms = np.linalg.norm(vectors, axis=1)
        valid = np.isfinite(norms) & (norms > 0)
        vectors[valid] /= norms[valid, None]
        return vectors, valid
