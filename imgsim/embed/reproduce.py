"""Rebuilding the model a signature names, so new vectors compare with an index's.

The consumer's `search_image` and `imgsim evaluate`'s near-duplicate benchmark
embed images after the fact; their vectors are only comparable with the index's
if every part of the signature matches: layer, precision, preprocessing and the
weights themselves, checked by checksum (the file may sit elsewhere now:
`weights=` points at a local copy of the same file).
"""
from __future__ import annotations

import os
from typing import Optional

from imgsim.embed import weights as weights_lib
from imgsim.embed.decode import RESIZE_MODES, DecodeConfig
from imgsim.embed.model import ARCHITECTURE, Embedder, ModelSpec, load_embedder
from imgsim.embed.quantized import QuantizedModelChanged, quantized_model_copy
from imgsim.embed.signature import ModelSignature
from imgsim.storage import ObjectStore


class ModelMismatch(ValueError):
    """The model at hand would produce vectors the index cannot be compared with."""


def decode_config_for(preprocessing: str) -> DecodeConfig:
    """The DecodeConfig that reproduces a signature's preprocessing, or ModelMismatch."""
    for resize in RESIZE_MODES:
        candidate = DecodeConfig(resize=resize)
        if candidate.preprocessing_id == preprocessing:
            return candidate
    raise ModelMismatch(f"this imgsim cannot reproduce the index's preprocessing {preprocessing!r} "
                        f"(it makes {DecodeConfig().preprocessing_id!r} variants); use the imgsim version "
                        f"that built the index")


def check_reproducible(signature: ModelSignature, backend: Optional[str] = None) -> DecodeConfig:
    """The signature's preprocessing, once what can be checked without building the model holds:
    a VGG16 signature, and the backend asked for (if any) is the signature's; ModelMismatch else."""
    if signature.model != ARCHITECTURE:
        raise ModelMismatch(f"the index holds {signature.model!r} vectors, not {ARCHITECTURE} ones: "
                            "imgsim cannot embed images comparably")
    if backend is not None and backend != signature.backend:
        raise ModelMismatch(f"the index was embedded through {signature.backend} ({signature.precision}); "
                            f"vectors from {backend} would not compare with it: use backend {signature.backend!r}")
    return decode_config_for(signature.preprocessing)


def embedder_for(signature: ModelSignature, store: ObjectStore, weights: Optional[str] = None,
                 model_dir: Optional[str] = None, backend: Optional[str] = None) -> tuple[Embedder, DecodeConfig]:
    """The embedder and preprocessing of a signature; ModelMismatch when they cannot be reproduced.

    weights: where the signature's weights file is now (default: where the signature says);
    model_dir: the local directory of an int8 run's quantised model (an index artifact keeps it);
    backend: the backend the caller asks for (default: the signature's; another one is refused)."""
    decode_config = check_reproducible(signature, backend)
    spec = ModelSpec(layer=signature.layer, weights=weights or signature.weights, precision=signature.precision,
                     backend=signature.backend)
    try:
        if spec.precision == "int8":
            return _quantized(signature, spec, store, model_dir), decode_config
        return _with_weights(signature, spec, store), decode_config
    except ImportError as e:
        raise ModelMismatch(f"the index was embedded through {signature.backend}: pip install "
                            f"'imgsim[{signature.backend}]' to embed queries comparably ({e})") from None


def _quantized(signature: ModelSignature, spec: ModelSpec, store: ObjectStore, directory: Optional[str]):
    if directory is None or not os.path.isdir(directory):
        raise ModelMismatch("the index holds int8 vectors but not its quantised model: it cannot embed queries")
    try:
        local = quantized_model_copy(store, directory, signature.quantization)
    except QuantizedModelChanged as e:
        raise ModelMismatch(str(e)) from None
    return load_embedder(spec, "", quantized_dir=local)


def _with_weights(signature: ModelSignature, spec: ModelSpec, store: ObjectStore):
    local = weights_lib.resolve(spec.weights, spec.include_top, store)
    if local.checksum != signature.weights_checksum:
        raise ModelMismatch(
            f"the weights {spec.weights} (checksum {local.checksum}) are not the ones this index "
            f"was built with ({signature.weights_checksum}); pass weights= the same file")
    return load_embedder(spec, local.path)
