"""Strategies, precision and batch rules; training on two replicas and two workers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_gradient_logging import _events

from neuropath.config import load_config
from neuropath.distribute import (
    global_batch_size,
    is_chief,
    make_strategy,
    precision_policy,
    read_tf_config,
    scaled_learning_rate,
    shareable_batch_size,
)
from neuropath.gradient_logging import GradientNormLogger
from neuropathology_model import NeuropathologyClassifier

RUN_SCRIPT = Path(__file__).with_name("distributed_training_run.py")
REPO = Path(__file__).resolve().parents[1]
# A distributed run that hangs fails the test instead of blocking the suite.
RUN_TIMEOUT_S = 400


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"localhost:{port}" for port in ports]
    return json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    )


def test_tf_config_is_read_and_checked():
    config = read_tf_config({"TF_CONFIG": _tf_config([1234, 1235], 1)})
    assert config["task"] == {"type": "worker", "index": 1}

    with pytest.raises(ValueError, match="TF_CONFIG environment variable is not"):
        read_tf_config({})
    with pytest.raises(ValueError, match="not valid JSON"):
        read_tf_config({"TF_CONFIG": "{cluster: 1"})
    with pytest.raises(ValueError, match="index 2 is out of range for the 2"):
        read_tf_config({"TF_CONFIG": _tf_config([1234, 1235], 2)})
    with pytest.raises(ValueError, match="'host:port' addresses"):
        read_tf_config(
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": [1234]}, "task": {"index": 0}}
                )
            }
        )
    with pytest.raises(ValueError, match="task type 'ps' is not in the cluster"):
        read_tf_config(
            {
                "TF_CONFIG": json.dumps(
                    {
                        "cluster": {"worker": ["a:1"]},
                        "task": {"type": "ps", "index": 0},
                    }
                )
            }
        )


def test_multi_worker_strategy_without_tf_config_names_the_fix(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="train.strategy=mirrored"):
        make_strategy("multi_worker")


def test_batch_and_learning_rate_rules():
    strategy = make_strategy("default")
    assert strategy.num_replicas_in_sync == 1
    assert is_chief(strategy)
    assert global_batch_size(64, strategy) == 64
    assert scaled_learning_rate(1e-3, 4, "linear") == pytest.approx(4e-3)
    assert scaled_learning_rate(1e-3, 4, "none") == 1e-3
    # Validation batches: equal shares, and no replica left without images.
    assert shareable_batch_size(17, 16, 2) == 14  # 14 + 3
    assert shareable_batch_size(32, 16, 2) == 16
    assert shareable_batch_size(13, 16, 4) == 8  # 8 + 5, not 12 + 1
    assert shareable_batch_size(9, 16, 4) is None  # 8 + 1 and 4 + 4 + 1 both fail
    with pytest.raises(ValueError, match="expected one of \\['linear', 'none'\\]"):
        scaled_learning_rate(1e-3, 4, "sqrt")


def test_device_config_keys_defaults_and_errors():
    train = load_config(None).train
    assert (train.mixed_precision, train.jit_compile) == (None, "auto")
    assert (train.strategy, train.scale_learning_rate) == ("default", "linear")
    config = load_config(
        None, ["train.mixed_precision=mixed_bfloat16", "train.jit_compile=true"]
    )
    assert config.train.mixed_precision == "mixed_bfloat16"
    assert config.train.jit_compile is True
    for override, key in [
        ("train.mixed_precision=float16", "train.mixed_precision"),
        ("train.jit_compile=sometimes", "train.jit_compile"),
        ("train.strategy=parameter_server", "train.strategy"),
        ("train.scale_learning_rate=sqrt", "train.scale_learning_rate"),
    ]:
        with pytest.raises(ValueError, match=f"{key} must be one of"):
            load_config(None, [override])


@pytest.mark.parametrize(
    "policy, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")]
)
def test_mixed_precision_keeps_the_softmax_in_float32(policy, compute):
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))
    with precision_policy(policy):
        classifier = NeuropathologyClassifier(
            weights=None, image_size=32, backbone_options={"alpha": 0.35}
        )
    assert keras.mixed_precision.global_policy().name == "float32"

    model = classifier.model
    assert model.get_layer("fc1").compute_dtype == compute
    assert model.get_layer("fc1").kernel.dtype == "float32"
    assert model.get_layer("output").compute_dtype == "float32"
    probabilities = model(images.astype("float32"))
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, rtol=1e-6)


def test_gradient_logger_on_the_classifier_under_mixed_float16_logs_unscaled_norms(
    tmp_path,
):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 17, 16), 17)
    with precision_policy("mixed_float16"):
        classifier = NeuropathologyClassifier(
            weights=None,
            image_size=32,
            dropout_rates=(0.0, 0.0),  # the test's own gradient must match
            backbone_options={"alpha": 0.35},
        )
        classifier.compile(1e-3, jit_compile=False)
        watcher = GradientNormLogger(images[:8], labels[:8], tmp_path, histograms=False)
        classifier.model.fit(
            images, labels, batch_size=8, epochs=1, verbose=0, callbacks=[watcher]
        )
    model = classifier.model
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(optimizer.dynamic_scale) > 1

    scalars, _ = _events(tmp_path)
    with tf.GradientTape() as tape:
        predictions = model(images[:8], training=True)
        loss = keras.losses.CategoricalCrossentropy()(labels[:8], predictions)
    gradients = tape.gradient(loss, model.trainable_variables)
    squares = [
        float(tf.reduce_sum(tf.square(tf.cast(g, "float32")))) for g in gradients
    ]
    expected = float(np.sqrt(sum(squares)))
    (logged,) = scalars["gradient_norm/global"].values()
    assert np.isfinite(logged) and logged > 0
    # float16 activations: a loose tolerance, far below the loss scale's factor.
    np.testing.assert_allclose(logged, expected, rtol=0.05)
    assert not any(a.kind == "nonfinite" for a in watcher.alarms)


def _run(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RUN_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _finish(process: subprocess.Popen) -> dict:
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"distributed run hung past {RUN_TIMEOUT_S} s: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
    )
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    """Four demo images of every class."""
    target = tmp_path_factory.mktemp("tiny-demo")
    for folder in sorted(p for p in (REPO / "data" / "demo").iterdir() if p.is_dir()):
        (target / folder.name).mkdir()
        for path in sorted(folder.glob("*.jpg"))[:4]:
            shutil.copy(path, target / folder.name / path.name)
    return target


def test_mirrored_training_on_two_cpu_replicas_finishes_with_a_model(
    tiny_demo, tmp_path
):
    run_dir = tmp_path / "run"
    outcome = _finish(_run(["mirrored", str(tiny_demo), str(run_dir)], _environment()))

    assert outcome["replicas"] == 2
    assert Path(outcome["model_path"]) == run_dir / "model.keras"
    model = NeuropathologyClassifier.load(run_dir / "model.keras")
    assert model.model.output_shape == (None, 17)
    log = (run_dir / "training_log.csv").read_text().splitlines()
    assert len(log) == 3  # header and two epochs
    assert any((run_dir / "logs" / "gradients").glob("events.out.tfevents*"))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_two_workers_finish_with_identical_weights(tiny_demo, tmp_path):
    ports = _free_ports(2)
    processes = [
        _run(
            [
                "multi_worker",
                str(tiny_demo),
                str(tmp_path / "run"),
                str(tmp_path / f"weights{index}.npz"),
            ],
            _environment(TF_CONFIG=_tf_config(ports, index)),
        )
        for index in range(2)
    ]
    outcomes = [_finish(process) for process in processes]

    assert [o["replicas"] for o in outcomes] == [2, 2]
    # The chief writes the run folder; the other worker a temporary one.
    assert Path(outcomes[0]["run_dir"]) == tmp_path / "run"
    assert Path(outcomes[1]["run_dir"]) != tmp_path / "run"
    assert (tmp_path / "run" / "model.keras").exists()
    chief, worker = (np.load(tmp_path / f"weights{i}.npz") for i in range(2))
    trained = [name for name in chief.files if name.startswith("trained:")]
    assert sorted(chief.files) == sorted(worker.files) and len(trained) > 100
    for name in trained:
        np.testing.assert_array_equal(chief[name], worker[name], err_msg=name)
    # BatchNorm moving statistics are each worker's own, from its share.
    statistics = [name for name in chief.files if name.startswith("statistic:")]
    assert all(np.all(np.isfinite(worker[name])) for name in statistics)
    shutil.rmtree(outcomes[1]["run_dir"])
