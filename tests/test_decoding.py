"""JPEG decoding at a reduced DCT scale, checked against full-size decoding."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, save_image
from PIL import Image

from neuropath.dataset import load_image, make_dataset, plain_jpeg_flags, shared_flag
from neuropath.image_files import read_image, tensorflow_decodes_exactly


@pytest.mark.parametrize(
    "height, width, size, scale",
    [
        (630, 630, 224, 2),  # 315 px still covers 224; 158 would not
        (630, 630, 48, 8),
        (630, 512, 79, 4),  # 1/8 would need 8 x 79 = 632 px
        (630, 512, 80, 4),
        (100, 50, 224, 1),  # smaller than the target: full size
        (50, 400, 100, 4),  # the longer side counts, whichever it is
    ],
)
def test_jpeg_is_decoded_at_the_largest_scale_that_keeps_the_longer_side(
    tmp_path, height, width, size, scale
):
    path = save_image(tmp_path / "slice.jpg", gradient_image(height, width, 3))
    image = read_image(path, reduce_to=size)
    # A partly covered last row or column of blocks is cropped.
    assert image.shape == (height // scale, width // scale, 3)
    assert image.dtype == np.uint8
    assert read_image(path).shape == (height, width, 3)


def _real_jpegs(real_sample, count=6):
    return sorted(real_sample.rglob("*.jpg"))[:count]


def test_real_jpeg_is_decoded_at_the_reduced_size(real_sample):
    path = _real_jpegs(real_sample, 1)[0]
    width, height = Image.open(path).size
    image = read_image(path, reduce_to=48)
    assert image.shape == (height // 8, width // 8, 3)


def _errors(real_sample, size):
    """Mean absolute difference from the area-averaged full-size image, of the
    reduced decoding and of full decoding with the plain bilinear resize."""
    reduced, bilinear, correlations = [], [], []
    for path in _real_jpegs(real_sample):
        fast = load_image(tf.constant(str(path)), size).numpy()
        with Image.open(path) as opened:
            full = np.asarray(opened.convert("RGB"))
        # Area averaging is what a DCT scale approximates.
        area = tf.image.resize_with_pad(full, size, size, method="area").numpy()
        plain = tf.image.resize_with_pad(full, size, size).numpy()
        assert fast.shape == area.shape == (size, size, 3)
        reduced.append(np.abs(fast - area).mean())
        bilinear.append(np.abs(plain - area).mean())
        correlations.append(np.corrcoef(fast.ravel(), area.ravel())[0, 1])
    return np.array(reduced), np.array(bilinear), np.array(correlations)


def test_reduced_decoding_at_224_px_matches_the_full_size_picture(real_sample):
    reduced, _, correlations = _errors(real_sample, 224)
    assert reduced.max() < 2.0, reduced
    assert correlations.min() > 0.99, correlations


def test_reduced_decoding_at_48_px_is_as_close_as_full_decoding(real_sample):
    reduced, bilinear, _ = _errors(real_sample, 48)
    # Fine detail aliases at 48 px either way; on average neither is worse.
    assert reduced.mean() < 1.5 * bilinear.mean(), (reduced, bilinear)


def test_other_formats_are_decoded_at_full_size(tmp_path):
    path = save_image(tmp_path / "slice.png", gradient_image(300, 200, 3))
    image = read_image(path, reduce_to=32)
    assert image.shape == (300, 200, 3)
    np.testing.assert_array_equal(image, gradient_image(300, 200, 3))


def _noisy_slice(height, width, channels, seed=0):
    """A ramp with noise: content in every DCT frequency, as real slices have."""
    rng = np.random.default_rng(seed)
    ramp = gradient_image(height, width, channels).astype(np.int16)
    noise = rng.integers(-40, 40, ramp.shape)
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "height, width, size",
    [(630, 630, 224), (630, 512, 79), (630, 630, 48), (100, 50, 224), (50, 400, 100)],
)
@pytest.mark.parametrize("channels", [None, 3])
def test_tensorflow_decodes_a_plain_jpeg_to_the_pillow_pixels(
    tmp_path, height, width, size, channels
):
    pixels = _noisy_slice(height, width, channels)
    path = save_image(tmp_path / "slice.jpg", pixels, quality=90)
    assert tensorflow_decodes_exactly(path)
    name = tf.constant(str(path))
    with_pillow = load_image(name, size, plain_jpeg=False).numpy()
    np.testing.assert_array_equal(load_image(name, size, plain_jpeg=True), with_pillow)
    np.testing.assert_array_equal(
        load_image(name, size, plain_jpeg=tf.constant(True)), with_pillow
    )


def test_real_jpegs_are_plain_and_decode_alike_both_ways(real_sample):
    paths = sorted(p for p in real_sample.rglob("*") if p.suffix in (".jpg", ".jpeg"))
    assert len(paths) > 100 and all(plain_jpeg_flags([str(p) for p in paths]))
    for path in paths[::7]:
        name = tf.constant(str(path))
        for size in (224, 48):
            np.testing.assert_array_equal(
                load_image(name, size, plain_jpeg=True),
                load_image(name, size, plain_jpeg=False),
            )


def test_files_tensorflow_would_decode_differently_are_not_plain(tmp_path):
    grey = _noisy_slice(80, 60, None)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, to be turned 90 degrees
    rotated = save_image(tmp_path / "rotated.jpg", grey, exif=exif)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(_noisy_slice(80, 60, 3)).convert("CMYK").save(cmyk)
    png = save_image(tmp_path / "slice.png", grey)
    deep = tmp_path / "deep.png"
    Image.fromarray(grey.astype(np.uint16) * 200).save(deep)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    upright = save_image(tmp_path / "upright.jpg", grey)
    names = [rotated, cmyk, png, deep, text, tmp_path / "missing.jpg", upright]

    assert plain_jpeg_flags([str(p) for p in names]) == [False] * 6 + [True]
    # The pipeline turns the EXIF-rotated file, as read_image does.
    (image, _), *_ = make_dataset([str(rotated)], [0], 17, 48, 1).unbatch()
    np.testing.assert_array_equal(image, load_image(tf.constant(str(rotated)), 48))
    assert read_image(rotated).shape == (60, 80, 3)


def test_files_past_the_size_guards_are_left_to_pillow(tmp_path, monkeypatch):
    path = save_image(tmp_path / "slice.jpg", _noisy_slice(80, 60, None))
    tiny = save_image(tmp_path / "icon.jpg", _noisy_slice(16, 16, None))
    assert plain_jpeg_flags([str(path), str(tiny)]) == [True, False]
    # A smaller bomb limit: the same file is now past it, and read_image says so.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert not tensorflow_decodes_exactly(path)
    with pytest.raises(ValueError, match="decompression bomb guard"):
        read_image(path)


def test_one_decoder_for_all_files_or_a_choice_per_file(tmp_path):
    jpeg = save_image(tmp_path / "a.jpg", _noisy_slice(70, 50, None))
    png = save_image(tmp_path / "b.png", gradient_image(60, 80, 3))
    assert shared_flag([True, True]) is True
    assert shared_flag([False]) is False
    assert shared_flag([True, False]) is None
    alone = {str(p): load_image(tf.constant(str(p)), 32).numpy() for p in (jpeg, png)}
    # Mixed files take the per-file choice; a single kind takes its decoder.
    for files in ([jpeg, png], [jpeg], [png]):
        dataset = make_dataset(files, [0] * len(files), 17, 32, 4)
        images = next(iter(dataset))[0].numpy()
        for image, path in zip(images, files, strict=True):
            np.testing.assert_array_equal(image, alone[str(path)])
