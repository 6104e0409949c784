"""Data augmentation as one Keras layer, so it runs on the accelerator with the model.

The seed's ImageDataGenerator draws rotation, shift, shear, zoom and flip for each image and
applies them as ONE affine warp. Chaining Keras's RandomRotation/Translation/Zoom layers would
resample every image three times; this layer composes the same random transform and
resamples once, with the generator's "nearest" fill.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="edgeconv")
class RandomAffine(keras.layers.Layer):
    """Random rotation (degrees), shift (fraction), shear (degrees), zoom and horizontal flip.

    Active only in training; at inference it returns its input unchanged.
    """

    def __init__(
        self,
        rotation: float = 40.0,
        shift: float = 0.2,
        shear: float = 0.2,
        zoom: float = 0.2,
        horizontal_flip: bool = True,
        fill_mode: str = "nearest",
        seed: int | None = None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # warping in bfloat16 would blur the pixels
        super().__init__(**kwargs)
        self.rotation, self.shift, self.shear, self.zoom = rotation, shift, shear, zoom
        self.horizontal_flip, self.fill_mode, self.seed = horizontal_flip, fill_mode, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        images = ops.cast(images, self.compute_dtype)
        if not training:
            return images
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]

        def uniform(low, high):
            return keras.random.uniform((batch,), low, high, seed=self.seed_generator)

        theta = uniform(-1.0, 1.0) * math.radians(self.rotation)
        shear = uniform(-1.0, 1.0) * math.radians(self.shear)
        zoom_x = uniform(1.0 - self.zoom, 1.0 + self.zoom)
        zoom_y = uniform(1.0 - self.zoom, 1.0 + self.zoom)
        shift_x = uniform(-self.shift, self.shift) * ops.cast(width, "float32")
        shift_y = uniform(-self.shift, self.shift) * ops.cast(height, "float32")
        flip = ops.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if self.horizontal_flip else 1.0

        # Output->input map A = Rotation @ Shear @ Zoom @ Flip, about the image centre.
        cos, sin = ops.cos(theta), ops.sin(theta)
        a00 = cos * zoom_x * flip
        a01 = (-cos * ops.sin(shear) - sin * ops.cos(shear)) * zoom_y
        a10 = sin * zoom_x * flip
        a11 = (-sin * ops.sin(shear) + cos * ops.cos(shear)) * zoom_y
        centre_x = (ops.cast(width, "float32") - 1.0) / 2.0
        centre_y = (ops.cast(height, "float32") - 1.0) / 2.0
        a02 = centre_x - a00 * centre_x - a01 * centre_y + shift_x
        a12 = centre_y - a10 * centre_x - a11 * centre_y + shift_y
        zeros = ops.zeros_like(theta)
        transform = ops.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)
        return ops.image.affine_transform(
            images, transform, interpolation="bilinear", fill_mode=self.fill_mode
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {
            "rotation": self.rotation,
            "shift": self.shift,
            "shear": self.shear,
            "zoom": self.zoom,
            "horizontal_flip": self.horizontal_flip,
            "fill_mode": self.fill_mode,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="edgeconv")
class RandomColor(keras.layers.Layer):
    """Colour jitter: each image's brightness, contrast and saturation scaled by factors drawn
    uniformly from [1 - strength, 1 + strength] (torchvision's ColorJitter, without hue), on
    0..255 pixels. Active only in training.

    The three are linear maps, so they compose into one: with b, c and s the factors, g a
    pixel's luma and m the image's mean luma, brightness then contrast then saturation is
    c*b*(s*x + (1 - s)*g) + (1 - c)*b*m, clipped to 0..255 once at the end (torchvision
    clips after each step too; this keeps an extreme pixel's excess instead).
    """

    def __init__(self, strength: float = 0.3, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.strength, self.seed = strength, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        images = ops.cast(images, self.compute_dtype)
        if not training or not self.strength:
            return images
        shape = (ops.shape(images)[0], 1, 1, 1)
        brightness, contrast, saturation = (
            keras.random.uniform(shape, 1.0 - self.strength, 1.0 + self.strength,
                                 seed=self.seed_generator) for _ in range(3))
        weights = ops.convert_to_tensor([0.299, 0.587, 0.114], dtype=self.compute_dtype)
        luma = ops.sum(images * weights, axis=-1, keepdims=True)  # ITU-R 601
        mean = ops.mean(luma, axis=(1, 2, 3), keepdims=True)
        scale = contrast * brightness
        mixed = scale * saturation * images + scale * (1.0 - saturation) * luma
        return ops.clip(mixed + (1.0 - contrast) * brightness * mean, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {"strength": self.strength, "seed": self.seed}


@keras.saving.register_keras_serializable(package="edgeconv")
class RandomErasing(keras.layers.Layer):
    """Random erasing (Zhong et al., 2017): with probability `rate`, replace one rectangle of
    2-25% of the image, aspect ratio 0.3-3.3, with random pixel values. Labels stay exact,
    unlike mixing methods. Active only in training.
    """

    def __init__(self, rate: float = 0.5, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        images = ops.cast(images, self.compute_dtype)
        if not training or not self.rate:
            return images
        shape = ops.shape(images)
        batch = shape[0]
        height, width = ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")

        def uniform(low, high):
            return keras.random.uniform((batch,), low, high, seed=self.seed_generator)

        area = uniform(0.02, 0.25) * height * width
        aspect = ops.exp(uniform(math.log(0.3), math.log(1 / 0.3)))
        half_h = ops.minimum(ops.sqrt(area * aspect), height) / 2
        half_w = ops.minimum(ops.sqrt(area / aspect), width) / 2
        centre_y = uniform(0.0, 1.0) * height
        centre_x = uniform(0.0, 1.0) * width
        erase = uniform(0.0, 1.0) < self.rate
        rows = ops.arange(shape[1], dtype="float32")[None, :, None]
        cols = ops.arange(shape[2], dtype="float32")[None, None, :]
        inside = ((ops.abs(rows + 0.5 - centre_y[:, None, None]) <= half_h[:, None, None])
                  & (ops.abs(cols + 0.5 - centre_x[:, None, None]) <= half_w[:, None, None])
                  & erase[:, None, None])
        noise = keras.random.uniform(shape, 0.0, 255.0, seed=self.seed_generator)
        return ops.where(inside[..., None], noise, images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return super().get_config() | {"rate": self.rate, "seed": self.seed}


def mix_batch(images: np.ndarray, labels: np.ndarray, num_classes: int, mixup: float,
              cutmix: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MixUp (Zhang et al., 2018) or CutMix (Yun et al., 2019) of a batch with a shuffled copy
    of itself, one mixing ratio per batch; with both on, each batch takes one of the two.

    Returns the images (float32 for MixUp, uint8 for CutMix) and soft targets: the share of
    class 1 for two classes (a sigmoid's target), else one row of class shares per image.
    """
    if num_classes == 2:
        targets = labels.astype(np.float32).reshape(-1)
    else:
        targets = np.eye(num_classes, dtype=np.float32)[labels.astype(np.int64).reshape(-1)]
    partner = rng.permutation(len(images))
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    share = float(rng.beta(alpha, alpha))  # of the image's own content
    if use_cutmix:
        height, width = images.shape[1:3]
        cut_h, cut_w = height * math.sqrt(1 - share), width * math.sqrt(1 - share)
        centre_y, centre_x = rng.uniform(0, height), rng.uniform(0, width)
        top, bottom = (int(np.clip(round(centre_y + d * cut_h / 2), 0, height)) for d in (-1, 1))
        left, right = (int(np.clip(round(centre_x + d * cut_w / 2), 0, width)) for d in (-1, 1))
        mixed = images.copy()
        mixed[:, top:bottom, left:right] = images[partner, top:bottom, left:right]
        share = 1 - (bottom - top) * (right - left) / (height * width)  # the box as it fell
    else:
        mixed = share * images.astype(np.float32) + (1 - share) * images[partner].astype(
            np.float32)
    return mixed, share * targets + (1 - share) * targets[partner]


@keras.saving.register_keras_serializable(package="edgeconv")
def label_accuracy(y_true, y_pred):
    """Accuracy against each target's largest class share: plain labels or mixed ones."""
    if y_pred.shape[-1] == 1:  # a sigmoid: the target is the share of class 1
        truth = ops.reshape(ops.cast(y_true, "float32"), (-1,)) > 0.5
        return ops.cast(ops.equal(truth, ops.reshape(y_pred, (-1,)) > 0.5), "float32")
    if len(y_true.shape) == 2 and y_true.shape[-1] == y_pred.shape[-1]:
        truth = ops.argmax(y_true, axis=-1)
    else:
        truth = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.cast(ops.equal(ops.cast(truth, "int32"),
                              ops.cast(ops.argmax(y_pred, axis=-1), "int32")), "float32")
