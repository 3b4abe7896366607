"""The neuropathology classifier: an ImageNet backbone and a small dense head.

The *backbone* is a convolutional network from ``keras.applications`` without
its top; the *head* is pooling, BatchNorm, two ReLU layers (``fc1``, ``fc2``)
with dropout and a softmax ``output`` layer over the 17 classes. The model
takes raw RGB pixels in 0-255 and applies the backbone's own preprocessing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from neuropath.classes import CLASS_NAMES

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "ImageNetWeightsUnavailableError",
    "ModelFileError",
    "NeuropathologyClassifier",
]

METADATA_ENTRY = "neuropath.json"
IMAGENET_CACHE = Path("~/.keras/models").expanduser()


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and prepare pixels for it.

    Attributes:
        constructor: the ``keras.applications`` model function.
        preprocess: the application's ``preprocess_input``, applied to raw
            RGB pixels in 0-255.
        features: length of the globally pooled feature vector.
    """

    constructor: Callable[..., keras.Model]
    preprocess: Callable[[Any], Any]
    features: int


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenetv2": BackboneSpec(
        keras.applications.MobileNetV2,
        keras.applications.mobilenet_v2.preprocess_input,
        1280,
    ),
    "efficientnetb0": BackboneSpec(
        keras.applications.EfficientNetB0,
        keras.applications.efficientnet.preprocess_input,
        1280,
    ),
    "resnet50": BackboneSpec(
        keras.applications.ResNet50,
        keras.applications.resnet50.preprocess_input,
        2048,
    ),
    "densenet121": BackboneSpec(
        keras.applications.DenseNet121,
        keras.applications.densenet.preprocess_input,
        1024,
    ),
}


class ImageNetWeightsUnavailableError(RuntimeError):
    """Raised when ImageNet weights can be neither found nor downloaded."""


class ModelFileError(ValueError):
    """Raised when a saved model file cannot be used."""


def _check_backbone(name: str) -> BackboneSpec:
    key = name.lower()
    if key not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}; expected one of {sorted(BACKBONES)}."
        )
    return BACKBONES[key]


