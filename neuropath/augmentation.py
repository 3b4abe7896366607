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

__all__ = ["RandomFlipRotateZoom", "equal_channels"]


def equal_channels(images):
    """Whether all channels of ``images`` (``(..., channels)``) are equal.

    Each channel is compared with the first, exactly and in the images' own
    dtype: on the uint8 pixels of a decoded file, before any conversion to
    float, this is the cheapest test.
    """
    first, *others = ops.unstack(images, axis=-1)
    if not others:
        return ops.convert_to_tensor(True)
    same = ops.equal(first, others[0])
    for other in others[1:]:
        same = ops.logical_and(same, ops.equal(first, other))
    return ops.all(same)


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
        transform = self.inverse_maps(batch, height, width)

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
        grey = equal_channels(images)
        return ops.cond(
            grey,
            lambda: ops.repeat(warp(images[..., :1]), channels, axis=-1),
            lambda: warp(images),
        )

    def inverse_maps(self, batch, height, width, draws=None):
        """Random draws of the augmentation, as maps from output to input pixels.

        Args:
            batch: how many maps to draw.
            height: rows of the images.
            width: columns of the images.
            draws: optional uniform numbers in [0, 1), shape ``(batch, 3)``,
                for the rotation, the zoom and the flip, in that order; drawn
                from the layer's seed generator when omitted. A ``tf.data``
                pipeline passes stateless draws: the generator's state is a
                variable, costly to update once per image.

        Returns:
            float32 coefficients ``(batch, 8)`` in the layout of
            ``keras.ops.image.affine_transform``: output pixel ``(x, y)``
            samples the input at ``(a0 x + a1 y + a2, b0 x + b1 y + b2)``.
        """
        if draws is None:
            draws = keras.random.uniform((batch, 3), seed=self.seed_generator)
        draws = ops.cast(draws, "float32")
        limit = self.rotation_degrees * math.pi / 180.0
        angle = (2.0 * draws[:, 0] - 1.0) * limit
        scale = 1.0 + (2.0 * draws[:, 1] - 1.0) * self.zoom
        flip = ops.ones_like(angle)
        if self.horizontal_flip:
            flip = ops.where(draws[:, 2] < 0.5, -1.0, 1.0)
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        # input = centre + zoom * rotation * flip * (output - centre)
        a0, a1 = cos * flip, -sin
        b0, b1 = sin * flip, cos
        cx = (ops.cast(width, "float32") - 1.0) / 2.0
        cy = (ops.cast(height, "float32") - 1.0) / 2.0
        a2 = cx - a0 * cx - a1 * cy
        b2 = cy - b0 * cx - b1 * cy
        zeros = ops.zeros_like(angle)
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
