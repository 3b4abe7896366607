"""Throughput of the input pipeline against its bounds and a naive loader.

The *decode bound* is the rate at which ``tf.data`` decodes and resizes the
files on all cores and does nothing else. The *naive loader* is a
``keras.utils.PyDataset`` that opens each file with Pillow and augments it
one image at a time in Python: with SciPy's ``ndimage.affine_transform`` on
the NumPy array (the recipe of Keras 2's ``ImageDataGenerator``) or with
Pillow's own resampling. Rates are images per second.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import keras
import numpy as np
import scipy.ndimage
import tensorflow as tf
from PIL import Image

from neuropath.dataset import load_image, plain_jpeg_flags, shared_flag

__all__ = [
    "NaiveLoader",
    "decode_bound_dataset",
    "images_per_second",
    "interleaved_rates",
    "naive_batches",
    "repeat_to",
    "round_ratios",
]


def repeat_to(items: Sequence, count: int) -> list:
    """``items`` repeated in order until there are ``count`` of them."""
    if not items:
        raise ValueError("Nothing to repeat: the list of files is empty.")
    return [items[i % len(items)] for i in range(count)]


def images_per_second(batches: Iterable) -> float:
    """Iterates ``batches`` of ``(images, labels)`` to the end; images per second.

    The clock runs from the creation of the iterator, so a pipeline's
    start-up counts against it, to the last batch. It stops before the
    iterator is torn down: a ``tf.data`` iterator's destructor waits for its
    tuning thread to wake, which took up to 1.2 s here and is no part of
    the throughput.
    """
    started, count = time.perf_counter(), 0
    iterator = iter(batches)
    for images, _ in iterator:
        count += len(images)
    elapsed = time.perf_counter() - started
    del iterator
    return count / elapsed


def interleaved_rates(
    measurements: Mapping[str, Callable[[], float]], repeats: int
) -> dict[str, list[float]]:
    """Each of ``measurements`` called ``repeats`` times, in rounds of one call each.

    Taking turns, rather than repeating one measurement before the next, lets
    a slow spell of a shared machine fall on all of them alike, so their
    ratios stay fair.

    Returns:
        The rates of each measurement's calls, in the order they ran.
    """
    rates = {key: [] for key in measurements}
    for _ in range(repeats):
        for key, measure in measurements.items():
            rates[key].append(measure())
    return rates


def round_ratios(
    numerators: Sequence[float], denominators: Sequence[Sequence[float]]
) -> list[float]:
    """Round by round, a rate over the fastest of the rates it is compared with.

    Args:
        numerators: one rate per round, from `interleaved_rates`.
        denominators: the rates to compare with, each a list of one rate per
            round; the fastest of them in each round is the denominator.

    Returns:
        One ratio per round. A ratio within a round compares two measurements
        that ran a few seconds apart, under the same load of the machine.
    """
    rounds = len(numerators)
    if not denominators or any(len(rates) != rounds for rates in denominators):
        raise ValueError(
            f"Every denominator needs one rate for each of the {rounds} rounds; "
            f"received {[len(rates) for rates in denominators]} rates."
        )
    return [
        numerator / max(rates[i] for rates in denominators)
        for i, numerator in enumerate(numerators)
    ]


def decode_bound_dataset(
    paths: Sequence[str],
    image_size: int,
    batch_size: int,
    full_size: bool = False,
) -> tf.data.Dataset:
    """Decoding and resizing alone, in parallel on all cores.

    Args:
        paths: image files.
        image_size: side of the square output.
        batch_size: images per batch.
        full_size: decode every file at full size first (``decode_image``), as
            a plain pipeline does, instead of the product's `load_image`.

    Returns:
        Batches of ``(images, zeros)``.
    """

    def decode(path, plain):
        plain = plain if every is None else every
        if full_size:
            image = tf.io.decode_image(
                tf.io.read_file(path), channels=3, expand_animations=False
            )
            return tf.image.resize_with_pad(image, image_size, image_size)
        return load_image(path, image_size, plain)

    names = [str(p) for p in paths]
    flags = plain_jpeg_flags(names)
    every = shared_flag(flags)  # as in `make_dataset`
    dataset = tf.data.Dataset.from_tensor_slices((names, flags))
    dataset = dataset.map(
        lambda path, plain: (decode(path, plain), 0),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class NaiveLoader(keras.utils.PyDataset):
    """Batches read with Pillow and augmented one image at a time.

    Each image is padded to a square, resized, then (when ``augment``) flipped
    left-right at random, rotated by up to ``rotation_degrees`` and zoomed by
    up to ``zoom``, with black fill: the product's training augmentation done
    per image on the CPU, either as one bilinear affine map of the NumPy array
    (``augment_with="numpy"``, SciPy) or as three Pillow operations
    (``"pillow"``).

    Args:
        paths: image files.
        labels: one-hot labels, shape ``(n, classes)``.
        image_size: side of the square output.
        batch_size: images per batch.
        augment: apply the random flip, rotation and zoom.
        rotation_degrees: largest rotation either way.
        zoom: largest zoom in or out, as a fraction of the side.
        seed: seed of the augmentation.
        augment_with: ``"numpy"`` or ``"pillow"``.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        image_size: int,
        batch_size: int,
        augment: bool = False,
        rotation_degrees: float = 20.0,
        zoom: float = 0.1,
        seed: int = 0,
        augment_with: str = "numpy",
    ):
        super().__init__()
        if augment_with not in ("numpy", "pillow"):
            raise ValueError(
                f"augment_with must be 'numpy' or 'pillow'; received {augment_with!r}."
            )
        self.augment_with = augment_with
        self.paths, self.labels = [str(p) for p in paths], np.asarray(labels)
        self.image_size, self.batch_size = image_size, batch_size
        self.augment = augment
        self.rotation_degrees, self.zoom = rotation_degrees, zoom
        self.seed = seed

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, index))
        chosen = slice(index * self.batch_size, (index + 1) * self.batch_size)
        images = [self._load(path, rng) for path in self.paths[chosen]]
        return np.stack(images), self.labels[chosen]

    def _load(self, path: str, rng: np.random.Generator) -> np.ndarray:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        side = max(image.size)
        square = Image.new("RGB", (side, side))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        size = self.image_size
        square = square.resize((size, size), Image.Resampling.BILINEAR)
        if not self.augment:
            return np.asarray(square, dtype=np.float32)
        flip = rng.random() < 0.5
        angle = rng.uniform(-self.rotation_degrees, self.rotation_degrees)
        factor = 1.0 + rng.uniform(-self.zoom, self.zoom)
        if self.augment_with == "numpy":
            return _affine_numpy(np.asarray(square, np.float32), flip, angle, factor)
        square = square.rotate(angle, Image.Resampling.BILINEAR, fillcolor=0)
        if flip:
            square = square.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(_zoom(square, factor), dtype=np.float32)


