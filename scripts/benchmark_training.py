#!/usr/bin/env python
"""Training images per second fed by the input pipeline and from memory.

Trains the demo config's model on the demo training split, alternating epochs
fed by the real pipeline (`make_pipelines`: decoding, cache, shuffle and
augmentation) with epochs fed from an in-memory tensor of the same images,
decoded once beforehand, so both feeds share whatever else the machine is
doing. The pipeline's cost is how much slower its epochs are. The first epoch
of each feed (tracing, and filling the pipeline's cache) is reported apart.

    python scripts/benchmark_training.py [--epochs 8] [--steps N] [--config C]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from neuropath.classes import CLASS_NAMES  # noqa: E402
from neuropath.config import load_config  # noqa: E402
from neuropath.dataset import scan_dataset, split_records  # noqa: E402
from neuropath.training import (  # noqa: E402
    build_classifier,
    make_pipelines,
    records_dataset,
)

REPO = Path(__file__).resolve().parents[1]


class EpochClock(keras.callbacks.Callback):
    """Records each epoch's wall-clock seconds."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _in_memory(config, records, batch_size: int) -> tf.data.Dataset:
    """The training images decoded once into one tensor, batched from memory."""
    chosen = [r for r in records if r.split == "train"]
    decoded = records_dataset(config, chosen, 256)
    images = np.concatenate([b[0].numpy() for b in decoded])
    labels = np.concatenate([b[1].numpy() for b in decoded])
    dataset = tf.data.Dataset.from_tensors((tf.constant(images), tf.constant(labels)))
    return dataset.unbatch().batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)


def _epoch(model, dataset, steps: int | None) -> float:
    clock = EpochClock()
    with warnings.catch_warnings():
        # A pipeline that may drop files has no known length: Keras warns at
        # the end of each pass, which is the end of the epoch here.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(
            dataset,
            epochs=1,
            steps_per_epoch=steps,
            callbacks=[clock],
            shuffle=False,
            verbose=0,
        )
    return clock.seconds[0]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config", default=str(REPO / "configs" / "demo.yaml"), help="run config"
    )
    parser.add_argument(
        "--data-dir",
        default=str(REPO / "data" / "demo"),
        help="a data set folder (one sub-folder per class)",
    )
    parser.add_argument(
        "--epochs", type=int, default=8, help="measured epochs per feed, after one"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per epoch; none: whole passes",
    )
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1; received {args.epochs}")

    config = load_config(args.config, [f"data.data_dir={args.data_dir}"])
    scan = scan_dataset(config.data.data_dir, CLASS_NAMES, verify=False)
    records = split_records(
        scan.records, config.data.val_fraction, config.data.test_fraction
    )
    batch = config.train.batch_size
    pipeline, labels, _ = make_pipelines(config, records)
    memory = _in_memory(config, records, batch)
    steps = args.steps
    if steps is None:
        # Whole passes: the pipeline's cache is only kept once a pass ends.
        images = len(labels)
    else:
        # Partial epochs start a new pass each time: the cache never fills.
        pipeline, memory = pipeline.repeat(), memory.repeat()
        images = steps * batch

    keras.utils.set_random_seed(config.train.seed)
    classifier = build_classifier(config)
    classifier.unfreeze_backbone(None, freeze_batchnorm=False)
    classifier.compile(config.train.fine_tune.learning_rate)
    model = classifier.model
    _epoch(model, memory.take(2), None)  # traces the training step
    first = {
        "pipeline": _epoch(model, pipeline, steps),
        "memory": _epoch(model, memory, steps),
    }
    seconds = {"pipeline": [], "memory": []}
    for _ in range(args.epochs):
        for feed, dataset in (("pipeline", pipeline), ("memory", memory)):
            seconds[feed].append(_epoch(model, dataset, steps))

    rates = {feed: images / np.median(s) for feed, s in seconds.items()}
    print(
        f"config {args.config}: {config.model.backbone}, {config.data.image_size} px, "
        f"batches of {batch}, {images} images an epoch"
        f"{'' if images == len(labels) else f' of {len(labels)} training images'}, "
        f"cache {config.data.cache}, augmentation "
        f"{'on' if config.augment.enabled else 'off'}, {os.cpu_count()} core(s), "
        f"TensorFlow {tf.__version__}"
    )
    for feed in ("pipeline", "memory"):
        print(
            f"{feed:<8} first epoch {images / first[feed]:7.0f} images/s; then median "
            f"{rates[feed]:7.0f} images/s over {args.epochs} epoch(s) "
            f"{np.round(seconds[feed], 2)} s"
        )
    cost = 100 * (1 - rates["pipeline"] / rates["memory"])
    verdict = "meets" if cost <= 10 else "MISSES"
    print(f"pipeline cost: {cost:.1f}% of the in-memory rate (goal <= 10%: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
