"""Finding, splitting and streaming the MRI slices of a data set folder.

A *data set folder* holds one sub-folder per class (the public data set's
folder names). A *record* is one image file with its class; the *split
manifest* is a CSV assigning every record to ``train``, ``val`` or ``test``.
Images enter the model as raw RGB pixels, 0-255, padded to a square.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from neuropath.augmentation import RandomFlipRotateZoom, equal_channels
from neuropath.classes import CLASS_NAMES, canonical_class_name, short_name
from neuropath.image_files import (
    IMAGE_EXTENSIONS,
    display_path,
    is_hidden,
    iter_class_files,
    read_image,
    tensorflow_decodes_exactly,
)
from neuropath.image_files import image_problem as _image_problem

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatasetScan",
    "Record",
    "class_weights",
    "image_problem",
    "augmentation_maps",
    "decode_file",
    "fit_to_square",
    "load_image",
    "make_augmentation",
    "make_dataset",
    "plain_jpeg_flags",
    "read_manifest",
    "resize_with_pad_and_warp",
    "resize_with_pad_map",
    "scan_dataset",
    "shared_flag",
    "split_records",
    "write_manifest",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "class_name", "label", "split")
# Written by `write_manifest`, optional when reading older manifests.
GROUP_COLUMN = "duplicate_group"


@dataclasses.dataclass(frozen=True)
class Record:
    """One image file and its class.

    Attributes:
        path: the file, relative to the data set folder, with ``/`` separators.
        class_name: its canonical class name.
        split: ``"train"``, ``"val"``, ``"test"`` or ``""`` before splitting.
        duplicate_group: the near-duplicate group the image belongs to, or
            ``None`` when it has no near duplicate.
    """

    path: str
    class_name: str
    split: str = ""
    duplicate_group: int | None = None


@dataclasses.dataclass
class DatasetScan:
    """What a data set folder holds.

    Attributes:
        root: the folder scanned.
        records: usable images, sorted by class then path.
        unusable: ``(path, reason)`` for each file left out.
        unknown_folders: sub-folders that are not one of the 17 classes.
        missing_classes: classes with no usable image.
    """

    root: Path
    records: list[Record]
    unusable: list[tuple[str, str]]
    unknown_folders: list[str]
    missing_classes: list[str]

    def counts(self) -> Counter:
        """Number of usable images per class name."""
        return Counter(record.class_name for record in self.records)


def image_problem(path: str | os.PathLike) -> str | None:
    """Why an image file cannot be used, or ``None`` if it decodes.

    See `neuropath.image_files.image_problem`; a file whose name does not end
    in an image extension is not an image file.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        return f"not an image file ({suffix or 'no extension'})"
    return _image_problem(path)


