#!/usr/bin/env python
"""Times the cost of `GradientNormLogger` at its default settings.

Trains the demo config for a dozen epochs with the logger probing at the end of
every second epoch, so epochs with and without a probe alternate in one run and
share whatever else the machine is doing; the overhead is the median probed
epoch against the median plain one. The logger's own time inside each probed
epoch is also printed. The first two epochs, which trace the training step and
the probe, are left out.

    python scripts/benchmark_gradient_logging.py [--epochs 12] [--config C]
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


def _time_run(config, records, epochs: int, log_dir: Path):
    """Per epoch: seconds, whether it was probed, and the logger's seconds."""
    keras.utils.set_random_seed(config.train.seed)
    config.data.cache = "memory"
    train, labels, val = make_pipelines(config, records)
    weights = class_weights(labels, len(CLASS_NAMES))
    classifier = build_classifier(config)
    classifier.unfreeze_backbone(None, freeze_batchnorm=False)
    classifier.compile(config.train.fine_tune.learning_rate)
    images, probe_labels = probe_batch(config, records)
    gradients = config.gradients
    watcher = GradientNormLogger(
        images,
        probe_labels,
        log_dir,
        every_epochs=2,
        histograms=gradients.histograms,
        vanishing_threshold=gradients.vanishing_threshold,
        exploding_threshold=gradients.exploding_threshold,
    )
    # The epoch clock comes last, so an epoch's time includes the probe.
    before, clock = EpochClock(), EpochClock()
    with warnings.catch_warnings():
        # A pipeline that may drop files has no known length: Keras warns at
        # the end of each pass, which is the end of the epoch here.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        classifier.model.fit(
            train,
            validation_data=val,
            epochs=epochs,
            class_weight=weights,
            callbacks=[before, watcher, clock],
            shuffle=False,  # the pipeline shuffles
            verbose=0,
        )
    seconds = np.subtract(clock.ends, clock.starts)
    logger_seconds = np.subtract(clock.ends, before.ends)
    probed = (np.arange(epochs) + 1) % 2 == 0
    return seconds[2:], probed[2:], logger_seconds[2:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--data-dir", default=str(REPO / "data" / "demo"))
    parser.add_argument("--epochs", type=int, default=12, help="including two warm-up")
    parser.add_argument("--log-dir", default="/tmp/neuropath-gradient-benchmark")
    args = parser.parse_args()
    if args.epochs < 6:
        parser.error(
            f"--epochs must be >= 6 (two warm-up, then pairs); got {args.epochs}"
        )

    config = load_config(args.config, [f"data.data_dir={args.data_dir}"])
    scan = scan_dataset(config.data.data_dir, CLASS_NAMES, verify=False)
    records = split_records(
        scan.records, config.data.val_fraction, config.data.test_fraction
    )
    seconds, probed, inside = _time_run(
        config, records, args.epochs, Path(args.log_dir)
    )

    steps = sum(r.split == "train" for r in records) / config.train.batch_size
    plain, logged = np.median(seconds[~probed]), np.median(seconds[probed])
    print(
        f"config: {args.config}, image size {config.data.image_size}, "
        f"~{steps:.0f} steps an epoch, histograms {config.gradients.histograms}"
    )
    print(f"plain epochs:  median {plain:.2f} s  {np.round(seconds[~probed], 2)}")
    print(f"probed epochs: median {logged:.2f} s  {np.round(seconds[probed], 2)}")
    print(f"overhead at one probe an epoch: {100 * (logged - plain) / plain:+.1f}%")
    share = np.median(inside[probed])
    print(
        f"logger time in a probed epoch: median {share:.3f} s "
        f"({100 * share / plain:.1f}% of a plain epoch)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
