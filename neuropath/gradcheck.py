"""Gradient checks of the classifier's head on a probe batch of real images.

The *probe batch* is a few labelled images; their *pooled features* (the
model's output at ``pool``, inference mode) feed the head. Each parameter of
the head gets two checks: *numeric*, central differences against the NumPy
backward pass in float64, and *tensorflow*, the NumPy gradients against
``tf.GradientTape`` through the real Keras layers in float32. Errors are
relative: ``max|a - b| / max(max|a|, max|b|)`` over the entries compared.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neuropath.backprop import HEAD_LAYERS, NumpyHead, head_from_classifier
from neuropath.dataset import Record

__all__ = [
    "GradcheckResult",
    "ParameterCheck",
    "check_head",
    "format_table",
    "gradcheck_model",
    "gradcheck_run",
    "numeric_gradient_errors",
    "pooled_features",
    "relative_error",
    "tensorflow_gradients",
]

logger = logging.getLogger(__name__)

NUMERIC_TOLERANCE = 1e-5
TENSORFLOW_TOLERANCE = 1e-4
EPS = 1e-4
MAX_ENTRIES = 200
TINY = 1e-30


@dataclasses.dataclass
class ParameterCheck:
    """Both checks of one parameter tensor.

    Attributes:
        layer: the Keras layer name, such as ``"fc1"``.
        parameter: ``"W"``, ``"b"``, ``"gamma"`` or ``"beta"``.
        shape: the parameter's shape (``W`` as ``(out, in)``).
        entries: how many entries central differences compared.
        kinks: entries skipped because ``theta +- eps`` crossed a ReLU kink.
        numeric_error: relative error, central differences vs analytic.
        tensorflow_error: relative error, NumPy vs TensorFlow.
    """

    layer: str
    parameter: str
    shape: tuple[int, ...]
    entries: int
    kinks: int
    numeric_error: float
    tensorflow_error: float

    def passed(
        self,
        numeric_tolerance: float = NUMERIC_TOLERANCE,
        tensorflow_tolerance: float = TENSORFLOW_TOLERANCE,
    ) -> bool:
        """Whether both errors are below their tolerances (NaN fails)."""
        return bool(
            self.numeric_error < numeric_tolerance
            and self.tensorflow_error < tensorflow_tolerance
        )


@dataclasses.dataclass
class GradcheckResult:
    """What a gradient check found.

    Attributes:
        checks: one `ParameterCheck` per head parameter, in layer order.
        n_images: the size of the probe batch.
        loss: the probe batch's mean cross-entropy (float64 NumPy head).
    """

    checks: list[ParameterCheck]
    n_images: int
    loss: float

    def passed(
        self,
        numeric_tolerance: float = NUMERIC_TOLERANCE,
        tensorflow_tolerance: float = TENSORFLOW_TOLERANCE,
    ) -> bool:
        """Whether every parameter passed both checks."""
        return all(
            c.passed(numeric_tolerance, tensorflow_tolerance) for c in self.checks
        )


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a - b| / max(max|a|, max|b|)``; 0 when both are all zeros."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)), TINY)
    return float(np.max(np.abs(a - b)) / scale)


# Central differences.


def _sample_entries(size: int, max_entries: int, rng: np.random.Generator):
    if size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, max_entries, replace=False))


def _central_difference(
    head: NumpyHead,
    layer: int,
    parameter: np.ndarray,
    index: int,
    features: np.ndarray,
    labels: np.ndarray,
    eps: float,
) -> float | None:
    """``(L(theta + eps) - L(theta - eps)) / 2 eps`` for one entry, or ``None``
    when the two evaluations sit on different sides of a ReLU kink."""
    original = parameter.flat[index]
    try:
        parameter.flat[index] = original + eps
        loss_plus = head.loss(features, labels, start=layer)
        pattern_plus = head.kink_pattern()
        parameter.flat[index] = original - eps
        loss_minus = head.loss(features, labels, start=layer)
        pattern_minus = head.kink_pattern()
    finally:
        parameter.flat[index] = original
    if not np.array_equal(pattern_plus, pattern_minus):
        return None
    return (loss_plus - loss_minus) / (2 * eps)


def numeric_gradient_errors(
    head: NumpyHead,
    features: np.ndarray,
    labels: np.ndarray,
    eps: float = EPS,
    max_entries: int = MAX_ENTRIES,
    seed: int = 0,
) -> dict[tuple[str, str], tuple[float, int, int]]:
    """Compares the head's analytic gradients with central differences.

    Run it on a float64 head: in float32 the differences drown in rounding.

    Args:
        head: the NumPy head; its parameters are perturbed and restored.
        features: pooled features, ``(batch, features)``.
        labels: one-hot labels, ``(batch, classes)``.
        eps: the step of the central difference; 1e-4 by default.
        max_entries: at most this many entries per tensor, a seeded random
            subset of the bigger ones; 200 by default.
        seed: the seed of that subset.

    Returns:
        ``{(layer, parameter): (relative error, entries compared, kinks)}``.
    """
    if eps <= 0 or max_entries < 1:
        raise ValueError(
            f"eps must be > 0 and max_entries >= 1; received eps={eps}, "
            f"max_entries={max_entries}."
        )
    analytic = head.gradients(features, labels)
    rng = np.random.default_rng(seed)
    results = {}
    for key, parameter in head.parameters().items():
        layer = head.layer_index(key[0])
        # A clean pass, so the layers below `layer` hold unperturbed outputs.
        head.forward(features)
        indices = _sample_entries(parameter.size, max_entries, rng)
        numeric = [
            _central_difference(head, layer, parameter, i, features, labels, eps)
            for i in indices
        ]
        smooth = [k for k, value in enumerate(numeric) if value is not None]
        error = relative_error(
            analytic[key].flat[indices[smooth]],
            np.array([numeric[k] for k in smooth], np.float64),
        )
        results[key] = (error, len(smooth), len(indices) - len(smooth))
    return results


# TensorFlow autodiff through the real Keras layers.


def tensorflow_gradients(
    model, features: np.ndarray, labels: np.ndarray
) -> dict[tuple[str, str], np.ndarray]:
    """The head's gradients by ``tf.GradientTape``, in inference mode.

    Args:
        model: the classifier's ``keras.Model``.
        features: pooled features, ``(batch, features)``.
        labels: one-hot labels, ``(batch, classes)``.

    Returns:
        Gradients keyed and shaped as `NumpyHead.gradients` (``W`` as
        ``(out, in)``) for the loss ``mean categorical cross-entropy``.
    """
    import keras
    import tensorflow as tf

    layers = [model.get_layer(name) for name in HEAD_LAYERS]
    variables = {}
    for layer in layers:
        if isinstance(layer, keras.layers.Dense):
            variables[(layer.name, "W")] = layer.kernel
            variables[(layer.name, "b")] = layer.bias
        elif isinstance(layer, keras.layers.BatchNormalization):
            variables[(layer.name, "gamma")] = layer.gamma
            variables[(layer.name, "beta")] = layer.beta

    loss_fn = keras.losses.CategoricalCrossentropy()
    watched = [v.value for v in variables.values()]
    with tf.GradientTape() as tape:
        # A frozen layer's variables are not trainable, so not watched by default.
        tape.watch(watched)
        x = tf.convert_to_tensor(features, tf.float32)
        for layer in layers:
            x = layer(x, training=False)
        loss = loss_fn(tf.convert_to_tensor(labels, tf.float32), x)
    grads = tape.gradient(loss, watched)
    return {
        key: np.asarray(g).T if key[1] == "W" else np.asarray(g)
        for key, g in zip(variables, grads, strict=True)
    }


def check_head(
    classifier,
    features: np.ndarray,
    labels: np.ndarray,
    eps: float = EPS,
    max_entries: int = MAX_ENTRIES,
    seed: int = 0,
) -> GradcheckResult:
    """Runs both checks on every parameter of a classifier's head.

    Args:
        classifier: a `NeuropathologyClassifier` or its ``keras.Model``.
        features: pooled features, ``(batch, features)``.
        labels: one-hot labels, ``(batch, classes)``.
        eps, max_entries, seed: as in `numeric_gradient_errors`.

    Returns:
        The `GradcheckResult`.
    """
    model = getattr(classifier, "model", classifier)
    head64 = head_from_classifier(model, np.float64)
    features64, labels64 = features.astype(np.float64), labels.astype(np.float64)
    numeric = numeric_gradient_errors(
        head64, features64, labels64, eps, max_entries, seed
    )
    loss = head64.loss(features64, labels64)

    head32 = head_from_classifier(model, np.float32)
    numpy32 = head32.gradients(features.astype(np.float32), labels.astype(np.float32))
    reference = tensorflow_gradients(model, features, labels)

    checks = []
    for key, parameter in head64.parameters().items():
        error, entries, kinks = numeric[key]
        if kinks:
            logger.info("%s/%s: %d entries skipped at ReLU kinks", *key, kinks)
        checks.append(
            ParameterCheck(
                *key,
                shape=parameter.shape,
                entries=entries,
                kinks=kinks,
                numeric_error=error,
                tensorflow_error=relative_error(numpy32[key], reference[key]),
            )
        )
    return GradcheckResult(checks, int(features.shape[0]), loss)


# The probe batch.


def _check_options(n_images: int, eps: float, max_entries: int) -> None:
    if n_images < 1 or eps <= 0 or max_entries < 1:
        raise ValueError(
            "The probe batch needs n_images >= 1, eps > 0 and max_entries >= 1; "
            f"received n_images={n_images}, eps={eps}, max_entries={max_entries}."
        )


def _select(records: Sequence[Record], n_images: int, seed: int) -> list[Record]:
    if not records:
        raise ValueError("No labelled images to build a probe batch from.")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(records), min(n_images, len(records)), replace=False)
    return [records[i] for i in sorted(chosen)]


def _load_probe_batch(
    records: Sequence[Record],
    root: Path,
    class_names: Sequence[str],
    image_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes the records' images; returns ``(images, one-hot labels)``."""
    import tensorflow as tf

    from neuropath.dataset import load_image

    index = {name: i for i, name in enumerate(class_names)}
    paths = [str(root / r.path) for r in records]
    labels = np.eye(len(class_names), dtype=np.float32)[
        [index[r.class_name] for r in records]
    ]
    dataset = (
        tf.data.Dataset.from_tensor_slices((paths, labels))
        .map(lambda path, label: (load_image(path, image_size), label))
        .ignore_errors(log_warning=True)
        .batch(len(paths))
    )
    batches = list(dataset)
    if not batches:
        raise ValueError(f"None of the {len(paths)} probe images under {root} decode.")
    images, labels = batches[0]
    return images.numpy(), labels.numpy()