def scan_dataset(
    root: str | os.PathLike,
    class_names: Sequence[str] = CLASS_NAMES,
    verify: bool = True,
    workers: int | None = None,
) -> DatasetScan:
    """Lists the images of a data set folder and checks they decode.

    Args:
        root: the data set folder.
        class_names: the classes expected, in output order.
        verify: decode each file once with Pillow and leave out failures.
        workers: threads for verification; all cores by default.

    Returns:
        The `DatasetScan`; absent classes and unknown folders are logged.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Data folder {str(root)!r} does not exist; pass a folder holding "
            "one sub-folder per class (data.data_dir or --data-dir)."
        )
    wanted = set(class_names)
    candidates, unknown = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        class_name = canonical_class_name(folder.name)
        if class_name is None or class_name not in wanted:
            if not is_hidden(folder.name):
                unknown.append(folder.name)
            continue
        for path in iter_class_files(folder):
            candidates.append(Record(path.relative_to(root).as_posix(), class_name))

    unusable = []
    if not verify:
        # Without decoding, a file is still left out for its name alone.
        unusable = [
            (r.path, image_problem(root / r.path))
            for r in candidates
            if Path(r.path).suffix.lower() not in IMAGE_EXTENSIONS
        ]
        candidates = [
            r for r in candidates if Path(r.path).suffix.lower() in IMAGE_EXTENSIONS
        ]
    elif candidates:
        with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
            problems = list(
                pool.map(image_problem, (root / r.path for r in candidates))
            )
        unusable = [(r.path, p) for r, p in zip(candidates, problems, strict=True) if p]
        candidates = [r for r, p in zip(candidates, problems, strict=True) if not p]

    order = {name: i for i, name in enumerate(class_names)}
    records = sorted(candidates, key=lambda r: (order[r.class_name], r.path))
    present = {r.class_name for r in records}
    missing = [name for name in class_names if name not in present]
    scan = DatasetScan(root, records, unusable, unknown, missing)
    _log_scan(scan, len(class_names))
    return scan


def _log_scan(scan: DatasetScan, n_classes: int) -> None:
    logger.info(
        "Found %d images in %d of %d classes under %s",
        len(scan.records),
        n_classes - len(scan.missing_classes),
        n_classes,
        scan.root,
    )
    if scan.missing_classes:
        logger.warning(
            "No images for %d class(es): %s. The model keeps all %d outputs; "
            "these classes will never be seen in training.",
            len(scan.missing_classes),
            ", ".join(short_name(name) for name in scan.missing_classes),
            n_classes,
        )
    if scan.unknown_folders:
        logger.warning(
            "Ignoring %d folder(s) that are not classes: %s",
            len(scan.unknown_folders),
            ", ".join(repr(name) for name in scan.unknown_folders),
        )
    # One summary of the unusable files is the caller's: it knows where the
    # full list goes.
    for path, reason in scan.unusable:
        logger.debug("Unusable file %s: %s", display_path(path), reason)


def split_records(
    records: Sequence[Record],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
    keep_duplicates_together: bool = True,
) -> list[Record]:
    """Assigns each record to a split, class by class.

    Each class is shuffled with ``seed`` and cut at its own proportions, so
    every split keeps the class balance; a class of three or more images has at
    least one in each held-out split that asks for any. Records sharing a
    ``duplicate_group`` go to one split together, so that a copy of a test
    image is never trained on.

    Args:
        records: the images to split.
        val_fraction: share of each class for validation.
        test_fraction: share of each class for testing.
        seed: the shuffle seed; the same seed gives the same split.
        keep_duplicates_together: keep each duplicate group inside one split;
            ``False`` splits image by image.

    Returns:
        The records with ``split`` set, in the input order.
    """
    rng = np.random.default_rng(seed)
    if keep_duplicates_together and any(r.duplicate_group is not None for r in records):
        return _split_by_group(records, val_fraction, test_fraction, rng)
    by_class: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        by_class.setdefault(record.class_name, []).append(index)

    assigned = [""] * len(records)
    for class_name in sorted(by_class):
        indices = by_class[class_name]
        order = rng.permutation(len(indices))
        n_val, n_test = _held_out_counts(len(indices), val_fraction, test_fraction)
        for rank, position in enumerate(order):
            split = (
                "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            )
            assigned[indices[position]] = split
    return [
        dataclasses.replace(r, split=s) for r, s in zip(records, assigned, strict=True)
    ]


def _split_by_group(
    records: Sequence[Record],
    val_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
) -> list[Record]:
    """Splits whole duplicate groups, filling each class's held-out quotas.

    A group counts towards the class of its first record; its members in other
    classes (the same slice labelled twice) follow it into its split.
    """
    units: dict[object, list[int]] = {}
    for index, record in enumerate(records):
        key = ("group", record.duplicate_group)
        if record.duplicate_group is None:
            key = ("image", index)
        units.setdefault(key, []).append(index)
    by_class: dict[str, list[list[int]]] = {}
    for members in units.values():
        by_class.setdefault(records[members[0]].class_name, []).append(members)

    assigned = [""] * len(records)
    for class_name in sorted(by_class):
        class_units = by_class[class_name]
        n_images = sum(len(members) for members in class_units)
        n_val, n_test = _held_out_counts(n_images, val_fraction, test_fraction)
        quota = {"val": n_val, "test": n_test, "train": n_images - n_val - n_test}
        # Largest groups first, each into the split with the most room left,
        # so that a big group cannot swamp a held-out split of two images.
        order = sorted(
            rng.permutation(len(class_units)), key=lambda p: -len(class_units[p])
        )
        splits = []
        for position in order:
            members = class_units[position]
            split = max(("val", "test", "train"), key=lambda s: quota[s])
            quota[split] -= len(members)
            splits.append(split)
        if "train" not in splits:
            # Always leave something to train on: the last held-out unit.
            splits[-1] = "train"
        for position, split in zip(order, splits, strict=True):
            for index in class_units[position]:
                assigned[index] = split
    return [
        dataclasses.replace(r, split=s) for r, s in zip(records, assigned, strict=True)
    ]


def _held_out_counts(
    n: int, val_fraction: float, test_fraction: float
) -> tuple[int, int]:
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n >= 3:
        n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    # Always leave at least one image to train on.
    while n_val + n_test >= n and n_val + n_test > 0:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def write_manifest(
    records: Iterable[Record], path: str | os.PathLike, class_names: Sequence[str]
) -> Path:
    """Writes the split manifest CSV (path, class_name, label, split, group).

    ``label`` is the class's index in ``class_names``, the model's output order;
    ``duplicate_group`` is the record's near-duplicate group, empty if none.
    File names that are not valid UTF-8 keep their bytes.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(class_names)}
    tmp = path.with_name(path.name + ".tmp")
    with open(
        tmp, "w", newline="", encoding="utf-8", errors="surrogateescape"
    ) as handle:
        writer = csv.writer(handle)
        writer.writerow((*MANIFEST_COLUMNS, GROUP_COLUMN))
        for r in records:
            group = "" if r.duplicate_group is None else r.duplicate_group
            writer.writerow([r.path, r.class_name, index[r.class_name], r.split, group])
    os.replace(tmp, path)
    return path


