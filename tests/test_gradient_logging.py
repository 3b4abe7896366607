"""Gradient logging on a probe batch: logged values, alarms, stages and the table."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from neuropath.callbacks import CheckpointSaver
from neuropath.cli import main
from neuropath.config import load_config
from neuropath.gradient_logging import GradientNormLogger, read_gradient_table
from neuropath.training import probe_batch
from neuropathology_model import NeuropathologyClassifier

LOGGER_NAME = "neuropath.gradient_logging"


def _events(log_dir) -> tuple[dict[str, dict[int, float]], set[str]]:
    """``({scalar tag: {step: value}}, {histogram tag})`` from the event files."""
    scalars: dict[str, dict[int, float]] = {}
    histograms: set[str] = set()
    for path in sorted(log_dir.glob("events.out.tfevents*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.size == 1:
                    scalars.setdefault(value.tag, {})[event.step] = float(array)
                else:
                    histograms.add(value.tag)
    return scalars, histograms


def _data(n: int = 24, features: int = 6, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, classes, n), classes)
    return x, y.astype("float32")


def _head_model(features: int = 6, classes: int = 3, dropout: float = 0.0):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((features,))
    x = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    x = keras.layers.BatchNormalization(name="hidden_bn")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="drop")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="output")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "categorical_crossentropy")
    return model


def _gradients(model, x, y, loss=None):
    """The training-mode loss gradient, computed here without the logger."""
    loss = loss or keras.losses.CategoricalCrossentropy()
    with tf.GradientTape() as tape:
        value = loss(y, model(x, training=True))
    return tape.gradient(value, model.trainable_variables)


def _assert_logged_norms_equal(model, scalars, x, y, step, rtol=1e-5):
    for variable, gradient in zip(
        model.trainable_variables, _gradients(model, x, y), strict=True
    ):
        logged = scalars[f"gradient_norm/{variable.path}"][step]
        np.testing.assert_allclose(logged, float(tf.norm(gradient)), rtol=rtol)


def test_logged_norms_equal_independent_gradients_for_every_trainable_layer(
    tmp_path,
):
    model = _head_model()
    x, y = _data()
    log_dir = tmp_path / "logs" / "gradients"
    watcher = GradientNormLogger(x[:8], y[:8], log_dir)

    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[watcher])
    scalars, histograms = _events(log_dir)

    # Three steps an epoch: logged at the end of each epoch, traced once.
    assert sorted(scalars["gradient_norm/global"]) == [3, 6]
    assert watcher._probe_fn.function.experimental_get_tracing_count() == 1
    _assert_logged_norms_equal(model, scalars, x[:8], y[:8], step=6)
    gradients = _gradients(model, x[:8], y[:8])
    expected_global = math.sqrt(sum(float(tf.reduce_sum(g**2)) for g in gradients))
    np.testing.assert_allclose(
        scalars["gradient_norm/global"][6], expected_global, rtol=1e-5
    )
    for variable in model.trainable_variables:
        assert f"gradients/{variable.path}" in histograms
        assert f"weights/{variable.path}" in histograms
    kernel, bias = model.get_layer("output").trainable_variables
    grad_norm = math.hypot(float(tf.norm(gradients[-2])), float(tf.norm(gradients[-1])))
    weight_norm = math.hypot(float(tf.norm(kernel)), float(tf.norm(bias)))
    np.testing.assert_allclose(
        scalars["update_ratio/output"][6], 1e-2 * grad_norm / weight_norm, rtol=1e-4
    )
    assert set(scalars) >= {"update_ratio/hidden", "update_ratio/hidden_bn"}


def test_probe_changes_no_weight_statistic_or_random_state(tmp_path):
    class Snapshot(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.states = []

        def on_epoch_end(self, epoch, logs=None):
            self.states.append([np.array(v) for v in self.model.variables])

    model = _head_model(dropout=0.5)
    x, y = _data()
    before, after = Snapshot(), Snapshot()
    watcher = GradientNormLogger(x[:8], y[:8], tmp_path)

    model.fit(
        x, y, batch_size=8, epochs=2, verbose=0, callbacks=[before, watcher, after]
    )

    assert len(_events(tmp_path)[0]["gradient_norm/global"]) == 2
    names = [v.path for v in model.variables]
    assert any("moving_mean" in n for n in names) and any("seed" in n for n in names)
    for first, second in zip(before.states, after.states, strict=True):
        for name, a, b in zip(names, first, second, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


def _exploding_run(run_dir):
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="linear")])
    model.get_layer("linear").kernel.assign(np.full((4, 2), 1e3, "float32"))
    model.compile(keras.optimizers.SGD(1e-12), "mse")
    x = np.full((8, 4), 1e3, "float32")
    y = np.zeros((8, 2), "float32")
    watcher = GradientNormLogger(x, y, run_dir / "logs" / "gradients")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[watcher])
    return model, watcher, x, y


def test_exploding_gradient_is_warned_and_recorded(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        model, watcher, x, y = _exploding_run(tmp_path)

    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x))
    expected = float(tf.linalg.global_norm(tape.gradient(loss, model.weights)))
    assert expected > 1e3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "Exploding" in m and "'linear'" in m and "step 2" in m for m in warnings
    ), warnings
    alarms = json.loads((tmp_path / "logs" / "gradients" / "alarms.json").read_text())
    [alarm] = alarms["alarms"]
    assert (alarm["layer"], alarm["kind"], alarm["step"]) == ("linear", "exploding", 2)
    np.testing.assert_allclose(alarm["value"], expected, rtol=1e-5)
    assert not model.stop_training


def test_gradients_command_prints_the_table_and_flags_the_alarmed_layer(
    tmp_path, capsys
):
    _exploding_run(tmp_path)

    code = main(["gradients", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()

    assert code == 0
    assert lines[0].split() == [
        "layer",
        "parameter",
        "first",
        "last",
        "min",
        "max",
        "steps",
        "flag",
    ]
    rows = {tuple(line.split()[:2]): line.split() for line in lines[1:-1]}
    assert set(rows) == {("global", "raw"), ("linear", "kernel"), ("linear", "bias")}
    assert rows[("linear", "kernel")][-1] == "exploding"
    assert float(rows[("linear", "kernel")][2]) > 1e3
    assert len(rows[("global", "raw")]) == 7  # no flag on the global norm
    assert lines[-1] == "alarms in 1 layer(s): linear"


def test_gradients_command_names_a_run_without_gradient_logs(tmp_path, capsys):
    assert main(["gradients", str(tmp_path)]) == 2
    assert "has no gradient logs" in capsys.readouterr().err


def test_nonfinite_gradient_stops_training(tmp_path, caplog):
    model = _head_model()
    x, y = _data()
    # NaN weights in front of the softmax: oneDNN's ReLU maps NaN to 0, so NaN
    # weights ahead of a ReLU may never reach the loss on some CPUs.
    kernel = model.get_layer("output").kernel
    kernel.assign(np.where(np.eye(*kernel.shape) > 0, np.nan, kernel.numpy()))
    watcher = GradientNormLogger(x[:8], y[:8], tmp_path)

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        history = model.fit(
            x, y, batch_size=8, epochs=5, verbose=0, callbacks=[watcher]
        )

    assert len(history.epoch) == 1
    assert watcher.stopped_on_nonfinite
    kinds = {(a.layer, a.kind) for a in watcher.alarms}
    assert ("hidden", "nonfinite") in kinds
    assert any("Stopping training at step 3" in r.getMessage() for r in caplog.records)


def test_checkpoint_saver_writes_nothing_for_a_nonfinite_epoch(tmp_path):
    class Recorder:
        def __init__(self):
            self.saved = []

        def save(self, path, extra=None):
            self.saved.append(path.name)
            path.write_text(f"epoch {extra['epoch']}")

    recorder = Recorder()
    saver = CheckpointSaver(recorder, tmp_path)

    saver.on_epoch_end(0, {"loss": 1.0, "val_loss": 0.9})
    saver.on_epoch_end(1, {"loss": float("nan"), "val_loss": float("nan")})
    saver.on_epoch_end(2, {"loss": float("inf"), "val_loss": 0.5})

    # The model is serialised once; the best checkpoint is a copy of it.
    assert recorder.saved == ["last.keras"]
    assert (tmp_path / "last.keras").read_text() == "epoch 1"
    assert (tmp_path / "best.keras").read_text() == "epoch 1"
    assert saver.best == 0.9 and saver.best_epoch == 1


def test_saturated_sigmoid_stack_raises_the_vanishing_alarm(tmp_path, caplog):
    keras.utils.set_random_seed(3)
    big = keras.initializers.RandomNormal(stddev=100.0, seed=3)
    model = keras.Sequential(
        [keras.Input((4,))]
        + [
            keras.layers.Dense(16, "sigmoid", kernel_initializer=big, name=f"sig{i}")
            for i in range(8)
        ]
        + [keras.layers.Dense(2, "softmax", name="output")]
    )
    model.compile(keras.optimizers.SGD(1e-3), "categorical_crossentropy")
    x, y = _data(n=8, features=4, classes=2)
    watcher = GradientNormLogger(x, y, tmp_path)

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[watcher])

    first = model.get_layer("sig0").trainable_variables
    norm = float(tf.linalg.global_norm(_gradients(model, x, y)[: len(first)]))
    assert norm < 1e-7
    vanishing = {a.layer for a in watcher.alarms if a.kind == "vanishing"}
    assert "sig0" in vanishing and "output" not in vanishing
    assert any(
        "Vanishing" in r.getMessage() and "'sig0'" in r.getMessage()
        for r in caplog.records
    )


def test_backbone_layers_appear_after_the_stage_switch_and_steps_keep_rising(
    tmp_path,
):
    keras.utils.set_random_seed(4)
    classifier = NeuropathologyClassifier(
        weights=None,
        image_size=32,
        dense_units=(16, 8),
        backbone_options={"alpha": 0.35},
    )
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(16) % 17, 17).astype("float32")
    log_dir = tmp_path / "logs" / "gradients"
    watcher = GradientNormLogger(
        x[:8], y[:8], log_dir, flow_plot=tmp_path / "gradient_flow.png"
    )

    classifier.freeze_backbone()
    classifier.compile(1e-3)
    classifier.model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[watcher])
    classifier.unfreeze_backbone(10, freeze_batchnorm=False)
    classifier.compile(1e-4)
    classifier.model.fit(
        x, y, batch_size=8, initial_epoch=1, epochs=3, verbose=0, callbacks=[watcher]
    )
    scalars, _ = _events(log_dir)

    # Two steps an epoch; the new optimizer restarts at 0, the log does not.
    assert sorted(scalars["gradient_norm/global"]) == [2, 4, 6]
    backbone = [t for t in scalars if t.startswith("gradient_norm/backbone/")]
    assert "gradient_norm/backbone/Conv_1/kernel" in backbone
    assert all(sorted(scalars[t]) == [4, 6] for t in backbone)
    assert sorted(scalars["gradient_norm/fc1/kernel"]) == [2, 4, 6]
    rows = read_gradient_table(tmp_path)
    assert {(r.layer, r.parameter) for r in rows} >= {("backbone/Conv_1", "kernel")}
    assert (tmp_path / "gradient_flow.png").stat().st_size > 10_000


def test_clipped_update_respects_the_clip_while_the_raw_norm_is_logged(tmp_path):
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(1, use_bias=False, name="linear")]
    )
    clip = 0.5
    model.compile(keras.optimizers.SGD(1.0, global_clipnorm=clip), "mse")
    x = np.random.default_rng(5).normal(size=(8, 4)).astype("float32") * 10
    y = np.full((8, 1), 100.0, "float32")
    start = model.get_layer("linear").kernel.numpy()
    watcher = GradientNormLogger(x, y, tmp_path)

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[watcher])
    scalars, _ = _events(tmp_path)

    update = np.linalg.norm(model.get_layer("linear").kernel.numpy() - start)
    raw = scalars["gradient_norm/global"][1]
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x))
    expected = float(tf.norm(tape.gradient(loss, model.trainable_variables)[0]))
    np.testing.assert_allclose(raw, expected, rtol=1e-5)
    assert raw > 10 * clip
    np.testing.assert_allclose(scalars["gradient_norm/global_clipped"][1], clip)
    np.testing.assert_allclose(update, clip, rtol=1e-5)


def test_mixed_precision_logs_the_unscaled_float32_gradient(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _head_model()
        x, y = _data()
        watcher = GradientNormLogger(x[:8], y[:8], tmp_path)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[watcher])
        scalars, _ = _events(tmp_path)

        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert float(model.optimizer.dynamic_scale) > 1
        _assert_logged_norms_equal(model, scalars, x[:8], y[:8], step=3, rtol=1e-2)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_under_a_distribution_strategy_the_probe_runs_in_cross_replica_context(
    tmp_path,
):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = _head_model()
    x, y = _data()
    watcher = GradientNormLogger(x[:8], y[:8], tmp_path)

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[watcher])
    scalars, _ = _events(tmp_path)

    _assert_logged_norms_equal(model, scalars, x[:8], y[:8], step=3)


def test_with_two_replicas_the_logged_norms_are_those_of_the_whole_probe_batch(
    tmp_path,
):
    script = Path(__file__).with_name("two_replica_probe.py")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])

    assert outcome["replicas"] == 2
    assert len(outcome["rows"]) == 6
    for row in outcome["rows"]:
        assert row["logged"] > 0, row
        np.testing.assert_allclose(row["logged"], row["direct"], rtol=1e-5)


def test_gradient_config_defaults_and_errors():
    config = load_config(None)
    assert config.to_dict()["gradients"] == {
        "enabled": True,
        "every_epochs": 1,
        "every_steps": None,
        "probe_size": 32,
        "histograms": True,
        "vanishing_threshold": 1e-7,
        "exploding_threshold": 1e3,
        "stop_on_nonfinite": True,
    }
    with pytest.raises(ValueError, match="gradients.every_epochs must be >= 1"):
        load_config(None, ["gradients.every_epochs=0"])
    with pytest.raises(ValueError, match="below gradients.exploding_threshold"):
        load_config(
            None,
            ["gradients.vanishing_threshold=10", "gradients.exploding_threshold=1"],
        )


def test_probe_batch_is_a_fixed_unaugmented_sample_of_the_training_split(
    demo_subset,
):
    from neuropath.dataset import scan_dataset, split_records

    config = load_config(
        None,
        [
            f"data.data_dir={demo_subset}",
            "data.image_size=32",
            "gradients.probe_size=12",
        ],
    )
    records = split_records(scan_dataset(demo_subset, verify=False).records, 0.15, 0.15)

    images, labels = probe_batch(config, records)
    again, _ = probe_batch(config, records)

    assert images.shape == (12, 32, 32, 3) and labels.shape == (12, 17)
    np.testing.assert_array_equal(images, again)
    assert len(set(labels.argmax(axis=1))) >= 6
