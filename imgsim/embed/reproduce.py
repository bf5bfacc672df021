"""Rebuilding the model a signature names, so new vectors compare with an index's.

The consumer's `search_image` and `imgsim evaluate`'s near-duplicate benchmark
embed images after the fact; their vectors are only comparable with the index's
if every part of the signature matches: layer, precision, preprocessing and the
weights themselves, checked by checksum (the file may sit elsewhere now:
`weights=` points at a local copy of the same file).
"""
from __future__ import annotations

from typing import Optional

from imgsim.embed import weights as weights_lib
from imgsim.embed.decode import RESIZE_MODES, DecodeConfig
from imgsim.embed.model import ARCHITECTURE, Embedder, ModelSpec, load_embedder
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


def embedder_for(signature: ModelSignature, store: ObjectStore,
                 weights: Optional[str] = None) -> tuple[Embedder, DecodeConfig]:
    """The embedder and preprocessing of a signature; ModelMismatch when they cannot be reproduced.

    weights: where the signature's weights file is now (default: where the signature says)."""
    if signature.model != ARCHITECTURE:
        raise ModelMismatch(f"the index holds {signature.model!r} vectors, not {ARCHITECTURE} ones: "
                            "imgsim cannot embed images comparably")
    decode_config = decode_config_for(signature.preprocessing)
    spec = ModelSpec(layer=signature.layer, weights=weights or signature.weights, precision=signature.precision)
    local = weights_lib.resolve(spec.weights, spec.include_top, store)
    if local.checksum != signature.weights_checksum:
        raise ModelMismatch(
            f"the weights {spec.weights} (checksum {local.checksum}) are not the ones this index "
            f"was built with ({signature.weights_checksum}); pass weights= the same file")
    return load_embedder(spec, local.path), decode_config