def read_manifest(
    path: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES
) -> list[Record]:
    """Reads a split manifest written by `write_manifest`.

    Raises:
        ValueError: a column is missing, or a row names an unknown class or
            split; the message gives the file and line.
    """
    path = Path(path)
    records = []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(
                f"Manifest {str(path)!r} lacks column(s) {sorted(missing)}; "
                f"expected {list(MANIFEST_COLUMNS)}."
            )
        for line, row in enumerate(reader, start=2):
            class_name = canonical_class_name(row["class_name"])
            if class_name not in class_names or row["split"] not in SPLITS:
                raise ValueError(
                    f"Manifest {str(path)!r} line {line}: unknown class "
                    f"{row['class_name']!r} or split {row['split']!r} "
                    f"(splits are {SPLITS})."
                )
            group = (row.get(GROUP_COLUMN) or "").strip()
            records.append(
                Record(
                    row["path"],
                    class_name,
                    row["split"],
                    int(group) if group else None,
                )
            )
    return records


def class_weights(labels: Sequence[int], n_classes: int) -> dict[int, float]:
    """Balanced class weights, ``n / (k * count)``, for the classes present.

    Classes without examples get weight 1.0 (they never occur in training).
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    present = np.count_nonzero(counts)
    total = counts.sum()
    return {
        k: float(total / (present * counts[k])) if counts[k] else 1.0
        for k in range(n_classes)
    }


def make_augmentation(
    rotation_degrees: float = 20.0,
    zoom: float = 0.10,
    horizontal_flip: bool = True,
    seed: int | None = None,
) -> keras.Sequential:
    """The training augmentation as Keras preprocessing layers.

    Flip, rotation and zoom are one `RandomFlipRotateZoom` layer: one
    resampling of each batch instead of three. Rotated and zoomed-out pixels
    are filled with black, the background of an MRI slice, rather than
    reflected anatomy.
    """
    layers = []
    if horizontal_flip or rotation_degrees or zoom:
        layers.append(
            RandomFlipRotateZoom(rotation_degrees, zoom, horizontal_flip, seed=seed)
        )
    return keras.Sequential(layers, name="augmentation")


def _single_warp(
    augmentation: keras.layers.Layer | None,
) -> RandomFlipRotateZoom | None:
    """The bilinear flip-rotate-zoom layer when it is the whole of ``augmentation``."""
    if isinstance(augmentation, keras.Sequential) and len(augmentation.layers) == 1:
        augmentation = augmentation.layers[0]
    if (
        isinstance(augmentation, RandomFlipRotateZoom)
        and augmentation.interpolation == "bilinear"
    ):
        return augmentation
    return None


def augmentation_maps(
    augmentation: RandomFlipRotateZoom, image_size: int, seed: int
) -> tf.data.Dataset:
    """An endless stream of the augmentation's random maps, one per image.

    Each element is the 8 coefficients of `RandomFlipRotateZoom.inverse_maps`
    for a square of side ``image_size``. The maps are drawn 256 at a time from
    stateless random numbers: a few vector operations instead of some twenty
    scalar ones and a seed-variable update per image. The stream follows from
    ``seed`` and changes every time the dataset is iterated again.
    """
    chunk = 256
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return (
        keys.batch(2)
        .map(
            lambda pair: augmentation.inverse_maps(
                chunk,
                image_size,
                image_size,
                tf.random.stateless_uniform((chunk, 3), seed=pair),
            )
        )
        .unbatch()
    )


def _decode_file(path, image_size) -> np.ndarray:
    return read_image(np.asarray(path).item(), reduce_to=int(image_size))


def _pad_and_resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    # Padding keeps the anatomy's aspect ratio; MRI background is black.
    return tf.image.resize_with_pad(image, image_size, image_size)


def _grey_to_rgb(image: tf.Tensor) -> tf.Tensor:
    """The first channel of ``image`` ``(height, width, channels)`` copied to three.

    One matrix product by a row of ones: exact, and a third of the time
    ``tf.tile`` takes on a CPU. It is kept on the CPU, since a GPU may
    multiply float32 matrices at TensorFloat-32 precision, which rounds.
    """
    shape = tf.shape(image)
    with tf.device("/CPU:0"):
        column = tf.reshape(image[..., :1], [-1, 1])
        copies = tf.matmul(column, tf.ones([1, 3], image.dtype))
    return tf.reshape(copies, [shape[0], shape[1], 3])


def resize_with_pad_map(
    height: tf.Tensor, width: tf.Tensor, image_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``tf.image.resize_with_pad`` as a map from output to input pixels.

    Pixel ``(x, y)`` of the padded square samples the input at
    ``((x - left + 0.5) * x_scale - 0.5, (y - top + 0.5) * y_scale - 0.5)``:
    bilinear resizing with half-pixel centres, with TensorFlow's own rounding
    of the resized size and of the padding.

    Returns:
        float32 scalars ``(x_scale, left, y_scale, top)``.
    """
    rows, columns = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    side = tf.cast(image_size, tf.float32)
    ratio = tf.maximum(columns / side, rows / side)
    x_scale = columns / tf.floor(columns / ratio)
    y_scale = rows / tf.floor(rows / ratio)
    left = tf.maximum(tf.floor((side - columns / ratio) / 2), 0.0)
    top = tf.maximum(tf.floor((side - rows / ratio) / 2), 0.0)
    return x_scale, left, y_scale, top


