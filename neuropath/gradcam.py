"""Grad-CAM heat maps: where in a slice the classifier found its evidence.

The *feature map* is the output of a convolutional layer of the backbone (its
last one unless named); a *heat map* is the ReLU of the feature map's channels
weighted by the spatially averaged gradients of a class's score (its logit),
upsampled to the model input and scaled to [0, 1] per image.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "GradCam",
    "GradCamResult",
    "feature_layer_name",
    "normalize_maps",
]

logger = logging.getLogger(__name__)

BACKBONE_LAYER = "backbone"


def _output_rank(layer: keras.layers.Layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # Layers never called have no output.
        return None


def feature_layer_name(backbone: keras.Model) -> str:
    """The name of the backbone's last layer with a 4-D output.

    Every supported backbone is built without its top, so this is the last
    convolutional block's activation (``out_relu`` for MobileNetV2,
    ``top_activation`` for EfficientNetB0, ``conv5_block3_out`` for ResNet50,
    ``relu`` for DenseNet121).

    Args:
        backbone: the headless convolutional network.

    Returns:
        The layer name.

    Raises:
        ValueError: no layer of ``backbone`` has a 4-D output.
    """
    for layer in reversed(backbone.layers):
        if _output_rank(layer) == 4 and not isinstance(layer, keras.layers.InputLayer):
            return layer.name
    raise ValueError(
        f"Backbone {backbone.name!r} has no layer with a 4-D output "
        "(batch, height, width, channels) to explain; pass a convolutional "
        "layer's name with --layer."
    )


def _check_layer(backbone: keras.Model, name: str | None) -> str:
    if name is None:
        return feature_layer_name(backbone)
    names = [layer.name for layer in backbone.layers]
    if name not in names:
        raise ValueError(
            f"--layer {name!r} is not a layer of the backbone "
            f"{backbone.name!r}; its last layers are {names[-5:]} (any layer "
            "with a 4-D output will do)."
        )
    if _output_rank(backbone.get_layer(name)) != 4:
        raise ValueError(
            f"--layer {name!r} has no 4-D output (batch, height, width, "
            f"channels); choose a convolutional layer, such as "
            f"{feature_layer_name(backbone)!r}."
        )
    return name


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Scales each map to [0, 1]; a constant map becomes all zeros.

    Args:
        maps: shape ``(batch, height, width)``.

    Returns:
        float32 maps of the same shape, no NaN.
    """
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    # Spans near float32 resolution are rounding noise, not structure.
    flat = span <= 1e-6 * np.maximum(np.abs(low), 1.0)
    return np.where(flat, 0.0, (maps - low) / np.where(flat, 1.0, span)).astype(
        np.float32
    )


@dataclasses.dataclass
class GradCamResult:
    """Heat maps of a batch of images.

    Attributes:
        heatmaps: float32 in [0, 1], shape ``(batch, size, size)`` at the
            model input's size.
        probabilities: the model's probabilities, shape ``(batch, n_classes)``.
        class_indices: the class each map explains, shape ``(batch,)``.
    """

    heatmaps: np.ndarray
    probabilities: np.ndarray
    class_indices: np.ndarray


