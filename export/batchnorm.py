"""Rewrite BatchNorms that converters cannot fold into per-channel 1x1 depthwise convolutions.

A converter folds a BatchNorm into the convolution it follows. One that reads anything else
(a residual sum, a tensor another layer also reads) stays a separate MUL and ADD, and full-int8
quantization gives their per-channel constants one scale for all channels: channels with small
factors lose most of their precision. The same affine map as a 1x1 depthwise convolution is
quantized per channel (int8 kernel, int32 bias), and costs one cheap op instead of two.
The rewritten model computes the same function; parity against the original proves it.
"""

from __future__ import annotations

CONVOLUTIONS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv1D", "Conv3D", "Dense")


def standalone_batchnorms(model) -> list:
    """The BatchNormalization layers no converter can fold into a preceding convolution."""
    standalone = []
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        producer = layer.input._keras_history.operation
        folds = (type(producer).__name__ in CONVOLUTIONS
                 and producer.get_config().get("activation", "linear") == "linear"
                 and len(producer._outbound_nodes) == 1)
        if not folds:
            standalone.append(layer)
    return standalone


def as_depthwise(model):
    """`model` with its standalone 4-D BatchNorms as 1x1 depthwise convolutions (same weights
    elsewhere); `model` itself when it has none."""
    from edgeconv.train.backend import import_keras

    keras = import_keras()
    replaced = {layer.name for layer in standalone_batchnorms(model)
                if len(layer.input.shape) == 4 and layer.axis in (-1, 3)}
    if not replaced:
        return model

    def clone(layer):
        if layer.name in replaced:
            return keras.layers.DepthwiseConv2D(1, use_bias=True, name=layer.name,
                                                dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    def call(layer, *args, **kwargs):
        if layer.name in replaced:  # a convolution takes no BatchNorm call arguments (mask)
            kwargs = {}
        return layer(*args, **kwargs)

    rewritten = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for original, copy in zip(model.layers, rewritten.layers):
        if original.name in replaced:
            copy.set_weights(_depthwise_weights(original))
        else:
            copy.set_weights(original.get_weights())
    return rewritten


def _depthwise_weights(norm) -> list:
    import numpy as np

    weights = dict(zip((w.path.split("/")[-1] for w in norm.weights), norm.get_weights()))
    channels = weights["moving_mean"].shape[0]
    gamma = weights.get("gamma", np.ones(channels, np.float32))
    beta = weights.get("beta", np.zeros(channels, np.float32))
    scale = gamma / np.sqrt(weights["moving_variance"] + norm.epsilon)
    bias = beta - weights["moving_mean"] * scale
    return [scale.reshape(1, 1, channels, 1).astype(np.float32), bias.astype(np.float32)]
