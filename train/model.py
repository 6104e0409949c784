"""The convnets: the seed's, and the smaller, stronger one of the plus recipe.

seed: Conv 32-64-128-128 with max-pooling, Flatten, [Dropout], Dense 512, as in the book.
plus: a residual network of separable convolutions with batch normalization (see
build_plus_model).

Two classes end in Dense(1, sigmoid) as in the seed; more end in Dense(N, softmax).
Inputs are raw 0..255 pixels; a Rescaling layer scales them to [0, 1] inside the model,
so every consumer feeds what runtime.preprocess.load_image returns.
"""

from __future__ import annotations

import functools

import keras

from edgeconv.train.dataset import INPUT_SHAPE  # the size the photos are decoded at


def build_model(
    num_classes: int = 2,
    dropout: float = 0.0,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    dtype: str = "float32",
) -> keras.Sequential:
    """Build the seed architecture. `dtype` is a Keras dtype policy, e.g. "mixed_bfloat16"."""
    if num_classes < 2:
        raise ValueError("a classifier needs at least two classes")
    layers = [keras.Input(shape=input_shape), keras.layers.Rescaling(1.0 / 255, dtype=dtype)]
    for filters in (32, 64, 128, 128):
        layers += [
            keras.layers.Conv2D(filters, 3, activation="relu", dtype=dtype),
            keras.layers.MaxPooling2D(2, dtype=dtype),
        ]
    layers.append(keras.layers.Flatten(dtype=dtype))
    if dropout:
        layers.append(keras.layers.Dropout(dropout, dtype=dtype))
    layers += [keras.layers.Dense(512, activation="relu", dtype=dtype), _head(num_classes)]
    return keras.Sequential(layers, name="seed_convnet")


