#!/usr/bin/env python
"""Images per second of the input pipeline, its decode bound and a naive loader.

All on the same folder of images, repeated in order to ``--images`` per
measurement, each figure the median of ``--repeats`` runs. The measurements
take turns, one run of each per round, so that a slow spell of the machine
does not fall on one of them alone:

(a) the decode bound: decoding and resizing alone, ``tf.data`` on all cores,
    with the product's decoding and with full-size decoding;
(b) the training pipeline (`make_dataset`), uncached first epoch and cached
    epochs, without and with the training augmentation (uncached, it is part
    of each image's resize; cached, it warps the batches read back);
(c) a naive ``keras.utils.PyDataset`` reading each file with Pillow and
    augmenting it in NumPy (SciPy's affine map, as Keras 2's
    ``ImageDataGenerator`` did), with one worker and with one thread per core,
    and, for comparison, augmenting it with Pillow's own C resampling.

Each figure comes with the range of its runs.

The goals are judged on the median of the ratios within rounds, each round
set against the faster decoding of (a) or the faster naive loader of the same
round: uncached without augmentation at least 80% of the bound; with
augmentation at least 60% of it and 5x the NumPy-augmenting loader. Beside
each ratio are its range over the rounds and the strict ratio of the median
to the fastest run of the other side. The ratio to the Pillow-augmenting
loader is printed with them, with no goal.

    python scripts/benchmark_pipeline.py [--data-dir DIR] [--image-size 224]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from neuropath.config import load_config  # noqa: E402
from neuropath.dataset import make_augmentation, make_dataset, scan_dataset  # noqa: E402
from neuropath.pipeline_benchmark import (  # noqa: E402
    NaiveLoader,
    decode_bound_dataset,
    images_per_second,
    interleaved_rates,
    naive_batches,
    repeat_to,
    round_ratios,
)

REPO = Path(__file__).resolve().parents[1]
N_CLASSES = 17


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        default=str(REPO.parent / "shared" / "real-mri-sample"),
        help="a data set folder (one sub-folder per class)",
    )
    parser.add_argument(
        "--image-size", type=int, default=224, help="side of the square images"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument(
        "--images",
        type=int,
        default=4450,
        help="images per pipeline run; 4,450 is one epoch of the public data set",
    )
    parser.add_argument(
        "--naive-images", type=int, default=500, help="images per naive run"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="rounds: runs of each measurement"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="a run config whose augmentation is used; without one, 20 degrees, "
        "zoom 0.10 and flip",
    )
    return parser.parse_args()


def main() -> int:
    args = _arguments()
    augment = load_config(args.config).augment
    # Classes missing from a sample folder do not matter to a speed test.
    logging.getLogger("neuropath").setLevel(logging.ERROR)
    scan = scan_dataset(args.data_dir, verify=False)
    files = [str(Path(args.data_dir) / r.path) for r in scan.records]
    paths = repeat_to(files, args.images)
    labels = [i % N_CLASSES for i in range(len(paths))]
    size, batch = args.image_size, args.batch_size

    def pipeline(augmented: bool, cache: str | None):
        augmentation = (
            make_augmentation(
                augment.rotation_degrees, augment.zoom, augment.horizontal_flip
            )
            if augmented
            else None
        )
        return make_dataset(
            paths,
            labels,
            N_CLASSES,
            size,
            batch,
            training=True,
            augmentation=augmentation,
            cache=cache,
        )

    def cached_epoch(augmented: bool) -> float:
        dataset = pipeline(augmented, "memory")
        images_per_second(dataset)  # the first epoch fills the cache
        return images_per_second(dataset)

    naive_paths = repeat_to(files, args.naive_images)
    naive_labels = np.eye(N_CLASSES, dtype="float32")[
        [i % N_CLASSES for i in range(len(naive_paths))]
    ]

    def naive(augmented: bool, workers: int, augment_with: str = "numpy") -> float:
        loader = NaiveLoader(
            naive_paths,
            naive_labels,
            size,
            batch,
            augment=augmented,
            rotation_degrees=augment.rotation_degrees,
            zoom=augment.zoom,
            augment_with=augment_with,
        )
        return images_per_second(naive_batches(loader, workers))

    cores = os.cpu_count() or 1
    print(
        f"{len(files)} files from {args.data_dir}, repeated to {len(paths)} "
        f"images ({len(naive_paths)} for the naive loader), {size} px, batches "
        f"of {batch}, median of {args.repeats}, {cores} core(s), TensorFlow "
        f"{tf.__version__}"
    )
    # Warm up: libraries, thread pools and the augmentation's first trace.
    images_per_second(pipeline(True, None).take(4))

    measurements = {
        "a_bound": lambda: images_per_second(decode_bound_dataset(paths, size, batch)),
        "a_bound_full": lambda: images_per_second(
            decode_bound_dataset(paths, size, batch, full_size=True)
        ),
        "b_uncached": lambda: images_per_second(pipeline(False, None)),
        "b_cached": lambda: cached_epoch(False),
        "b_uncached_aug": lambda: images_per_second(pipeline(True, None)),
        "b_cached_aug": lambda: cached_epoch(True),
        "c_naive_1": lambda: naive(False, 1),
        "c_naive_aug_1": lambda: naive(True, 1),
        "c_naive_aug_all": lambda: naive(True, cores),
        "c_pillow_aug_1": lambda: naive(True, 1, "pillow"),
        "c_pillow_aug_all": lambda: naive(True, cores, "pillow"),
    }
    labels_text = {
        "a_bound": "(a) decode bound, reduced-size JPEG decoding",
        "a_bound_full": "(a) decode bound, full-size decoding",
        "b_uncached": "(b) pipeline, uncached first epoch",
        "b_cached": "(b) pipeline, cached epoch",
        "b_uncached_aug": "(b) pipeline + augmentation, uncached first epoch",
        "b_cached_aug": "(b) pipeline + augmentation, cached epoch",
        "c_naive_1": "(c) naive PyDataset, no augmentation, 1 worker",
        "c_naive_aug_1": "(c) naive PyDataset + NumPy augmentation, 1 worker",
        "c_naive_aug_all": f"(c) naive PyDataset + NumPy augmentation, {cores} threads",
        "c_pillow_aug_1": "(c) naive PyDataset + Pillow augmentation, 1 worker",
        "c_pillow_aug_all": f"(c) naive PyDataset + Pillow augmentation, "
        f"{cores} threads",
    }
    runs = interleaved_rates(measurements, args.repeats)
    rates = {key: statistics.median(values) for key, values in runs.items()}
    for key, values in runs.items():
        print(
            f"{labels_text[key]:<56} {rates[key]:8.0f} images/s  "
            f"(runs {min(values):.0f}-{max(values):.0f})"
        )

    # Each goal is judged on the ratios within rounds: the two rates of a
    # round ran seconds apart under the same load, where the medians of a
    # shared machine can each fall in a different slow spell. The bound of a
    # round is its faster decoding, the naive loader its faster variant. The
    # stricter median over the fastest run of the other side is printed too.
    bounds = [runs["a_bound"], runs["a_bound_full"]]
    naive_numpy = [runs["c_naive_aug_1"], runs["c_naive_aug_all"]]
    naive_pillow = [runs["c_pillow_aug_1"], runs["c_pillow_aug_all"]]
    goals = [
        ("uncached / decode bound", "b_uncached", bounds, 0.80),
        ("uncached + augmentation / decode bound", "b_uncached_aug", bounds, 0.60),
        (
            "uncached + augmentation / naive + NumPy augmentation",
            "b_uncached_aug",
            naive_numpy,
            5.0,
        ),
        (
            "uncached + augmentation / naive + Pillow augmentation",
            "b_uncached_aug",
            naive_pillow,
            None,
        ),
    ]
    print(
        "\nRatios: median of the round ratios (each run over the faster decode "
        "bound\nor naive loader of its round), their range, and strict: median "
        "over the\nsingle fastest run of the other side."
    )
    print(f"{'ratio':<54} {'rounds':>6} {'range':>13} {'strict':>7}")
    for name, key, denominators, goal in goals:
        ratios = round_ratios(runs[key], denominators)
        ratio = statistics.median(ratios)
        strict = rates[key] / max(max(values) for values in denominators)
        verdict = "no goal"
        if goal is not None:
            verdict = f"goal >= {goal:.2f}: " + ("meets" if ratio >= goal else "MISSES")
        print(
            f"{name:<54} {ratio:6.3f} {min(ratios):6.3f}-{max(ratios):.3f} "
            f"{strict:7.3f}   ({verdict})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
