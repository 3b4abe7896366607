"""Run the gradient logger under a two-replica MirroredStrategy on the CPU.

Started as a subprocess by the tests: the CPU can only be split into logical
devices before TensorFlow initialises it. Prints one JSON line with the
replica count and, per trainable variable, the logged gradient norm and the
norm computed independently on the same probe batch.

Usage:
    python tests/two_replica_probe.py LOG_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tensorflow as tf

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration()] * 2
)

from test_gradient_logging import _data, _events, _gradients, _head_model  # noqa: E402

from neuropath.gradient_logging import GradientNormLogger  # noqa: E402


def main(log_dir: Path) -> None:
    """Fit one epoch on two replicas, then compare logged and direct norms."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _head_model()
    x, y = _data()
    watcher = GradientNormLogger(x[:8], y[:8], log_dir)

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[watcher])
    scalars, _ = _events(log_dir)

    direct = _gradients(model, x[:8], y[:8])
    rows = [
        {
            "path": variable.path,
            "logged": scalars[f"gradient_norm/{variable.path}"][3],
            "direct": float(tf.norm(gradient)),
        }
        for variable, gradient in zip(model.trainable_variables, direct, strict=True)
    ]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "rows": rows}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
