"""Pooling heads on VGG16's convolutional trunk, for the layers that need no fc weights.

Chosen by measurement (BENCHMARKS.md, "Quality"), on the shared clip art with the
real ImageNet weights, precision@5 of same-label neighbours:
- ``pool``: block5 global average pooling (Keras' own ``pooling="avg"``), 0.556;
- ``gem``: generalized-mean pooling, p = 3, of block5_conv3 (the last convolution,
  before the max pool), 0.575: it weighs strong local responses more than a mean
  and less than a max (max pooling 0.556, GeM of block5_pool 0.568);
- ``pool45``: block4 and block5 average pooling, each L2-normalised, concatenated
  (1024-d), 0.569: mid-level texture and shape beside block5's parts.
Imports Keras: load it only when a model is built.
"""
from __future__ import annotations

import keras
from keras import ops

GEM_POWER = 3.0


@keras.saving.register_keras_serializable(package="imgsim")
class GeneralizedMeanPooling(keras.layers.Layer):
    """(mean over positions of x^p)^(1/p) per channel; computed in float32 whatever the policy."""

    def __init__(self, power: float = GEM_POWER, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.power = power
        self.epsilon = epsilon

    def call(self, inputs):
        x = ops.maximum(ops.cast(inputs, "float32"), self.epsilon)
        return ops.power(ops.mean(ops.power(x, self.power), axis=(1, 2)), 1.0 / self.power)

    def get_config(self):
        return {**super().get_config(), "power": self.power, "epsilon": self.epsilon}


def head(trunk: keras.Model, layer: str) -> keras.Model:
    """The feature model for `layer` ("gem" or "pool45") on VGG16's convolutional trunk."""
    if layer == "gem":
        features = GeneralizedMeanPooling(name="gem")(trunk.get_layer("block5_conv3").output)
    elif layer == "pool45":
        parts = [keras.layers.UnitNormalization(name=f"{block}_unit")(
                 keras.layers.GlobalAveragePooling2D(name=f"{block}_avg")(trunk.get_layer(f"{block}_pool").output))
                 for block in ("block4", "block5")]
        features = keras.layers.Concatenate(name="pool45")(parts)
    else:
        raise ValueError(f"no pooling head {layer!r}")
    return keras.Model(trunk.inputs, features, name=f"vgg16_{layer}")
