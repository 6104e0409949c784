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
