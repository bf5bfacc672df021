"""VGG16 as a feature extractor: uint8 images in, L2-normalised vectors out.

The architecture is Keras' own ``keras.applications.VGG16`` (so the official
ImageNet files and Keras 3 ``.weights.h5`` files load by structure), cut at
the chosen layer:
- ``fc2`` (default): the 4096-d penultimate layer, the design's choice;
- ``fc1``: the first 4096-d fully connected layer;
- ``pool``: block5 global average pooling, 512-d, needs no fc weights;
- ``gem`` and ``pool45``: generalized-mean pooling of block5 (512-d) and block4 +
  block5 average pooling (1024-d), no fc weights either (imgsim.embed.pooling).
Vectors are L2-normalised so cosine similarity is a dot product. bf16 runs
the same weights under Keras' ``mixed_bfloat16`` policy, set per layer on a
clone of the model rather than through Keras' global policy.
TensorFlow is imported only when a model is built.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Optional

import numpy as np

from imgsim.embed.decode import MODEL_INPUT_SIZE, vgg16_preprocess

_LOG = logging.getLogger("imgsim.embed.model")
LAYER_DIMS = {"fc2": 4096, "fc1": 4096, "pool": 512, "gem": 512, "pool45": 1024}
PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("keras", "openvino")
ARCHITECTURE = "vgg16"


class WeightsMismatch(ValueError):
    """The weights file does not fit the architecture and layer asked for."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    layer: str = "fc2"
    weights: str = "imagenet"
    precision: str = "fp32"
    backend: str = "keras"

    def __post_init__(self):
        if self.layer not in LAYER_DIMS:
            raise ValueError(f"unknown layer {self.layer!r}: choose one of {', '.join(LAYER_DIMS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.precision == "int8" and self.backend != "openvino":
            raise ValueError("--precision int8 needs --backend openvino (Keras has no int8 path here)")

    @property
    def include_top(self) -> bool:
        return self.layer in ("fc1", "fc2")

    @property
    def dim(self) -> int:
        return LAYER_DIMS[self.layer]


def build_model(spec: ModelSpec, weights_path: str):
    """The Keras model for spec with the weights at weights_path; raises WeightsMismatch."""
    import keras

    enable_gpu_memory_growth()
    base = keras.applications.VGG16(
        weights=None, include_top=spec.include_top, pooling="avg" if spec.layer == "pool" else None)
    load_weights(base, weights_path, spec)
    if spec.layer == "pool":
        model = base
    elif spec.include_top:
        model = keras.Model(base.inputs, base.get_layer(spec.layer).output, name=f"vgg16_{spec.layer}")
    else:
        from imgsim.embed import pooling  # imports Keras

        model = pooling.head(base, spec.layer)
    if spec.precision == "bf16" and spec.backend == "keras":
        model = _with_policy(model, "mixed_bfloat16")
    return model


def load_weights(model, path: str, spec: ModelSpec) -> None:
    if not path.endswith((".weights.h5", ".h5", ".hdf5")):
        raise WeightsMismatch(f"{path}: weights must be a Keras .weights.h5 (or legacy .h5) file")
    try:
        with warnings.catch_warnings():
            # Keras 3 warns about containers it does not need (VGG16 has none worth loading).
            warnings.filterwarnings("ignore", message=".*nested container.*")
            model.load_weights(path)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if spec.include_top and ("fc1" in str(e) or "fc2" in str(e) or "predictions" in str(e)):
            raise WeightsMismatch(
                f"{path} has no fc1/fc2 weights (a 'notop' file?): use --layer pool, "
                f"or full VGG16 weights for --layer {spec.layer}") from None
        raise WeightsMismatch(
            f"{path} does not fit VGG16 (layer {spec.layer}): {first_line}") from None


def enable_gpu_memory_growth() -> None:
    """Let TensorFlow take GPU memory as needed, so several worker threads can share a GPU."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: nothing to change
            pass


def _with_policy(model, policy: str):
    import keras

    def clone_layer(layer):
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


class Embedder:
    """A built model wrapped for batched, thread-safe inference.

    A batch that does not fit in accelerator memory is split in halves until
    it does, so a --max-batch-size chosen for one GPU cannot fail rows on a
    smaller one."""

    def __init__(self, model, dim: int):
        import tensorflow as tf

        self.dim = dim
        self._out_of_memory = tf.errors.ResourceExhaustedError
        # One trace for every batch size; Keras' predict_on_batch would retrace per new size.
        self._forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3], tf.float32)])

    def _raw(self, pixels: np.ndarray) -> np.ndarray:
        try:
            raw = self._forward(vgg16_preprocess(pixels))
        except self._out_of_memory:
            if len(pixels) == 1:
                raise
            half = len(pixels) // 2
            _LOG.warning("a batch of %d images did not fit in memory; splitting it (lower --max-batch-size)",
                         len(pixels))
            return np.concatenate([self._raw(pixels[:half]), self._raw(pixels[half:])])
        return np.array(raw, dtype=np.float32).reshape(len(pixels), -1)

    def forward(self, preprocessed: np.ndarray) -> np.ndarray:
        """The model alone on already preprocessed float32 input (benchmarks measure this)."""
        return np.asarray(self._forward(preprocessed))

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, 224, 224, 3) RGB -> (float32 (N, dim) unit vectors, bool (N,) valid).

        A row is invalid when its raw vector is all zeros or not finite; it is left as is.
        """
        vectors = self._raw(pixels)
        norms = np.linalg.norm(vectors, axis=1)
        valid = np.isfinite(norms) & (norms > 0)
        vectors[valid] /= norms[valid, None]
        return vectors, valid


def load_embedder(spec: ModelSpec, weights_path: str, quantized_dir: Optional[str] = None,
                  threads: int = 0):
    """The embedder for spec: Keras (fp32, bf16), or OpenVINO (fp32, bf16, or int8 from the quantised
    model in quantized_dir, made once per run by imgsim.embed.calibration)."""
    if spec.backend == "keras":
        return Embedder(build_model(spec, weights_path), spec.dim)
    from imgsim.embed import openvino_backend  # imports OpenVINO: only for --backend openvino

    if spec.precision == "int8":
        if quantized_dir is None:
            raise ValueError("int8 needs the run's quantised model (its calibration)")
        model = openvino_backend.load(quantized_dir)
    else:
        model = openvino_backend.convert(build_model(dataclasses.replace(spec, precision="fp32", backend="keras"),
                                                     weights_path))
    return openvino_backend.OpenVinoEmbedder(model, spec.dim, spec.precision, threads)