class GradCam:
    """Grad-CAM for a `NeuropathologyClassifier`.

    One Keras model maps the raw image (preprocessing included) to the feature
    map, the penultimate activations and the probabilities; the class score
    is the logit recomputed from the output layer's weights, since the
    softmax saturates and flattens the gradients of confident predictions.
    Layers are shared with the classifier, so changed weights show at once.

    Args:
        classifier: a `NeuropathologyClassifier`.
        layer: a backbone layer with a 4-D output; the last one by default.

    Example:

    >>> cam = GradCam(classifier)
    >>> result = cam.explain(images)  # images: (batch, size, size, 3)
    >>> result.heatmaps.shape
    (batch, size, size)
    """

    def __init__(self, classifier, layer: str | None = None):
        model = classifier.model
        backbone = model.get_layer(BACKBONE_LAYER)
        self.layer = _check_layer(backbone, layer)
        self.image_size = int(model.input_shape[1])
        self.output_layer = model.layers[-1]
        if not isinstance(self.output_layer, keras.layers.Dense):
            raise ValueError(
                f"The model's last layer {self.output_layer.name!r} is not a "
                "Dense layer; Grad-CAM needs the classifier's logits."
            )
        self.model = self._build(model, backbone)

    @property
    def feature_shape(self) -> tuple[int, int]:
        """Rows and columns of the feature map, the heat map's true resolution."""
        rows, columns = self.model.outputs[0].shape[1:3]
        return int(rows), int(columns)

    def _build(self, model: keras.Model, backbone: keras.Model) -> keras.Model:
        """(feature map, penultimate activations, probabilities) from raw pixels."""
        # The backbone is a nested model: its inner layers are reachable only
        # through a second model on its own graph.
        tapped = keras.Model(
            backbone.inputs,
            [backbone.get_layer(self.layer).output, backbone.outputs[0]],
            name="backbone_tapped",
        )
        inputs = keras.Input(model.input_shape[1:], name="image")
        x, features = inputs, None
        for layer in model.layers[1:-1]:
            if layer is backbone:
                features, x = tapped(x)
            else:
                x = layer(x)
        if features is None:
            raise ValueError(
                f"Layer {BACKBONE_LAYER!r} is not on the model's path; Grad-CAM "
                "expects a model built by NeuropathologyClassifier."
            )
        outputs = self.output_layer(x)
        return keras.Model(inputs, [features, x, outputs], name="gradcam")

    def _logits(self, penultimate: tf.Tensor) -> tf.Tensor:
        dense = self.output_layer
        logits = tf.matmul(tf.cast(penultimate, dense.kernel.dtype), dense.kernel)
        return logits + dense.bias if dense.use_bias else logits

    def raw_maps(
        self, images: np.ndarray, class_indices: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unscaled maps at the feature map's resolution, for one batch.

        Args:
            images: RGB pixels in 0-255, shape ``(batch, size, size, 3)``.
            class_indices: the class to explain per image, shape
                ``(batch,)``; ``None`` explains the predicted class.

        Returns:
            The maps ``(batch, rows, columns)``, the probabilities and the
            class indices explained.
        """
        images = tf.convert_to_tensor(images, tf.float32)
        with tf.GradientTape() as tape:
            features, penultimate, probabilities = self.model(images, training=False)
            if class_indices is None:
                class_indices = tf.argmax(probabilities, axis=1).numpy()
            logits = self._logits(penultimate)
            picked = tf.gather(logits, class_indices, axis=1, batch_dims=1)
            # Images do not interact in inference mode, so the gradient of the
            # sum holds each image's own gradient.
            score = tf.reduce_sum(picked)
        gradients = tape.gradient(score, features)
        weights = tf.reduce_mean(tf.cast(gradients, tf.float32), axis=(1, 2))
        maps = tf.nn.relu(
            tf.einsum("bhwc,bc->bhw", tf.cast(features, tf.float32), weights)
        )
        return maps.numpy(), probabilities.numpy(), np.asarray(class_indices)

    def explain(
        self,
        images: np.ndarray,
        class_indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 32,
    ) -> GradCamResult:
        """Heat maps at the model input's size, computed in batches.

        Args:
            images: RGB pixels in 0-255, shape ``(n, size, size, 3)``.
            class_indices: the class to explain per image, shape ``(n,)``, or
                one index for all; ``None`` explains each predicted class.
            batch_size: images per gradient pass; 32 by default.

        Returns:
            The heat maps, probabilities and explained classes.
        """
        images = np.asarray(images, dtype=np.float32)
        chosen = _check_classes(class_indices, len(images), self._n_classes)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; received {batch_size}.")

        heatmaps, probabilities, explained = [], [], []
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            maps, probs, classes = self.raw_maps(
                images[start:stop], None if chosen is None else chosen[start:stop]
            )
            resized = tf.image.resize(maps[..., None], images.shape[1:3]).numpy()
            heatmaps.append(normalize_maps(resized[..., 0]))
            probabilities.append(probs)
            explained.append(classes)
        size = images.shape[1:3]
        return GradCamResult(
            np.concatenate(heatmaps) if heatmaps else np.zeros((0, *size), "float32"),
            np.concatenate(probabilities) if probabilities else np.zeros((0, 0)),
            np.concatenate(explained).astype(int) if explained else np.zeros(0, int),
        )

    @property
    def _n_classes(self) -> int:
        return int(self.output_layer.units)


def _check_classes(
    class_indices: Sequence[int] | np.ndarray | int | None, n: int, n_classes: int
) -> np.ndarray | None:
    if class_indices is None:
        return None
    chosen = np.asarray(class_indices, dtype=int)
    if chosen.ndim == 0:
        chosen = np.full(n, int(chosen))
    if chosen.shape != (n,):
        raise ValueError(
            f"class_indices needs one index per image ({n}); received shape "
            f"{chosen.shape}."
        )
    if n and (chosen.min() < 0 or chosen.max() >= n_classes):
        raise ValueError(
            f"class_indices must lie in 0..{n_classes - 1}; received "
            f"{sorted(set(chosen.tolist()))}."
        )
    return chosen