def pooled_features(classifier, images: np.ndarray) -> np.ndarray:
    """The model's output at ``pool`` for raw images, in inference mode.

    Args:
        classifier: a `NeuropathologyClassifier`.
        images: RGB pixels in 0-255, ``(batch, size, size, 3)``.

    Returns:
        float32 features, ``(batch, features)``.
    """
    import keras

    model = classifier.model
    to_pool = keras.Model(model.input, model.get_layer("pool").output)
    return np.asarray(to_pool(images, training=False), dtype=np.float32)


def _check_images(
    classifier,
    records: Sequence[Record],
    root: str | os.PathLike,
    n_images: int,
    eps: float,
    max_entries: int,
    seed: int,
) -> GradcheckResult:
    probe = _select(records, n_images, seed)
    images, labels = _load_probe_batch(
        probe, Path(root), classifier.class_names, classifier.image_size
    )
    features = pooled_features(classifier, images)
    logger.info("Probe batch: %d images, features %s", len(images), features.shape)
    return check_head(classifier, features, labels, eps, max_entries, seed)


def gradcheck_run(
    run_dir: str | os.PathLike,
    n_images: int = 16,
    data_dir: str | os.PathLike | None = None,
    eps: float = EPS,
    max_entries: int = MAX_ENTRIES,
    seed: int = 0,
) -> GradcheckResult:
    """Checks the head of a run's model on images of its training split.

    Args:
        run_dir: a run folder written by ``neuropath train``.
        n_images: size of the probe batch, a seeded sample; 16 by default.
        data_dir: where the images are, if they moved since training.
        eps, max_entries, seed: as in `numeric_gradient_errors`.
    """
    from neuropath.run_folder import open_run

    _check_options(n_images, eps, max_entries)
    run = open_run(run_dir, data_dir)
    return _check_images(
        run.classifier,
        run.split("train"),
        run.data_dir,
        n_images,
        eps,
        max_entries,
        seed,
    )


