"""Train a tiny demo run through `train` under a distribution strategy.

Started as a subprocess by the tests, one process per worker: the CPU can only
be split into logical devices, and a multi-worker strategy can only be set up,
before TensorFlow initialises. Prints one JSON line with the replica count, the
run folder and the final model; with WEIGHTS_FILE, also saves the final
model's weights there as an ``.npz`` file.

Usage:
    python tests/distributed_training_run.py mirrored DATA_DIR RUN_DIR
    TF_CONFIG=... python tests/distributed_training_run.py multi_worker \\
        DATA_DIR RUN_DIR WEIGHTS_FILE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tensorflow as tf

if sys.argv[1] == "mirrored":
    _CPU = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _CPU, [tf.config.LogicalDeviceConfiguration()] * 2
    )

import numpy as np  # noqa: E402

from neuropath.config import load_config  # noqa: E402
from neuropath.training import train  # noqa: E402
from neuropathology_model import NeuropathologyClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(strategy: str, data_dir: str, run_dir: str, weights_file: str | None):
    """A short demo run at 32 px on a few images, without XLA."""
    config = load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"train.strategy={strategy}",
            f"data.data_dir={data_dir}",
            "data.image_size=32",
            "data.test_fraction=0",
            "train.batch_size=8",
            "train.jit_compile=false",
            # One epoch across machines: their collectives are slow on a CPU.
            f"train.fine_tune.epochs={2 if strategy == 'mirrored' else 1}",
            f"gradients.enabled={str(strategy == 'mirrored').lower()}",
            "gradients.probe_size=8",
            "gradients.histograms=false",
        ],
    )
    result = train(config, run_dir)
    if weights_file:
        model = NeuropathologyClassifier.load(result.model_path).model
        arrays = {
            f"{'trained' if w.trainable else 'statistic'}:{w.path}": w.numpy()
            for w in model.weights
        }
        np.savez(weights_file, **arrays)
    print(
        json.dumps(
            {
                "replicas": result.replicas,
                "run_dir": str(result.run_dir),
                "model_path": str(result.model_path),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4], sys.argv[4] if len(sys.argv) > 4 else None)