PLUS_WIDTHS = (64, 128, 256, 512)
# The first stage runs at 75x75, where channels cost the most time: half as many there make
# an int8 inference and a training epoch about a quarter faster, at a cost in accuracy
# (docs/results.md).
PLUS_LITE_WIDTHS = (32, 128, 256, 512)
PLUS_48_WIDTHS = (48, 128, 256, 512)  # between the two; measured, neither wins (docs)
# Keras's default 0.99 leaves the moving variance, which starts at 1, several times too large
# for ten epochs here (true variances are ~0.01), and validation reads 50% meanwhile.
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="edgeconv")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization whose training steps run TensorFlow's fused kernel: one pass forward
    and one back instead of Keras's separate moments and arithmetic; a plus training step is
    a few percent faster on a CPU (benchmarks/train.py --recipe plus). The same weights and updates
    of the moving statistics, so an inference network of plain BatchNormalization layers
    takes its weights unchanged. Other backends, precisions and inference run Keras's own.
    """

    def call(self, inputs, training=None, mask=None):
        if not training or mask is not None or keras.backend.backend() != "tensorflow" \
                or self.compute_dtype != "float32" or len(inputs.shape) != 4 \
                or self.axis not in (-1, 3) or not (self.center and self.scale):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
        # The kernel returns the unbiased variance; Keras keeps the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), variance.dtype)
        variance = variance * (count - 1) / count
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + batch * (1.0 - self.momentum))
        return outputs


def build_plus_model(
    num_classes: int = 2,
    dropout: float = 0.3,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    dtype: str = "float32",
    widths: tuple[int, ...] = PLUS_WIDTHS,
    foldable: bool = False,
    norm_layer: type = keras.layers.BatchNormalization,
) -> keras.Model:
    """A residual separable convnet with batch normalization, in the seed's budget.

    A strided 3x3 stem halves the resolution first: the seed spends most of its MACs at
    full resolution, this network spends them on more channels deeper down. Each stage is
    two separable 3x3 convolutions and a 3x3/2 max-pool, with a strided 1x1 projection as
    its shortcut; global average pooling replaces Flatten + Dense 512.

    foldable=False orders each block BN-ReLU-conv (pre-activation): five BatchNorms then
    read a tensor that is not a convolution's alone (the stem's, also read by the first
    shortcut, or a residual sum) and run as separate int8 ops after export. foldable=True orders it
    conv-BN-ReLU, as Xception does: every BatchNorm follows a convolution and folds into it.
    `norm_layer` is the batch normalization layer (training passes FusedBatchNormalization).
    """
    if num_classes < 2:
        raise ValueError("a classifier needs at least two classes")
    L = keras.layers

    def norm(x):
        return norm_layer(momentum=BN_MOMENTUM, dtype=dtype)(x)

    def relu(x):
        return L.Activation("relu", dtype=dtype)(x)

    def separable(x, width):
        return L.SeparableConv2D(width, 3, padding="same", use_bias=False, dtype=dtype)(x)

    inputs = keras.Input(shape=input_shape)
    x = L.Rescaling(1.0 / 255, dtype=dtype)(inputs)
    x = L.Conv2D(widths[0] // 2, 3, strides=2, padding="same", use_bias=False, dtype=dtype)(x)
    if foldable:
        x = relu(norm(x))
    for width in widths:
        shortcut = x
        if foldable:
            x = norm(separable(relu(norm(separable(x, width))), width))
        else:
            x = separable(relu(norm(separable(relu(norm(x)), width))), width)
        x = L.MaxPooling2D(3, strides=2, padding="same", dtype=dtype)(x)
        shortcut = L.Conv2D(width, 1, strides=2, padding="same", use_bias=False,
                            dtype=dtype)(shortcut)
        if foldable:
            shortcut = norm(shortcut)
        x = L.Add(dtype=dtype)([x, shortcut])
        if foldable:
            x = relu(x)
    if not foldable:
        x = relu(norm(x))
    x = L.GlobalAveragePooling2D(dtype=dtype)(x)
    if dropout:
        x = L.Dropout(dropout, dtype=dtype)(x)
    return keras.Model(inputs, _head(num_classes)(x), name="plus_convnet")


ARCHITECTURES = {
    "seed": build_model,
    "plus": build_plus_model,
    "plus-foldable": functools.partial(build_plus_model, foldable=True),
    "plus-lite": functools.partial(build_plus_model, widths=PLUS_LITE_WIDTHS),
    "plus-48": functools.partial(build_plus_model, widths=PLUS_48_WIDTHS),
}


def any_size(model: keras.Model) -> keras.Model:
    """A copy of `model` that takes photos of any height and width, with the same weights.

    Only a fully convolutional network (global pooling before its head) runs at another
    size: a Flatten's Dense expects the trained size's feature map (ValueError)."""
    config = model.get_config()
    _free_spatial_dims(config)  # nested models too (a none head has inputs of its own)
    try:
        other = keras.Model.from_config(config)
        other.set_weights(model.get_weights())
    except ValueError:
        raise ValueError(f"{model.name}: runs only at {model.input_shape[1]}x"
                         f"{model.input_shape[2]} (a Flatten fixes the size); other sizes "
                         "need a fully convolutional model such as plus") from None
    return other


def _free_spatial_dims(node) -> None:
    """Every 4-D input shape in a Keras config made [batch, None, None, channels], in place."""
    if isinstance(node, list):
        for item in node:
            _free_spatial_dims(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        shape = key in ("batch_shape", "build_input_shape") and isinstance(value, (list, tuple))
        if shape and len(value) == 4:
            node[key] = [value[0], None, None, value[3]]
        else:
            _free_spatial_dims(value)


def _head(num_classes: int) -> keras.layers.Dense:
    # The head stays float32 under mixed precision: probabilities need the range.
    binary = num_classes == 2
    return keras.layers.Dense(1 if binary else num_classes,
                              activation="sigmoid" if binary else "softmax", dtype="float32")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of the convolutions and Dense layers (the bulk of it)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, channels_in, channels_out = layer.kernel.shape
            _, out_h, out_w, _ = layer.output.shape
            total += kernel_h * kernel_w * channels_in * channels_out * out_h * out_w
        elif isinstance(layer, keras.layers.SeparableConv2D):
            kernel_h, kernel_w, channels_in, multiplier = layer.depthwise_kernel.shape
            _, out_h, out_w, channels_out = layer.output.shape
            depthwise = kernel_h * kernel_w * channels_in * multiplier
            pointwise = channels_in * multiplier * channels_out
            total += (depthwise + pointwise) * out_h * out_w
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)