def resize_with_pad_and_warp(
    image: tf.Tensor, image_size: int, augment_map: tf.Tensor
) -> tf.Tensor:
    """``tf.image.resize_with_pad``, then a warp of the square, as one resampling.

    Resizing and the warp are both maps of the pixel grid, so they compose
    into one bilinear resampling: less work than resizing and then warping
    the batch, and one interpolation less blur. Inside the image the result
    is what resizing then warping gives on a smooth image; at the image's
    edges it blends with the black fill where resizing would repeat the edge
    pixel, a half-pixel rim of background in an MRI slice. A greyscale image
    (one channel, or three equal ones) is warped as one channel and copied to
    three.

    Args:
        image: pixels ``(height, width, channels)``, 1 or 3 channels.
        image_size: side of the square result.
        augment_map: the warp of the ``image_size`` square, 8 coefficients in
            the layout of `RandomFlipRotateZoom.inverse_maps`.

    Returns:
        float32 pixels ``(image_size, image_size, 3)``.
    """
    shape = tf.shape(image)
    x_scale, left, y_scale, top = resize_with_pad_map(shape[0], shape[1], image_size)
    a = tf.cast(augment_map, tf.float32)
    transform = tf.stack(
        [
            x_scale * a[0],
            x_scale * a[1],
            x_scale * (a[2] - left + 0.5) - 0.5,
            y_scale * a[3],
            y_scale * a[4],
            y_scale * (a[5] - top + 0.5) - 0.5,
            0.0,
            0.0,
        ]
    )

    def warp(channels):
        warped = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(channels, tf.float32)[tf.newaxis],
            transforms=transform[tf.newaxis],
            output_shape=[image_size, image_size],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )
        return warped[0]

    def grey():
        return _grey_to_rgb(warp(image[..., :1]))

    def colour_or_grey():
        # Compared before the conversion to float: a quarter of the bytes.
        rgb = tf.ensure_shape(image, [None, None, 3])
        return tf.cond(equal_channels(rgb), grey, lambda: warp(rgb))

    # Only a three-channel image needs the comparison of its channels.
    warped = tf.cond(shape[2] == 1, grey, colour_or_grey)
    return tf.ensure_shape(warped, [image_size, image_size, 3])


