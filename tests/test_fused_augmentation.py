"""The augmentation applied in the resampling that resizes each image."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, save_image

from neuropath.augmentation import RandomFlipRotateZoom
from neuropath.dataset import (
    load_image,
    make_augmentation,
    make_dataset,
    plain_jpeg_flags,
    resize_with_pad_and_warp,
)

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def _mirror(size: int) -> list[float]:
    return [-1.0, 0.0, size - 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def _rotation_zoom_flip(size: int, degrees: float, zoom: float) -> list[float]:
    """A map drawn by hand: the layer's draws for this rotation, zoom and a flip."""
    layer = RandomFlipRotateZoom(rotation_degrees=30, zoom=0.2)
    draws = [[(degrees / 30 + 1) / 2, (zoom / 0.2 + 1) / 2, 0.25]]
    return keras.ops.convert_to_numpy(layer.inverse_maps(1, size, size, draws))[0]


def _files(real_sample, tmp_path):
    """Real JPEGs, greyscale and RGB, non-square ones among them, and a PNG
    (decoded by Pillow rather than tf.io), all larger than the output."""
    jpegs = sorted(real_sample.rglob("*.jpg"))[::9]
    png = save_image(tmp_path / "slice.png", gradient_image(300, 420, 3))
    return [str(p) for p in jpegs] + [str(png)]


@pytest.mark.parametrize("size", [48, 224])
def test_identity_and_mirror_warps_give_the_resized_image(real_sample, tmp_path, size):
    files = _files(real_sample, tmp_path)
    for path, plain in zip(files, plain_jpeg_flags(files), strict=True):
        resized = load_image(tf.constant(path), size, plain).numpy()
        same = load_image(tf.constant(path), size, plain, IDENTITY).numpy()
        mirrored = load_image(tf.constant(path), size, plain, _mirror(size)).numpy()
        # Float rounding of the composed map only: far below one grey level.
        np.testing.assert_allclose(same, resized, atol=0.01, err_msg=path)
        np.testing.assert_allclose(mirrored, resized[:, ::-1], atol=0.01, err_msg=path)


def test_an_enlarged_image_differs_from_the_resize_only_in_its_edge_pixels(tmp_path):
    # 60 x 80 px enlarged to 168 x 224, padded by 28 rows above and below.
    path = str(save_image(tmp_path / "small.png", gradient_image(60, 80) + 40))
    resized = load_image(tf.constant(path), 224).numpy()
    same = load_image(tf.constant(path), 224, False, IDENTITY).numpy()
    np.testing.assert_allclose(same[30:194, 2:222], resized[30:194, 2:222], atol=0.01)
    # At the edges the resize repeats the last pixel; one resampling fades it
    # into the black padding instead, over less than two output pixels.
    np.testing.assert_array_equal(same[:27], 0)
    np.testing.assert_array_equal(same[197:], 0)
    assert np.all(same[28:196] <= resized[28:196] + 0.01)


def test_one_resampling_matches_resizing_then_warping_a_smooth_image():
    # On a linear ramp bilinear interpolation is exact, so one resampling and
    # two agree wherever both stay inside the image; a wrong composition
    # (order, centre, half-pixel offsets) would move the ramp by whole levels.
    height, width, size = 150, 110, 64
    rows, columns = np.mgrid[0:height, 0:width].astype("float32")
    ramp = (1.3 * columns + 0.7 * rows + 5.0)[..., np.newaxis]
    warp = _rotation_zoom_flip(size, degrees=17.0, zoom=0.12)

    fused = resize_with_pad_and_warp(ramp, size, warp).numpy()
    resized = tf.image.resize_with_pad(ramp, size, size)
    twice = keras.ops.image.affine_transform(resized[tf.newaxis], warp[np.newaxis])
    ones = np.ones_like(ramp)
    inside = (resize_with_pad_and_warp(ones, size, warp).numpy()[..., 0] > 1 - 1e-5) & (
        keras.ops.image.affine_transform(
            tf.image.resize_with_pad(ones, size, size)[tf.newaxis], warp[np.newaxis]
        ).numpy()[0, ..., 0]
        > 1 - 1e-5
    )
    assert inside.mean() > 0.5
    difference = np.abs(fused[..., 0] - twice.numpy()[0, ..., 0])[inside]
    assert difference.max() < 0.02
    # The map did move the picture: it is neither the resized image nor its mirror.
    assert np.abs(fused[..., 0] - resized.numpy()[..., 0])[inside].mean() > 5


