#!/usr/bin/env python
"""Times the steps of ``neuropath check-data`` on a data set folder.

Prints images per second for decoding every file with the shared decoder, for
perceptual hashing (decoding included, as ``check-data`` does it) and for
grouping the hashes; then the same decoding through TensorFlow's own
``tf.io.decode_image`` for comparison. Each step runs ``--repeats`` times and
the fastest is kept.

    python scripts/benchmark_data_check.py [DATA_DIR] [--workers N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from neuropath.dataset import scan_dataset  # noqa: E402
from neuropath.duplicates import group_near_duplicates, hash_files  # noqa: E402
from neuropath.image_files import read_image  # noqa: E402


def _fastest(step, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = step()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default="data/demo")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    scan = scan_dataset(args.data_dir, verify=False)
    paths = [Path(args.data_dir) / r.path for r in scan.records]
    n = len(paths)
    print(f"{n} images under {args.data_dir}, {args.workers} worker thread(s)")

    def decode_all():
        with ThreadPoolExecutor(args.workers) as pool:
            return list(pool.map(read_image, paths))

    seconds, images = _fastest(decode_all, args.repeats)
    pixels = np.mean([image.shape[0] * image.shape[1] for image in images])
    print(f"decode (Pillow, shared decoder): {n / seconds:8.0f} images/s")
    print(f"  mean size {pixels**0.5:.0f} x {pixels**0.5:.0f} px")

    def decode_tf():
        dataset = tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).map(
            lambda p: tf.io.decode_image(
                tf.io.read_file(p), channels=3, expand_animations=False
            ),
            num_parallel_calls=args.workers,
        )
        return sum(1 for _ in dataset)

    seconds, _ = _fastest(decode_tf, args.repeats)
    print(f"decode (tf.io.decode_image):     {n / seconds:8.0f} images/s")

    seconds, hashes = _fastest(lambda: hash_files(paths, args.workers), args.repeats)
    print(f"hash (decode + 256-bit pHash):   {n / seconds:8.0f} images/s")
    stacked = np.stack([h for h in hashes if h is not None])
    seconds, groups = _fastest(lambda: group_near_duplicates(stacked), args.repeats)
    print(f"group ({n * (n - 1) // 2} pairs):        {seconds:8.3f} s")
    sizes = np.bincount(groups)
    print(f"near-duplicate groups: {int(np.sum(sizes > 1))}")


if __name__ == "__main__":
    main()