def gradcheck_model(
    model_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    n_images: int = 16,
    eps: float = EPS,
    max_entries: int = MAX_ENTRIES,
    seed: int = 0,
) -> GradcheckResult:
    """Checks the head of a saved model on images of a data set folder.

    Args:
        model_path: a ``.keras`` file saved by neuropath.
        data_dir: a folder with one sub-folder per class.
        n_images: size of the probe batch, a seeded sample; 16 by default.
        eps, max_entries, seed: as in `numeric_gradient_errors`.
    """
    from neuropath.dataset import scan_dataset
    from neuropathology_model import NeuropathologyClassifier

    _check_options(n_images, eps, max_entries)
    from neuropath.class_match import check_class_names
    from neuropath.classes import CLASS_NAMES

    classifier = NeuropathologyClassifier.load(model_path)
    check_class_names(classifier.class_names, CLASS_NAMES, str(model_path), data_dir)
    records = scan_dataset(data_dir, classifier.class_names).records
    return _check_images(
        classifier, records, data_dir, n_images, eps, max_entries, seed
    )


def format_table(
    result: GradcheckResult,
    numeric_tolerance: float = NUMERIC_TOLERANCE,
    tensorflow_tolerance: float = TENSORFLOW_TOLERANCE,
) -> str:
    """The per-parameter table: errors and PASS/FAIL against the tolerances."""
    header = (
        f"{'layer':<8} {'param':<6} {'shape':<12} {'checked':>7} "
        f"{'numeric vs analytic':>20} {'numpy vs tf':>12}  result"
    )
    lines = [
        f"probe batch: {result.n_images} images, loss {result.loss:.4f}; "
        f"tolerances: numeric {numeric_tolerance:g}, tf {tensorflow_tolerance:g}",
        header,
        "-" * len(header),
    ]
    for c in result.checks:
        verdict = (
            "PASS" if c.passed(numeric_tolerance, tensorflow_tolerance) else "FAIL"
        )
        shape = "x".join(str(n) for n in c.shape)
        lines.append(
            f"{c.layer:<8} {c.parameter:<6} {shape:<12} {c.entries:>7} "
            f"{c.numeric_error:>20.2e} {c.tensorflow_error:>12.2e}  {verdict}"
        )
    return "\n".join(lines)
