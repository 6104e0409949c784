"""Data augmentation as one Keras layer, so it runs on the accelerator with the model.

The seed's ImageDataGenerator draws rotation, shift, shear, zoom and flip for each image and
applies them as ONE affine warp. Chaining Keras's RandomRotation/Translation/Zoom layers would
resample every image three times; this layer composes the same random transform and
resamples once, with the generator's "nearest" fill.
"""

from __future__ import annotations

import math

import keras
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
