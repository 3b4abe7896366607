"""Gradient checks of a real classifier head, the ``gradcheck`` and ``figures``
commands, and the gradient-flow figure from TensorBoard logs."""

import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from neuropath import backprop as bp
from neuropath.classes import CLASS_NAMES
from neuropath.cli import main
from neuropath.dataset import Record, write_manifest
from neuropath.gradcheck import (
    check_head,
    gradcheck_run,
    relative_error,
    tensorflow_gradients,
)
from neuropath.theory_figures import read_gradient_logs, render_figures
from neuropathology_model import NeuropathologyClassifier

SIZE = 32
CLASSES = CLASS_NAMES[:2]
IMAGES_PER_CLASS = 3


def _randomise_head(model, rng) -> None:
    """Non-trivial BN statistics and biases, so no term of the head is zero."""
    for name in ("pool_bn", "fc2_bn"):
        layer = model.get_layer(name)
        n = layer.gamma.shape[0]
        layer.set_weights(
            [
                rng.uniform(0.5, 1.5, n),
                rng.normal(0, 0.3, n),
                rng.normal(0, 0.5, n),
                rng.uniform(0.3, 2.0, n),
            ]
        )
    for name in ("fc1", "fc2", "output"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])


@pytest.fixture(scope="module")
def classifier():
    clf = NeuropathologyClassifier(
        weights=None,
        image_size=SIZE,
        dense_units=(24, 12),
        backbone_options={"alpha": 0.35},
    )
    _randomise_head(clf.model, np.random.default_rng(3))
    return clf


@pytest.fixture(scope="module")
def probe(classifier):
    rng = np.random.default_rng(4)
    features = rng.normal(0, 1, (6, 1280)).astype("float32")
    labels = np.eye(len(classifier.class_names), dtype="float32")[[0, 3, 5, 5, 9, 16]]
    return features, labels


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradcheck-images")
    rng = np.random.default_rng(5)
    for class_name in CLASSES:
        (root / class_name).mkdir()
        for i in range(IMAGES_PER_CLASS):
            pixels = rng.integers(0, 256, (40, 40), dtype=np.uint8)
            Image.fromarray(pixels).save(root / class_name / f"slice_{i}.png")
    return root


@pytest.fixture(scope="module")
def model_file(classifier, tmp_path_factory):
    return classifier.save(tmp_path_factory.mktemp("gradcheck-model") / "m.keras")


def test_numpy_head_forward_matches_the_keras_head(classifier, probe):
    features, _ = probe
    head = bp.head_from_classifier(classifier, np.float64)
    x = tf.constant(features)
    for name in bp.HEAD_LAYERS:
        x = classifier.model.get_layer(name)(x, training=False)

    probabilities = bp.softmax(head.forward(features.astype(np.float64)))
    np.testing.assert_allclose(probabilities, x.numpy(), rtol=1e-4, atol=1e-7)


def test_numpy_head_gradients_equal_tensorflow_autodiff(classifier, probe):
    features, labels = probe
    head = bp.head_from_classifier(classifier, np.float32)
    numpy_grads = head.gradients(features, labels)
    tf_grads = tensorflow_gradients(classifier.model, features, labels)

    assert set(numpy_grads) == set(tf_grads)
    assert len(tf_grads) == 10
    for key, grad in numpy_grads.items():
        assert grad.shape == tf_grads[key].shape, key
        assert np.abs(grad).max() > 0, key
        assert relative_error(grad, tf_grads[key]) < 1e-4, key


def test_head_takes_batchnorm_epsilon_from_the_layer(classifier, probe):
    features, labels = probe
    layer = classifier.model.get_layer("pool_bn")
    default = layer.epsilon
    try:
        layer.epsilon = 0.5
        head = bp.head_from_classifier(classifier, np.float32)
        numpy_grads = head.gradients(features, labels)
        tf_grads = tensorflow_gradients(classifier.model, features, labels)
    finally:
        layer.epsilon = default

    assert head.layers[0].eps == 0.5
    assert relative_error(numpy_grads[("fc1", "W")], tf_grads[("fc1", "W")]) < 1e-4


