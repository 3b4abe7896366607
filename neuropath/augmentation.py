"""The training augmentation as one Keras layer: flip, rotation and zoom at once.

Keras' `RandomFlip`, `RandomRotation` and `RandomZoom` resample a batch once
each. Composed into a single affine map per image, the three cost one
resampling, a third of the work, with the same random distribution: a
left-right flip with probability 1/2, a rotation uniform in
``[-rotation_degrees, rotation_degrees]`` and a zoom by a factor uniform in
``[1 - zoom, 1 + zoom]``, all about the image centre, with black fill.
"""

from __future__ import annotations

import math

import keras
from keras import ops

__all__ = ["RandomFlipRotateZoom"]


class RandomFlipRotateZoom(keras.layers.Layer):
    """Random left-right flip, rotation and zoom, applied as one resampling.

    Args:
        rotation_degrees: largest rotation either way, in degrees.
        zoom: largest zoom in or out, a fraction of the side (0.1: 90-110%).
        horizontal_flip: flip half of the images left-right.
        seed: seed of the random draws.
        interpolation: ``"bilinear"`` or ``"nearest"``.

    Call arguments:
        images: float pixels, shape ``(batch, height, width, channels)``.
        training: augment only when true; otherwise return ``images``.

    Example:

    >>> layer = RandomFlipRotateZoom(rotation_degrees=20, zoom=0.1, seed=1)
    >>> layer(np.zeros((8, 224, 224, 3)), training=True).shape
    (8, 224, 224, 3)
    """

    def __init__(
        self,
        rotation_degrees: float = 20.0,
        zoom: float = 0.1,
        horizontal_flip: bool = True,
        seed: int | None = None,
        interpolation: str = "bilinear",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if rotation_degrees < 0 or not 0 <= zoom < 1:
            raise ValueError(
                "rotation_degrees must be >= 0 and zoom in [0, 1); received "
                f"{rotation_degrees!r} and {zoom!r}."
            )
        self.rotation_degrees = float(rotation_degrees)
        self.zoom = float(zoom)
        self.horizontal_flip = bool(horizontal_flip)
        self.seed = seed
        self.interpolation = interpolation
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        transform = self._inverse_maps(batch, height, width)

        def warp(pixels):
            return ops.image.affine_transform(
                pixels,
                transform,
                interpolation=self.interpolation,
                fill_mode="constant",
                fill_value=0,
            )

        channels = images.shape[-1]
        if channels is None or channels == 1:
            return warp(images)
        # MRI slices arrive as greyscale copied to three channels. Each channel
        # is resampled on its own, so such a batch is warped once and copied:
        # the same pixels for a third of the work.
        grey = ops.all(ops.equal(images, images[..., :1]))
        return ops.cond(
            grey,
            lambda: ops.repeat(warp(images[..., :1]), channels, axis=-1),
            lambda: warp(images),
        )

    def _inverse_maps(self, batch, height, width):
        """Per image, the 8 coefficients mapping output pixels to input ones."""
        limit = self.rotation_degrees * math.pi / 180.0
        angle = keras.random.uniform((batch,), -limit, limit, seed=self.seed_generator)
        scale = keras.random.uniform(
            (batch,), 1.0 - self.zoom, 1.0 + self.zoom, seed=self.seed_generator
        )
        flip = ops.ones((batch,))
        if self.horizontal_flip:
            coin = keras.random.uniform((batch,), seed=self.seed_generator)
            flip = ops.where(coin < 0.5, -1.0, 1.0)
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        # input = centre + zoom * rotation * flip * (output - centre)
        a0, a1 = cos * flip, -sin
        b0, b1 = sin * flip, cos
        cx = (ops.cast(width, "float32") - 1.0) / 2.0
        cy = (ops.cast(height, "float32") - 1.0) / 2.0
        a2 = cx - a0 * cx - a1 * cy
        b2 = cy - b0 * cx - b1 * cy
        zeros = ops.zeros((batch,))
        return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rotation_degrees": self.rotation_degrees,
            "zoom": self.zoom,
            "horizontal_flip": self.horizontal_flip,
            "seed": self.seed,
            "interpolation": self.interpolation,
        }
