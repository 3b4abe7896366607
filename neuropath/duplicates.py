"""Near-duplicate slices: the same image exported twice, resized or re-encoded.

Each image gets a *perceptual hash*, 256 bits from the low frequencies of its
discrete cosine transform (``imagehash.phash`` with ``hash_size=16``), computed
on the pixels the model sees. Two images whose hashes differ in at most
`DUPLICATE_DISTANCE` bits are *near duplicates*; a *duplicate group* is a set of
images linked by near-duplicate pairs (a chain counts).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from neuropath.dataset import Record
from neuropath.image_files import UnusableImageError, read_image

__all__ = [
    "DUPLICATE_DISTANCE",
    "HASH_SIZE",
    "assign_duplicate_groups",
    "duplicate_groups",
    "group_near_duplicates",
    "hash_files",
    "perceptual_hash",
]

logger = logging.getLogger(__name__)

HASH_SIZE = 16
# 8 of 256 bits. On the real MRI sample, copies resized 0.5-2x and re-encoded
# (JPEG quality 60-95, PNG) measured 0-4 bits from their original, while the
# closest two distinct slices were 14 bits apart (18 in the demo data).
DUPLICATE_DISTANCE = 8
_CHUNK = 512
# Bits set in each byte value, for NumPy before 2.0 (no bitwise_count).
_BITS_SET = np.array([bin(value).count("1") for value in range(256)], np.uint16)
_popcount = getattr(np, "bitwise_count", _BITS_SET.__getitem__)


def perceptual_hash(pixels: np.ndarray) -> np.ndarray:
    """The 256-bit perceptual hash of an image.

    Args:
        pixels: uint8 RGB pixels, shape ``(height, width, 3)``.

    Returns:
        A bool array of shape ``(256,)``.
    """
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    return imagehash.phash(image, hash_size=HASH_SIZE).hash.reshape(-1).copy()


def _hash_file(path: str | os.PathLike) -> np.ndarray | None:
    try:
        return perceptual_hash(read_image(path))
    except UnusableImageError as err:
        logger.debug("Not hashed: %s", err)
        return None


def hash_files(
    paths: Sequence[str | os.PathLike], workers: int | None = None
) -> list[np.ndarray | None]:
    """Perceptual hashes of image files, ``None`` for a file that cannot be read.

    Args:
        paths: the image files.
        workers: threads; all cores by default.

    Returns:
        One bool array of shape ``(256,)`` or ``None`` per path, in order.
    """
    with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
        return list(pool.map(_hash_file, paths))


def group_near_duplicates(
    hashes: np.ndarray, max_distance: int = DUPLICATE_DISTANCE
) -> np.ndarray:
    """Links images whose hashes are within ``max_distance`` bits.

    Args:
        hashes: bool hashes, shape ``(n, bits)``.
        max_distance: the largest Hamming distance of near duplicates; 8 by
            default.

    Returns:
        int array of shape ``(n,)``: each image's group, numbered by the first
        image of the group (an image alone is its own group).
    """
    hashes = np.asarray(hashes, dtype=bool)
    n = len(hashes)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    packed = np.packbits(hashes, axis=1)
    for start in range(0, n, _CHUNK):
        block = packed[start : start + _CHUNK]
        # Only pairs (i, j) with j > i: compare the block with what follows it.
        rest = packed[start:]
        distance = _popcount(block[:, None, :] ^ rest[None, :, :]).sum(axis=2)
        rows, cols = np.nonzero(distance <= max_distance)
        for i, j in zip(rows + start, cols + start, strict=True):
            if j > i:
                a, b = root(int(i)), root(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)], dtype=int)


def assign_duplicate_groups(
    records: Sequence[Record],
    root: str | os.PathLike,
    max_distance: int = DUPLICATE_DISTANCE,
    workers: int | None = None,
) -> list[Record]:
    """Sets ``duplicate_group`` on every record that has a near duplicate.

    Groups are numbered 1, 2, ... in the order of their first record; images
    without a near duplicate (or that cannot be read) keep ``None``.

    Args:
        records: the images, paths relative to ``root``.
        root: the data set folder.
        max_distance: the largest Hamming distance of near duplicates.
        workers: hashing threads; all cores by default.

    Returns:
        The records, in the input order.
    """
    root = Path(root)
    hashes = hash_files([root / r.path for r in records], workers)
    readable = [i for i, h in enumerate(hashes) if h is not None]
    labels = {}
    if readable:
        found = group_near_duplicates(
            np.stack([hashes[i] for i in readable]), max_distance
        )
        labels = {i: int(found[k]) for k, i in enumerate(readable)}
    sizes: dict[int, int] = {}
    for label in labels.values():
        sizes[label] = sizes.get(label, 0) + 1
    numbers: dict[int, int] = {}
    out = []
    for i, record in enumerate(records):
        label = labels.get(i)
        group = None
        if label is not None and sizes[label] > 1:
            group = numbers.setdefault(label, len(numbers) + 1)
        out.append(dataclasses.replace(record, duplicate_group=group))
    if numbers:
        logger.info(
            "%d near-duplicate group(s) holding %d images",
            len(numbers),
            sum(r.duplicate_group is not None for r in out),
        )
    return out


def duplicate_groups(records: Sequence[Record]) -> list[list[Record]]:
    """The records of each duplicate group, groups in number order."""
    groups: dict[int, list[Record]] = {}
    for record in records:
        if record.duplicate_group is not None:
            groups.setdefault(record.duplicate_group, []).append(record)
    return [groups[number] for number in sorted(groups)]