@keras.saving.register_keras_serializable(package="neuropath")
class BackbonePreprocessing(keras.layers.Layer):
    """Applies a backbone's own ``preprocess_input`` to raw RGB pixels.

    Kept as a layer so that a saved model carries its preprocessing and
    predicts correctly on raw images.

    Args:
        backbone: a key of `BACKBONES`.
    """

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone.lower()
        self._preprocess = _check_backbone(backbone).preprocess

    def call(self, inputs):
        return self._preprocess(keras.ops.cast(inputs, self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def _load_backbone(
    spec: BackboneSpec,
    weights: str | os.PathLike | None,
    input_shape: tuple[int, int, int],
    options: dict[str, Any],
) -> keras.Model:
    """Builds the headless backbone, turning a failed download into one message."""
    if weights not in (None, "imagenet"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Backbone weights file {str(path)!r} does not exist; pass "
                "weights='imagenet', weights=None or the path of a local file "
                "of headless ImageNet weights (an .h5 file)."
            )
        weights = str(path)
    try:
        return spec.constructor(
            include_top=False,
            weights=weights,
            input_shape=input_shape,
            name="backbone",
            **options,
        )
    except Exception as err:
        if weights == "imagenet" and "URL fetch failure" in str(err):
            raise ImageNetWeightsUnavailableError(
                f"Could not download the ImageNet weights of "
                f"{spec.constructor.__name__} (no network?). Copy the "
                f"headless weights file into {IMAGENET_CACHE} or pass its path "
                "as model.weights=PATH, or train from scratch with "
                "model.weights=null."
            ) from None
        raise


class NeuropathologyClassifier:
    """A transfer-learning classifier of 2-D brain MRI slices.

    Args:
        class_names: the class names in output order; 17 by default.
        backbone: a key of `BACKBONES`; ``"mobilenetv2"`` by default.
        weights: ``"imagenet"`` (the default), ``None`` for random
            initialisation, or the path of a local weights file.
        image_size: side of the square input in pixels; 224 by default.
        dense_units: units of ``fc1`` and ``fc2``; ``(512, 256)`` by default.
        dropout_rates: dropout after ``fc1`` and after ``fc2``'s BatchNorm;
            ``(0.5, 0.3)`` by default.
        batchnorm_momentum: if given, the momentum of every BatchNorm layer,
            backbone included. Lower values (0.9) let the moving statistics
            follow a backbone trained from scratch; ``None`` keeps Keras'.
        backbone_options: extra keyword arguments for the backbone
            constructor, such as ``{"alpha": 0.35}`` for MobileNetV2.
        test_time_flip: average each prediction with that of the left-right
            mirror image; ``False`` by default. Axial slices are close to
            mirror-symmetric and lesions occur on either side, so a model
            trained with horizontal flips sees both as the same class; the
            average cancels part of its left-right noise.

    Example:

    >>> clf = NeuropathologyClassifier(weights=None, image_size=96)
    >>> clf.model.output_shape
    (None, 17)
    """

    def __init__(
        self,
        class_names: Sequence[str] = CLASS_NAMES,
        backbone: str = "mobilenetv2",
        weights: str | os.PathLike | None = "imagenet",
        image_size: int = 224,
        dense_units: Sequence[int] = (512, 256),
        dropout_rates: Sequence[float] = (0.5, 0.3),
        batchnorm_momentum: float | None = None,
        backbone_options: dict[str, Any] | None = None,
        test_time_flip: bool = False,
    ):
        spec = _check_backbone(backbone)
        if len(dense_units) != 2 or len(dropout_rates) != 2:
            raise ValueError(
                "dense_units and dropout_rates need two values each (fc1, fc2); "
                f"received {list(dense_units)} and {list(dropout_rates)}."
            )
        self.class_names = tuple(class_names)
        self.settings = {
            "backbone": backbone.lower(),
            "image_size": int(image_size),
            "dense_units": [int(u) for u in dense_units],
            "dropout_rates": [float(r) for r in dropout_rates],
            "batchnorm_momentum": batchnorm_momentum,
            "backbone_options": dict(backbone_options or {}),
            "test_time_flip": bool(test_time_flip),
        }
        self.backbone = _load_backbone(
            spec, weights, (image_size, image_size, 3), dict(backbone_options or {})
        )
        self.model = self._build_model()
        if batchnorm_momentum is not None:
            for layer in _batchnorm_layers(self.model):
                layer.momentum = float(batchnorm_momentum)

    def _build_model(self) -> keras.Model:
        size = self.settings["image_size"]
        units, rates = self.settings["dense_units"], self.settings["dropout_rates"]
        inputs = keras.Input((size, size, 3), name="image")
        x = BackbonePreprocessing(self.settings["backbone"], name="preprocessing")(
            inputs
        )
        x = self.backbone(x)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        x = keras.layers.BatchNormalization(name="pool_bn")(x)
        x = keras.layers.Dense(units[0], activation="relu", name="fc1")(x)
        x = keras.layers.Dropout(rates[0], name="fc1_dropout")(x)
        x = keras.layers.Dense(units[1], activation="relu", name="fc2")(x)
        x = keras.layers.BatchNormalization(name="fc2_bn")(x)
        x = keras.layers.Dropout(rates[1], name="fc2_dropout")(x)
        # float32 softmax keeps probabilities exact under mixed precision.
        outputs = keras.layers.Dense(
            len(self.class_names), activation="softmax", name="output", dtype="float32"
        )(x)
        return keras.Model(inputs, outputs, name="neuropathology_classifier")

    @property
    def image_size(self) -> int:
        """Side of the square input image in pixels."""
        return self.settings["image_size"]

    def freeze_backbone(self) -> None:
        """Makes only the head trainable (the first training stage)."""
        self.backbone.trainable = False

    def unfreeze_backbone(
        self, top_layers: int | None = None, freeze_batchnorm: bool = True
    ) -> None:
        """Makes the top of the backbone trainable (the fine-tuning stage).

        Args:
            top_layers: how many of the backbone's last layers to train;
                ``None`` trains them all.
            freeze_batchnorm: keep every backbone BatchNorm layer frozen and in
                inference mode. Small batches of MRI slices would otherwise
                overwrite the ImageNet statistics and wreck the features.
        """
        self.backbone.trainable = True
        layers = self.backbone.layers
        for layer in layers:
            layer.trainable = True
        if top_layers is not None:
            if top_layers < 0:
                raise ValueError(f"top_layers must be >= 0; received {top_layers}.")
            for layer in layers[: max(len(layers) - top_layers, 0)]:
                layer.trainable = False
        if freeze_batchnorm:
            for layer in _batchnorm_layers(self.backbone):
                layer.trainable = False

    def compile(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
        clipnorm: float | None = None,
        jit_compile: bool | str = "auto",
    ) -> None:
        """Compiles with Adam and categorical cross-entropy.

        Under a ``mixed_float16`` global policy Keras wraps Adam in a
        ``LossScaleOptimizer``.

        Args:
            learning_rate: Adam's learning rate, a number or a schedule.
            clipnorm: if given, clip gradients to this global norm.
            jit_compile: compile the training step with XLA: ``True``,
                ``False`` or ``"auto"`` (Keras' choice, the default).
        """
        self.model.compile(
            optimizer=keras.optimizers.Adam(
                learning_rate=learning_rate, global_clipnorm=clipnorm
            ),
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=jit_compile,
        )

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities for raw images, in batches.

        Args:
            images: RGB pixels in 0-255, shape ``(n, size, size, 3)``.
            batch_size: images per forward pass.

        Returns:
            Probabilities of shape ``(n, len(class_names))``, averaged over
            each image and its mirror image when ``test_time_flip`` is set.
        """
        images = np.asarray(images, dtype=np.float32)
        return np.concatenate(
            [
                self.probabilities(images[start : start + batch_size])
                for start in range(0, len(images), batch_size)
            ]
            or [np.zeros((0, len(self.class_names)), np.float32)]
        )

    def probabilities(self, images) -> np.ndarray:
        """Class probabilities of one batch, as every prediction is made.

        Args:
            images: RGB pixels in 0-255, an array or tensor of shape
                ``(batch, size, size, 3)``.

        Returns:
            Probabilities of shape ``(batch, len(class_names))``.
        """
        probabilities = self.model(images, training=False)
        if self.settings.get("test_time_flip", False):
            mirrored = self.model(keras.ops.flip(images, axis=2), training=False)
            probabilities = (probabilities + mirrored) / 2.0
        return keras.ops.convert_to_numpy(probabilities)

    def metadata(self) -> dict[str, Any]:
        """What is stored beside the weights: class names, settings, versions."""
        import tensorflow as tf

        return {
            "class_names": list(self.class_names),
            "settings": self.settings,
            "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        }

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Saves the model as ``.keras`` with the class names inside the file.

        The file is written to a temporary name and renamed, so an interrupted
        save never leaves a half-written model.

        Args:
            path: destination, ending in ``.keras``.
            extra: more JSON-serialisable metadata, such as the run config.

        Returns:
            The path written.
        """
        path = Path(path)
        if path.suffix != ".keras":
            raise ValueError(f"Model path must end in '.keras'; received {path}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {**self.metadata(), **(extra or {})}
        fd, tmp = tempfile.mkstemp(suffix=".keras", dir=path.parent)
        os.close(fd)
        try:
            self.model.save(tmp)
            with zipfile.ZipFile(tmp, "a") as archive:
                archive.writestr(METADATA_ENTRY, json.dumps(metadata, indent=2))
            # mkstemp creates owner-only files; a model is meant to be shared.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuropathologyClassifier:
        """Loads a model saved by `save`, with Keras safe mode on.

        Args:
            path: a ``.keras`` file written by `save`.

        Returns:
            The classifier, its class names and settings restored.

        Raises:
            ModelFileError: the file is missing, not a neuropath model, or
                cannot be deserialised.
        """
        path = Path(path)
        metadata = read_metadata(path)
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as err:
            import tensorflow as tf

            saved = metadata.get("versions", {})
            # Safe mode refuses Lambda layers and other arbitrary code; such a
            # file is not one neuropath writes, and is not loaded.
            raise ModelFileError(
                f"Could not load model {str(path)!r}: {err}. It was saved with "
                f"Keras {saved.get('keras', '?')} / TensorFlow "
                f"{saved.get('tensorflow', '?')}; this is Keras "
                f"{keras.__version__} / TensorFlow {tf.__version__}. Load it with "
                "the versions it was saved with, or retrain it with these."
            ) from err
        classifier = cls.__new__(cls)
        classifier.class_names = tuple(metadata["class_names"])
        classifier.settings = metadata["settings"]
        classifier.model = model
        classifier.backbone = model.get_layer("backbone")
        return classifier


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Reads the neuropath metadata stored inside a ``.keras`` file.

    Raises:
        ModelFileError: the file is missing or holds no neuropath metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {str(path)!r} does not exist.")
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(METADATA_ENTRY))
    except (zipfile.BadZipFile, KeyError) as err:
        raise ModelFileError(
            f"{str(path)!r} is not a model saved by neuropath (a .keras file "
            f"holding {METADATA_ENTRY}): {err}."
        ) from err


def _batchnorm_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every BatchNormalization layer of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_batchnorm_layers(layer))
    return found