def test_grey_pixels_in_three_channels_are_warped_once_and_colour_keeps_its_channels():
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (70, 90, 1), dtype=np.uint8)
    warp = _rotation_zoom_flip(48, degrees=-9.0, zoom=0.05)
    from_one = resize_with_pad_and_warp(grey, 48, warp).numpy()
    from_three = resize_with_pad_and_warp(np.repeat(grey, 3, axis=-1), 48, warp).numpy()
    np.testing.assert_array_equal(from_one, from_three)
    assert np.array_equal(from_one[..., 0], from_one[..., 2])

    # One blue pixel makes the image colour: each channel is warped as itself.
    colour = np.repeat(grey, 3, axis=-1)
    colour[35, 45, 2] = 255 - colour[35, 45, 2]
    warped = resize_with_pad_and_warp(colour, 48, warp).numpy()
    np.testing.assert_array_equal(warped[..., :2], from_one[..., :2])
    assert not np.array_equal(warped[..., 2], from_one[..., 2])
    for channel in range(3):
        alone = resize_with_pad_and_warp(colour[..., channel : channel + 1], 48, warp)
        np.testing.assert_allclose(warped[..., channel], alone.numpy()[..., 0])


def test_the_layers_draws_set_the_rotation_the_zoom_and_the_flip():
    layer = RandomFlipRotateZoom(rotation_degrees=20, zoom=0.1)
    draws = [[0.5, 0.5, 0.75], [0.5, 0.5, 0.25], [1.0, 0.5, 0.75], [0.5, 0.0, 0.75]]
    maps = keras.ops.convert_to_numpy(layer.inverse_maps(4, 9, 9, draws))
    np.testing.assert_allclose(maps[0], IDENTITY, atol=1e-6)
    np.testing.assert_allclose(maps[1], _mirror(9), atol=1e-6)
    # The largest rotation: the sampled direction turns by 20 degrees.
    assert math.isclose(
        math.degrees(math.atan2(maps[2][3], maps[2][0])), 20, rel_tol=1e-5
    )
    # The largest zoom-in samples 0.9 input pixels per output pixel.
    np.testing.assert_allclose(maps[3][[0, 4]], [0.9, 0.9], rtol=1e-6)


def _epoch(dataset) -> dict[int, np.ndarray]:
    """The epoch's images by label (one image per label)."""
    images = {}
    for batch, labels in dataset:
        for image, label in zip(
            batch.numpy(), labels.numpy().argmax(axis=1), strict=True
        ):
            images[int(label)] = image
    return images


def test_uncached_augmentation_follows_the_seed_and_changes_every_epoch(tmp_path):
    paths = [
        save_image(tmp_path / f"{i}.png", gradient_image(40 + 3 * i, 50, 3))
        for i in range(6)
    ]

    def pipeline(seed):
        return make_dataset(
            paths,
            list(range(6)),
            17,
            32,
            4,
            training=True,
            augmentation=make_augmentation(15, 0.1, True),
            seed=seed,
        )

    first, again, other = pipeline(1), pipeline(1), pipeline(2)
    epoch_1, epoch_2 = _epoch(first), _epoch(first)
    repeated = _epoch(again)
    for label in range(6):
        np.testing.assert_array_equal(epoch_1[label], repeated[label])
    assert any(not np.array_equal(epoch_1[k], epoch_2[k]) for k in range(6))
    other_1 = _epoch(other)
    assert any(not np.array_equal(epoch_1[k], other_1[k]) for k in range(6))