def test_check_head_passes_both_checks(classifier, probe):
    features, labels = probe
    result = check_head(classifier, features, labels, max_entries=30)

    assert [(c.layer, c.parameter) for c in result.checks][:4] == [
        ("pool_bn", "gamma"),
        ("pool_bn", "beta"),
        ("fc1", "W"),
        ("fc1", "b"),
    ]
    assert result.passed()
    assert all(c.numeric_error < 1e-5 for c in result.checks)
    assert result.loss > 0


def test_gradcheck_command_passes_on_a_saved_model(model_file, image_folder, capsys):
    argv = ["gradcheck", "--model", str(model_file), "--data", str(image_folder)]
    code = main([*argv, "--images", "4", "--max-entries", "20"])
    out = capsys.readouterr().out

    assert code == 0
    assert out.count("PASS") == 10
    assert "FAIL" not in out
    assert "probe batch: 4 images" in out


def test_gradcheck_command_fails_when_the_relu_derivative_is_wrong(
    model_file, image_folder, capsys, monkeypatch
):
    wrong = bp.Activation(bp.relu, lambda z, alpha=None: np.ones_like(z))
    monkeypatch.setitem(bp.ACTIVATIONS, "relu", wrong)
    argv = ["gradcheck", "--model", str(model_file), "--data", str(image_folder)]
    code = main([*argv, "--images", "4", "--max-entries", "20"])
    rows = {
        tuple(line.split()[:2]): line.split()[-1]
        for line in capsys.readouterr().out.splitlines()
        if line.endswith(("PASS", "FAIL"))
    }

    assert code == 1
    # Only the layers below a ReLU see its derivative.
    for key in [("pool_bn", "gamma"), ("fc1", "W"), ("fc2", "W"), ("fc2", "b")]:
        assert rows[key] == "FAIL", key
    for key in [("fc2_bn", "gamma"), ("output", "W"), ("output", "b")]:
        assert rows[key] == "PASS", key


def test_gradcheck_command_needs_a_run_or_a_model_with_data(capsys):
    assert main(["gradcheck"]) == 2
    assert "RUN_DIR" in capsys.readouterr().err


def test_gradcheck_run_draws_its_probe_batch_from_the_training_split(
    model_file, image_folder, tmp_path
):
    records = [
        Record(f"{name}/slice_{i}.png", name, "train" if i < 2 else "test")
        for name in CLASSES
        for i in range(IMAGES_PER_CLASS)
    ]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.keras").write_bytes(model_file.read_bytes())
    write_manifest(records, run_dir / "split_manifest.csv", CLASS_NAMES)
    config = {"data": {"data_dir": str(image_folder)}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))

    result = gradcheck_run(run_dir, n_images=16, max_entries=5)

    assert result.n_images == 4
    assert result.passed()


def _write_scalars(log_dir, series: dict[str, list[float]]) -> None:
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for tag, values in series.items():
            for step, value in enumerate(values):
                tf.summary.scalar(tag, value, step=step)
    writer.close()


def test_gradient_logs_are_read_by_tag(tmp_path):
    _write_scalars(
        tmp_path / "logs" / "train",
        {
            "gradient_norm/fc1": [0.5, 0.25, 0.125],
            "gradient_norm/output": [2.0, 1.0, 0.5],
            "epoch_loss": [3.0, 2.0, 1.0],
        },
    )
    series = read_gradient_logs(tmp_path)

    assert list(series) == ["gradient_norm/fc1", "gradient_norm/output"]
    assert series["gradient_norm/fc1"] == [(0, 0.5), (1, 0.25), (2, 0.125)]


def test_figures_command_draws_gradient_norms_only_with_gradient_logs(tmp_path, capsys):
    quiet_run = tmp_path / "quiet-run"
    (quiet_run / "logs").mkdir(parents=True)
    assert main(["figures", "--out", str(tmp_path / "a"), "--run", str(quiet_run)]) == 0
    assert "has no gradient logs" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "activations.png",
        "chain_rule.png",
        "cross_entropy.png",
        "softmax.png",
    ]

    _write_scalars(tmp_path / "run" / "logs" / "train", {"grad_norm/fc1": [1, 0.5]})
    written, skipped = render_figures(tmp_path / "b", tmp_path / "run")
    assert skipped == []
    assert written[-1].name == "gradient_norms.png"
    assert written[-1].stat().st_size > 10_000
