"""The seed convnet: Conv 32-64-128-128 with max-pooling, Flatten, [Dropout], Dense 512.

Two classes end in Dense(1, sigmoid) as in the seed; more end in Dense(N, softmax).
Inputs are raw 0..255 pixels; a Rescaling layer scales them to [0, 1] inside the model,
so every consumer feeds what runtime.preprocess.load_image returns.
"""

from __future__ import annotations

import keras

INPUT_SHAPE = (150, 150, 3)


def build_model(
    num_classes: int = 2,
    dropout: float = 0.0,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    dtype: str = "float32",
) -> keras.Sequential:
    """Build the seed architecture. `dtype` is a Keras dtype policy, e.g. "mixed_bfloat16"."""
    if num_classes < 2:
        raise ValueError("a classifier needs at least two classes")
    binary = num_classes == 2
    layers = [keras.Input(shape=input_shape), keras.layers.Rescaling(1.0 / 255, dtype=dtype)]
    for filters in (32, 64, 128, 128):
        layers += [
            keras.layers.Conv2D(filters, 3, activation="relu", dtype=dtype),
            keras.layers.MaxPooling2D(2, dtype=dtype),
        ]
    layers.append(keras.layers.Flatten(dtype=dtype))
    if dropout:
        layers.append(keras.layers.Dropout(dropout, dtype=dtype))
    layers += [
        keras.layers.Dense(512, activation="relu", dtype=dtype),
        # The head stays float32 under mixed precision: probabilities need the range.
        keras.layers.Dense(
            1 if binary else num_classes,
            activation="sigmoid" if binary else "softmax",
            dtype="float32",
        ),
    ]
    return keras.Sequential(layers, name="seed_convnet")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of the Conv2D and Dense layers (the bulk of the work)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, channels_in, channels_out = layer.kernel.shape
            _, out_h, out_w, _ = layer.output.shape
            total += kernel_h * kernel_w * channels_in * channels_out * out_h * out_w
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)