def _plain_jpeg(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """`read_image` of a plain JPEG, in the graph, before any resizing.

    The same DCT scale as `neuropath.image_files`: the largest s of 1, 2, 4
    and 8 that leaves the longer side at least ``image_size``, and the same
    crop of the scaled grid. A greyscale file keeps its one channel.
    """
    contents = tf.io.read_file(path)
    shape = tf.image.extract_jpeg_shape(contents, output_type=tf.int32)
    longer = tf.maximum(shape[0], shape[1])
    # Index of the scale: 0 for 1, 1 for 2, 2 for 4, 3 for 8.
    steps = tf.reduce_sum(
        tf.cast(longer // image_size >= tf.constant([2, 4, 8]), tf.int32)
    )

    def decode(scale: int):
        def branch():
            image = tf.io.decode_jpeg(
                contents, ratio=scale, dct_method="INTEGER_ACCURATE"
            )
            return image[: shape[0] // scale, : shape[1] // scale]

        return branch

    return tf.switch_case(steps, [decode(s) for s in (1, 2, 4, 8)])


def _check_resizable(image: tf.Tensor, image_size: int, path: tf.Tensor) -> tf.Tensor:
    """``image``, once it is known to keep at least one row and one column
    when its longer side is resized to ``image_size``."""
    # TensorFlow's own arithmetic in ``tf.image.resize_with_pad``.
    rows, columns = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    ratio = tf.maximum(columns / image_size, rows / image_size)
    shorter = tf.floor(tf.minimum(rows, columns) / ratio)
    check = tf.debugging.Assert(
        shorter >= 1,
        [f"too elongated to resize to {image_size} px:", path, tf.shape(image)],
    )
    with tf.control_dependencies([check]):
        return tf.identity(image)


def decode_file(
    path: tf.Tensor, image_size: int, plain_jpeg: tf.Tensor | bool = False
) -> tf.Tensor:
    """Decodes one image file, the first half of `load_image`.

    Decoding is where a bad file fails; `fit_to_square` cannot fail on what
    this returns, so a pipeline drops bad files between the two.

    Args:
        path: a scalar string tensor, the file's path.
        image_size: the side the image will be resized to: a JPEG is decoded
            at a reduced DCT scale that keeps its longer side at least this.
        plain_jpeg: a boolean (scalar tensor or Python bool): the file is a
            plain JPEG, decoded by ``tf.io``.

    Returns:
        uint8 pixels ``(height, width, channels)``, 1 or 3 channels.

    Raises:
        tf.errors.InvalidArgumentError: the file cannot be decoded, or it is
            so elongated that its shorter side would resize to no pixels.
    """

    def with_pillow():
        image = tf.numpy_function(
            _decode_file, [path, image_size], tf.uint8, stateful=False
        )
        return tf.ensure_shape(image, [None, None, 3])

    def with_tensorflow():
        return _plain_jpeg(path, image_size)

    if isinstance(plain_jpeg, bool):
        image = with_tensorflow() if plain_jpeg else with_pillow()
    else:
        image = tf.cond(plain_jpeg, with_tensorflow, with_pillow)
    return _check_resizable(image, image_size, path)


def fit_to_square(
    image: tf.Tensor, image_size: int, augment_map: tf.Tensor | None = None
) -> tf.Tensor:
    """Pads and resizes decoded pixels to an RGB square, the second half of
    `load_image`.

    Args:
        image: uint8 pixels ``(height, width, channels)`` from `decode_file`.
        image_size: side of the square result.
        augment_map: when given, the 8 coefficients of a warp of the square
            (`RandomFlipRotateZoom.inverse_maps`), applied in the same
            bilinear resampling as the resize (`resize_with_pad_and_warp`).

    Returns:
        float32 pixels in 0-255, shape ``(image_size, image_size, 3)``.
    """
    if augment_map is not None:
        return resize_with_pad_and_warp(image, image_size, augment_map)
    resized = _pad_and_resize(image, image_size)
    channels = image.shape[-1]
    if channels == 3:
        return resized
    if channels == 1:
        return _grey_to_rgb(resized)
    # A greyscale file is resized as one channel and copied to three
    # afterwards: the same pixels for a third of the resizing.
    resized = tf.cond(
        tf.shape(image)[2] == 1, lambda: _grey_to_rgb(resized), lambda: resized
    )
    return tf.ensure_shape(resized, [image_size, image_size, 3])


def load_image(
    path: tf.Tensor,
    image_size: int,
    plain_jpeg: tf.Tensor | bool = False,
    augment_map: tf.Tensor | None = None,
) -> tf.Tensor:
    """Decodes one image file to RGB and pads-and-resizes it to a square.

    Files go through `neuropath.image_files.read_image`, the decoder
    ``check-data`` uses: ``tf.io`` ignores EXIF orientation and clips 16-bit
    greyscale, so training would see other pixels than the check approved.
    Plain JPEGs (see `neuropath.image_files.tensorflow_decodes_exactly`),
    when flagged, are decoded by ``tf.io`` instead, to the same pixels and
    without Python's global lock, which would queue many decoding threads.
    This is `decode_file` followed by `fit_to_square`.

    Args:
        path: a scalar string tensor, the file's path (bytes as the file
            system gives them are fine).
        image_size: side of the square result.
        plain_jpeg: a boolean (scalar tensor or Python bool): the file is a
            plain JPEG.
        augment_map: when given, the 8 coefficients of a warp of the square
            output (`RandomFlipRotateZoom.inverse_maps`), applied in the same
            bilinear resampling as the resize (`resize_with_pad_and_warp`).

    Returns:
        float32 pixels in 0-255, shape ``(image_size, image_size, 3)``;
        greyscale files become three equal channels.
    """
    image = decode_file(path, image_size, plain_jpeg)
    return fit_to_square(image, image_size, augment_map)


def plain_jpeg_flags(paths: Sequence[str | bytes]) -> list[bool]:
    """`tensorflow_decodes_exactly` of each file, headers read in parallel."""
    with ThreadPoolExecutor(min(32, (os.cpu_count() or 1) * 4)) as pool:
        return list(pool.map(tensorflow_decodes_exactly, paths))


def shared_flag(flags: Sequence[bool]) -> bool | None:
    """The one value of ``flags`` when they all agree, else ``None``.

    When every file takes the same decoder (the public data set's JPEGs are
    all plain), `load_image` gets a Python bool and the per-file choice, with
    its Pillow branch, stays out of the graph: about 7 % faster per image.
    """
    if all(flags):
        return True
    return False if not any(flags) else None


def make_dataset(
    paths: Sequence[str],
    labels: Sequence[int],
    n_classes: int,
    image_size: int,
    batch_size: int,
    training: bool = False,
    augmentation: keras.layers.Layer | None = None,
    cache: str | None = None,
    seed: int = 42,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline of ``(images, one_hot_labels)``.

    Files are decoded in parallel; a file that fails to decode is dropped
    with a logged warning rather than stopping the epoch.

    Args:
        paths: image files.
        labels: class indices, one per file.
        n_classes: length of the one-hot vectors.
        image_size: side of the square output images.
        batch_size: images per batch.
        training: shuffle every epoch and apply ``augmentation``.
        augmentation: a layer applied to training batches. Without a cache, a
            `RandomFlipRotateZoom` (alone or as the one layer of a
            ``Sequential``) is applied to each image as it is resized instead,
            in the same resampling.
        cache: ``"memory"``, a directory for an on-disk cache, or ``None``.
        seed: shuffle seed.
        drop_remainder: leave out the last, smaller batch of each epoch (every
            replica of a distributed step must get images: BatchNorm cannot
            train on an empty share).

    Returns:
        A dataset of float32 images ``(batch, image_size, image_size, 3)`` in
        0-255 and float32 labels ``(batch, n_classes)``.
    """
    # Bytes: TensorFlow cannot encode names that are not valid UTF-8.
    paths = [os.fsencode(p) for p in paths]
    if len(paths) != len(labels):
        raise ValueError(
            f"Got {len(paths)} paths but {len(labels)} labels; they must pair up."
        )
    flags = plain_jpeg_flags(paths)
    every = shared_flag(flags)
    dataset = tf.data.Dataset.from_tensor_slices(
        (paths, flags, tf.one_hot(np.asarray(labels, dtype=np.int32), n_classes))
    )

    def decode(path, plain):
        return decode_file(path, image_size, plain if every is None else every)

    if training and not cache:
        # Shuffling file names costs nothing and lets decoded images stream;
        # shuffling decoded images would hold the whole epoch in memory.
        dataset = dataset.shuffle(
            max(len(paths), 1), seed=seed, reshuffle_each_iteration=True
        )
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    # Uncached, each image is augmented in the resampling that resizes it; a
    # cache must hold the images before augmentation, so the batches are
    # warped after it. Decoding is where a bad file fails: it is dropped
    # there, so that resizing, which cannot fail, is fused with batching.
    fused = _single_warp(augmentation) if training and not cache else None
    if fused is None:
        dataset = dataset.map(
            lambda path, plain, label: (decode(path, plain), label), **parallel
        ).ignore_errors(log_warning=True)
        dataset = dataset.map(
            lambda image, label: (fit_to_square(image, image_size), label), **parallel
        )
    else:
        maps = augmentation_maps(fused, image_size, seed)
        dataset = (
            tf.data.Dataset.zip(dataset, maps)
            .map(
                lambda file, augment_map: (decode(*file[:2]), file[2], augment_map),
                **parallel,
            )
            .ignore_errors(log_warning=True)
        )
        dataset = dataset.map(
            lambda image, label, augment_map: (
                fit_to_square(image, image_size, augment_map),
                label,
            ),
            **parallel,
        )
    if cache == "memory":
        dataset = dataset.cache()
    elif cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        # One cache file per list of images, so splits never share a cache.
        key = hashlib.sha1(b"\n".join(paths)).hexdigest()[:16]
        dataset = dataset.cache(str(Path(cache) / f"images_{image_size}_{key}"))
    if training and cache:
        dataset = dataset.shuffle(
            max(len(paths), 1), seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if training and augmentation is not None and fused is None:
        dataset = dataset.map(
            lambda images, label: (augmentation(images, training=True), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
