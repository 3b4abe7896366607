"""The fused flip, rotation and zoom layer: geometry and randomness."""

from __future__ import annotations

import math

import numpy as np

from neuropath.augmentation import RandomFlipRotateZoom, equal_channels
from neuropath.dataset import make_augmentation

SIZE = 65  # an odd side puts the centre on a pixel
CENTRE = (SIZE - 1) / 2


def _dots(batch: int, offset: int) -> np.ndarray:
    """Images with one bright 3x3 dot ``offset`` pixels right of the centre."""
    images = np.zeros((batch, SIZE, SIZE, 1), dtype="float32")
    row, col = int(CENTRE), int(CENTRE) + offset
    images[:, row - 1 : row + 2, col - 1 : col + 2] = 255.0
    return images


def _dot_positions(images: np.ndarray) -> np.ndarray:
    """The centre of mass of each image, as ``(row, col)``."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    weights = images[..., 0] / images[..., 0].sum(axis=(1, 2), keepdims=True)
    return np.stack(
        [(weights * rows).sum(axis=(1, 2)), (weights * cols).sum(axis=(1, 2))], 1
    )


def test_outside_training_the_images_pass_unchanged():
    images = _dots(2, 10)
    layer = RandomFlipRotateZoom(seed=0)
    np.testing.assert_array_equal(layer(images, training=False), images)


def test_flip_alone_mirrors_about_half_of_the_images_exactly():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    layer = RandomFlipRotateZoom(rotation_degrees=0, zoom=0, seed=3)
    out = np.asarray(layer(images, training=True))
    same = [np.allclose(o, i, atol=1e-3) for o, i in zip(out, images, strict=True)]
    mirrored = [
        np.allclose(o, i[:, ::-1], atol=1e-3) for o, i in zip(out, images, strict=True)
    ]
    assert all(s != m for s, m in zip(same, mirrored, strict=True))
    assert 16 <= sum(mirrored) <= 48


def test_a_dot_moves_within_the_rotation_and_zoom_limits():
    offset, degrees, zoom = 20, 20.0, 0.10
    layer = RandomFlipRotateZoom(degrees, zoom, horizontal_flip=True, seed=7)
    out = np.asarray(layer(_dots(256, offset), training=True))
    rows, cols = _dot_positions(out).T
    dy, dx = rows - CENTRE, cols - CENTRE
    radius = np.hypot(dy, dx)
    # Angle from the right-hand axis, or from the left one when flipped.
    angle = np.degrees(np.arctan2(dy, np.abs(dx)))
    assert np.all(np.abs(angle) <= degrees + 1.0)
    # The map samples the input at zoom times the distance: the dot lands at
    # the offset divided by the zoom factor.
    assert radius.min() >= offset / (1 + zoom) - 0.5
    assert radius.max() <= offset / (1 - zoom) + 0.5
    # The draws spread over the ranges and both sides.
    assert np.ptp(angle) > degrees and np.ptp(radius) > 2.0
    assert 0.3 < np.mean(dx < 0) < 0.7


def test_make_augmentation_is_one_fused_layer_or_none():
    layers = make_augmentation(10, 0.05, True, seed=1).layers
    assert len(layers) == 1 and isinstance(layers[0], RandomFlipRotateZoom)
    assert layers[0].rotation_degrees == 10 and math.isclose(layers[0].zoom, 0.05)
    assert make_augmentation(0, 0, False).layers == []


def test_greyscale_and_colour_batches_get_the_same_warp_per_channel():
    rng = np.random.default_rng(1)
    grey = rng.uniform(0, 255, (8, 24, 24, 1)).astype("float32")
    colour = np.concatenate([grey, grey[:, ::-1], grey[:, :, ::-1]], axis=-1)

    def warp(images):
        return np.asarray(RandomFlipRotateZoom(20, 0.1, seed=5)(images, training=True))

    reference = warp(grey)
    # A greyscale batch in three channels takes the one-channel warp, copied.
    np.testing.assert_array_equal(
        warp(np.repeat(grey, 3, axis=-1)), reference.repeat(3, -1)
    )
    # A colour batch warps every channel with the same maps.
    out = warp(colour)
    assert not np.allclose(out[..., 0], out[..., 1])
    for channel in range(3):
        np.testing.assert_allclose(
            out[..., channel : channel + 1],
            warp(colour[..., channel : channel + 1]),
            atol=1e-3,
        )


def test_equal_channels_is_exact_for_fractional_pixels():
    rng = np.random.default_rng(4)
    grey = rng.uniform(0, 255, (2, 20, 30, 1)).astype("float32")
    images = np.repeat(grey, 3, axis=-1)
    assert bool(equal_channels(images))
    # The smallest change of one channel of one pixel is seen.
    for channel in range(3):
        changed = images.copy()
        changed[1, 7, 11, channel] = np.nextafter(changed[1, 7, 11, channel], 256)
        assert not bool(equal_channels(changed))
    assert bool(equal_channels(grey))