def _affine_numpy(
    image: np.ndarray, flip: bool, degrees: float, factor: float
) -> np.ndarray:
    """Flip, rotation and zoom about the centre as one bilinear map, black fill.

    ``image`` has shape ``(height, width, channels)``; an output pixel samples
    the input at ``centre + factor * rotation * flip * (pixel - centre)``.
    """
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) * factor, math.sin(angle) * factor
    mirror = -1.0 if flip else 1.0
    # Rows and columns of the input per row and column of the output.
    matrix = np.array(
        [[cos, sin * mirror, 0.0], [-sin, cos * mirror, 0.0], [0.0, 0.0, 1.0]]
    )
    centre = np.array([(image.shape[0] - 1) / 2, (image.shape[1] - 1) / 2, 0.0])
    offset = centre - matrix @ centre
    return scipy.ndimage.affine_transform(
        image, matrix, offset, order=1, mode="constant", cval=0.0
    )


def _zoom(image: Image.Image, factor: float) -> Image.Image:
    """Scales about the centre, cropping or padding with black to keep the size."""
    size = image.width
    scaled = max(1, round(size * factor))
    resized = image.resize((scaled, scaled), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size))
    offset = (size - scaled) // 2
    canvas.paste(resized, (offset, offset))
    return canvas


def naive_batches(loader: NaiveLoader, workers: int = 1) -> Iterable:
    """The loader's batches in order, read by ``workers`` threads at once, as
    Keras' ``PyDataset`` workers would."""
    if workers <= 1:
        return (loader[i] for i in range(len(loader)))
    pool = concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count())
    return _closing(pool, pool.map(loader.__getitem__, range(len(loader))))


def _closing(pool: concurrent.futures.Executor, batches: Iterable) -> Iterable:
    try:
        yield from batches
    finally:
        pool.shutdown()
