"""The model-randomisation test of a saliency method.

A heat map that explains the classifier must change when the classifier's
weights change. The test re-initialises the head's Dense layers, recomputes
the maps for the same classes and measures each image's Spearman *rank
correlation* between the trained and the randomised map: a high correlation
means the maps show the image rather than the model, and the method *fails*.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator

import keras
import numpy as np
from scipy import stats

from neuropath.gradcam import GradCam

__all__ = [
    "DEFAULT_THRESHOLD",
    "RandomisationResult",
    "model_randomisation_test",
    "randomised_head",
    "rank_correlations",
]

logger = logging.getLogger(__name__)

# Above this mean rank correlation the maps barely depend on the weights.
DEFAULT_THRESHOLD = 0.5

SaliencyFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass
class RandomisationResult:
    """The outcome of `model_randomisation_test`.

    Attributes:
        correlations: Spearman rank correlation of each image's trained and
            randomised map, shape ``(n_images,)``.
        threshold: the largest mean correlation that passes.
    """

    correlations: np.ndarray
    threshold: float = DEFAULT_THRESHOLD

    @property
    def mean(self) -> float:
        """Mean rank correlation over the images."""
        return float(np.mean(self.correlations)) if len(self.correlations) else 0.0

    @property
    def passed(self) -> bool:
        """Whether the maps depend on the weights (mean below the threshold)."""
        return self.mean < self.threshold

    @property
    def verdict(self) -> str:
        """``"passes"`` or ``"fails"``."""
        return "passes" if self.passed else "fails"


def rank_correlations(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps.

    A constant map has no ranking: it counts as fully correlated with another
    constant map and uncorrelated (0) with a map that has structure.

    Args:
        first: maps of shape ``(n, height, width)``.
        second: maps of the same shape.

    Returns:
        Correlations in [-1, 1], shape ``(n,)``.
    """
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape:
        raise ValueError(
            f"Maps to compare must have equal shapes; received {first.shape} "
            f"and {second.shape}."
        )
    values = []
    pairs = zip(
        first.reshape(len(first), -1), second.reshape(len(second), -1), strict=True
    )
    for a, b in pairs:
        flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
        if flat_a or flat_b:
            values.append(1.0 if flat_a and flat_b else 0.0)
        else:
            values.append(float(stats.spearmanr(a, b).statistic))
    return np.array(values, dtype=np.float64)


def _head_dense_layers(classifier) -> list[keras.layers.Dense]:
    # The backbone is one nested layer here, so only the head's are listed.
    return [
        layer
        for layer in classifier.model.layers
        if isinstance(layer, keras.layers.Dense)
    ]


def _seeded(initializer, seed: int):
    config = initializer.get_config()
    if "seed" in config:
        config["seed"] = seed
    return initializer.__class__.from_config(config)


@contextlib.contextmanager
def randomised_head(classifier, seed: int = 0) -> Iterator[list[str]]:
    """Re-initialises the head's Dense layers for the ``with`` block.

    Each kernel and bias is drawn again from its layer's own initializer; the
    trained weights come back when the block ends, errors included.

    Args:
        classifier: a `NeuropathologyClassifier`.
        seed: seed of the new weights; 0 by default.

    Yields:
        The names of the re-initialised layers.
    """
    layers = _head_dense_layers(classifier)
    if not layers:
        raise ValueError("The classifier has no Dense layer in its head to randomise.")
    saved = [layer.get_weights() for layer in layers]
    try:
        for k, layer in enumerate(layers):
            layer.kernel.assign(
                _seeded(layer.kernel_initializer, seed + k)(layer.kernel.shape)
            )
            if layer.use_bias:
                layer.bias.assign(
                    _seeded(layer.bias_initializer, seed + k)(layer.bias.shape)
                )
        yield [layer.name for layer in layers]
    finally:
        for layer, weights in zip(layers, saved, strict=True):
            layer.set_weights(weights)


def model_randomisation_test(
    classifier,
    images: np.ndarray,
    saliency: SaliencyFunction | None = None,
    layer: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    batch_size: int = 32,
    class_indices: np.ndarray | None = None,
) -> RandomisationResult:
    """Compares each image's heat map before and after randomising the head.

    The maps are computed for the same classes before and after, so that only
    the weights change.

    Args:
        classifier: a `NeuropathologyClassifier`.
        images: RGB pixels in 0-255, shape ``(n, size, size, 3)``.
        saliency: ``(images, class_indices) -> maps (n, height, width)``;
            Grad-CAM on ``layer`` by default.
        layer: the Grad-CAM feature layer; the backbone's last by default.
        threshold: the largest mean correlation that passes; 0.5 by default.
        seed: seed of the random weights.
        batch_size: images per gradient pass.
        class_indices: the class to explain per image, shape ``(n,)``; the
            trained model's predicted classes by default.

    Returns:
        The per-image correlations and the verdict.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1]; received {threshold}.")
    images = np.asarray(images, dtype=np.float32)
    if saliency is None:
        cam = GradCam(classifier, layer)

        def saliency(batch, classes):
            return cam.explain(batch, classes, batch_size).heatmaps

    classes = (
        np.argmax(classifier.predict(images, batch_size), axis=1)
        if class_indices is None
        else np.broadcast_to(np.asarray(class_indices, dtype=int), len(images))
    )
    trained = saliency(images, classes)
    with randomised_head(classifier, seed) as names:
        logger.info("Randomised the weights of %s", ", ".join(names))
        randomised = saliency(images, classes)
    return RandomisationResult(rank_correlations(trained, randomised), threshold)
