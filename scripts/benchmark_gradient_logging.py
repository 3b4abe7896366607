#!/usr/bin/env python
"""Times training with and without `GradientNormLogger` at its default frequency.

Trains the demo config twice for a few epochs on the same split, once without
and once with the logger, and prints seconds per epoch (the first epoch, which
traces the training step and the probe, is left out) and the overhead in
percent. The logger's own share of each epoch is also timed inside the run,
which is less exposed to other work on the machine.

    python scripts/benchmark_gradient_logging.py [--epochs 4] [--config C]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from neuropath.classes import CLASS_NAMES  # noqa: E402
from neuropath.config import load_config  # noqa: E402
from neuropath.dataset import (  # noqa: E402
    class_weights,
    scan_dataset,
    split_records,
)
from neuropath.gradient_logging import GradientNormLogger  # noqa: E402
from neuropath.training import (  # noqa: E402
    build_classifier,
    make_pipelines,
    probe_batch,
)

REPO = Path(__file__).resolve().parents[1]


class EpochClock(keras.callbacks.Callback):
    """Records the wall-clock time at each epoch's start and end."""

    def __init__(self):
        super().__init__()
        self.starts, self.ends = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.starts.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())


def _time_run(config, records, epochs: int, with_logger: bool, log_dir: Path):
    """Seconds of each epoch after the first, and the logger's share of them."""
    keras.utils.set_random_seed(config.train.seed)
    config.data.cache = "memory"
    train, labels, val = make_pipelines(config, records)
    weights = class_weights(labels, len(CLASS_NAMES))
    classifier = build_classifier(config)
    classifier.unfreeze_backbone(None, freeze_batchnorm=False)
    classifier.compile(config.train.fine_tune.learning_rate)
    clock, before, after = EpochClock(), EpochClock(), EpochClock()
    callbacks = [clock]
    if with_logger:
        images, labels = probe_batch(config, records)
        callbacks += [before, GradientNormLogger(images, labels, log_dir), after]
    classifier.model.fit(
        train,
        validation_data=val,
        epochs=epochs,
        class_weight=weights,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles
        verbose=0,
    )
    seconds = np.subtract(clock.ends, clock.starts)[1:]
    logger_seconds = np.subtract(after.ends, before.ends)[1:] if with_logger else None
    return seconds, logger_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--data-dir", default=str(REPO / "data" / "demo"))
    parser.add_argument("--epochs", type=int, default=4, help="including the first")
    parser.add_argument("--log-dir", default="/tmp/neuropath-gradient-benchmark")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error(
            f"--epochs must be >= 2 (the first is left out); got {args.epochs}"
        )

    config = load_config(args.config, [f"data.data_dir={args.data_dir}"])
    scan = scan_dataset(config.data.data_dir, CLASS_NAMES, verify=False)
    records = split_records(
        scan.records, config.data.val_fraction, config.data.test_fraction
    )
    plain, _ = _time_run(config, records, args.epochs, False, Path(args.log_dir))
    logged, inside = _time_run(config, records, args.epochs, True, Path(args.log_dir))

    steps = sum(r.split == "train" for r in records) / config.train.batch_size
    print(
        f"config: {args.config}, image size {config.data.image_size}, "
        f"~{steps:.0f} steps an epoch, {args.epochs - 1} timed epoch(s) per run"
    )
    print(f"without logger: {plain.mean():.2f} s/epoch  {np.round(plain, 2)}")
    print(f"with logger:    {logged.mean():.2f} s/epoch  {np.round(logged, 2)}")
    overhead = 100 * (logged.mean() - plain.mean()) / plain.mean()
    print(f"overhead (wall clock, run vs run): {overhead:+.1f}%")
    share = 100 * inside.mean() / plain.mean()
    print(f"logger time per epoch: {inside.mean():.3f} s ({share:.1f}% of an epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
