"""Run configuration: typed sections read from YAML, with command-line overrides.

A config has five sections, ``data``, ``model``, ``train``, ``augment`` and
``gradients``, plus a run ``name``. Every key has a default; an *override* is a
``section.key=value`` string whose value is parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "FineTuneConfig",
    "FrozenStageConfig",
    "GradientLogConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
]


@dataclasses.dataclass
class DataConfig:
    """Where the images are and how they are split.

    Attributes:
        data_dir: folder with one sub-folder per class.
        image_size: side of the square model input in pixels.
        val_fraction: share of each class held out for validation.
        test_fraction: share of each class held out for testing.
        seed: seed of the split.
        manifest: an existing split manifest (CSV) to reuse instead of
            splitting anew.
        cache: ``"memory"``, a directory for an on-disk cache, or ``None``.
            A cache holds the resized images (float32, 0.6 MB each at 224 px)
            so that later epochs skip decoding; without one, nothing is held
            and the augmentation is done in the resampling that resizes.
        verify_images: decode every file once before training and leave out
            those that fail.
        strict: refuse to train when any file is unusable, instead of
            leaving it out.
        allow_cross_split_duplicates: split near-duplicate images one by one;
            by default each duplicate group stays inside one split.
    """

    data_dir: str = "data/demo"
    image_size: int = 224
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 42
    manifest: str | None = None
    cache: str | None = "memory"
    verify_images: bool = True
    strict: bool = False
    allow_cross_split_duplicates: bool = False


@dataclasses.dataclass
class AugmentConfig:
    """Training-only augmentation, applied as Keras preprocessing layers."""

    enabled: bool = True
    rotation_degrees: float = 20.0
    zoom: float = 0.10
    horizontal_flip: bool = True


@dataclasses.dataclass
class ModelConfig:
    """Arguments of `NeuropathologyClassifier` (see its docstring)."""

    backbone: str = "mobilenetv2"
    weights: str | None = "imagenet"
    dense_units: list[int] = dataclasses.field(default_factory=lambda: [512, 256])
    dropout_rates: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.3])
    batchnorm_momentum: float | None = None
    backbone_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    test_time_flip: bool = True


@dataclasses.dataclass
class FrozenStageConfig:
    """Stage 1: the head alone, backbone frozen. ``epochs: 0`` skips it."""

    epochs: int = 10
    learning_rate: float = 1e-3


@dataclasses.dataclass
class FineTuneConfig:
    """Stage 2: the top of the backbone unfrozen. ``epochs: 0`` skips it.

    Attributes:
        unfreeze_layers: how many of the backbone's last layers to train, or
            ``"all"``.
        freeze_batchnorm: keep backbone BatchNorm layers in inference mode.
            Leave on for pretrained weights; turn off when the backbone is
            trained from scratch, whose statistics must be learnt.
    """

    epochs: int = 10
    learning_rate: float = 1e-5
    unfreeze_layers: int | str = 40
    freeze_batchnorm: bool = True


LR_SCHEDULES = ("plateau", "cosine")
# Where and how training runs; see neuropath.distribute.
PRECISION_POLICIES = ("mixed_float16", "mixed_bfloat16")
JIT_COMPILE_VALUES = (False, True, "auto")
STRATEGIES = ("default", "mirrored", "multi_worker")
LEARNING_RATE_SCALING = ("linear", "none")


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings shared by both stages.

    Attributes:
        lr_schedule: ``"plateau"`` cuts the learning rate by
            ``reduce_lr_factor`` when the validation loss stalls for
            ``reduce_lr_patience`` epochs; ``"cosine"`` decays it smoothly to
            1% over each stage, which suits short runs from scratch whose
            validation loss is too noisy for plateau detection.
        mixed_precision: ``null`` (float32), ``"mixed_float16"`` (GPUs) or
            ``"mixed_bfloat16"`` (recent GPUs, TPUs, CPUs with AMX); the
            softmax output stays float32.
        jit_compile: compile the training step with XLA: ``true``, ``false``
            or ``"auto"`` (Keras decides; XLA whenever every layer supports it).
        strategy: ``"default"`` (one device), ``"mirrored"`` (every local GPU)
            or ``"multi_worker"`` (several machines, from ``TF_CONFIG``).
        scale_learning_rate: ``"linear"`` multiplies the learning rates by the
            number of replicas, whose step sees ``batch_size`` images each;
            ``"none"`` keeps them.
    """

    batch_size: int = 32
    class_weights: bool = True
    frozen: FrozenStageConfig = dataclasses.field(default_factory=FrozenStageConfig)
    fine_tune: FineTuneConfig = dataclasses.field(default_factory=FineTuneConfig)
    early_stopping_patience: int | None = 5
    lr_schedule: str = "plateau"
    reduce_lr_patience: int | None = 2
    reduce_lr_factor: float = 0.3
    min_learning_rate: float = 1e-7
    gradient_clip_norm: float | None = None
    seed: int = 42
    mixed_precision: str | None = None
    jit_compile: bool | str = "auto"
    strategy: str = "default"
    scale_learning_rate: str = "linear"


@dataclasses.dataclass
class GradientLogConfig:
    """Gradient logging on a fixed probe batch (see `GradientNormLogger`).

    Attributes:
        enabled: log per-layer gradient norms to ``logs/gradients``.
        every_epochs: log at the end of every this many epochs.
        every_steps: also log every this many training steps (null: off).
        probe_size: training images in the probe batch.
        histograms: also write gradient and weight histograms.
        vanishing_threshold: a layer gradient norm below this is an alarm.
        exploding_threshold: a layer gradient norm above this is an alarm.
        stop_on_nonfinite: stop training at a non-finite gradient.
    """

    enabled: bool = True
    every_epochs: int = 1
    every_steps: int | None = None
    probe_size: int = 32
    histograms: bool = True
    vanishing_threshold: float = 1e-7
    exploding_threshold: float = 1e3
    stop_on_nonfinite: bool = True


@dataclasses.dataclass
class RunConfig:
    """A whole training run."""

    name: str = "run"
    runs_dir: str = "runs"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    gradients: GradientLogConfig = dataclasses.field(default_factory=GradientLogConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts, as written to ``config.yaml``."""
        return dataclasses.asdict(self)

    def __post_init__(self):
        _check_config(self)


def _check_config(config: RunConfig) -> None:
    data, train = config.data, config.train
    if not 0 <= data.val_fraction < 1 or not 0 <= data.test_fraction < 1:
        raise ValueError(
            "data.val_fraction and data.test_fraction must lie in [0, 1); "
            f"received {data.val_fraction} and {data.test_fraction}."
        )
    if data.val_fraction + data.test_fraction >= 1:
        raise ValueError(
            "data.val_fraction + data.test_fraction must leave images to train "
            f"on; received {data.val_fraction} + {data.test_fraction}."
        )
    unfreeze = train.fine_tune.unfreeze_layers
    if not (unfreeze == "all" or (isinstance(unfreeze, int) and unfreeze >= 0)):
        raise ValueError(
            "train.fine_tune.unfreeze_layers must be a count >= 0 or 'all'; "
            f"received {unfreeze!r}."
        )
    if train.lr_schedule not in LR_SCHEDULES:
        raise ValueError(
            f"train.lr_schedule must be one of {LR_SCHEDULES}; "
            f"received {train.lr_schedule!r}."
        )
    if train.frozen.epochs + train.fine_tune.epochs <= 0:
        raise ValueError(
            "train.frozen.epochs and train.fine_tune.epochs are both 0: "
            "nothing to train. Give either stage at least one epoch."
        )
    if config.model.test_time_flip and not (
        config.augment.enabled and config.augment.horizontal_flip
    ):
        warnings.warn(
            "model.test_time_flip averages each prediction with the mirror "
            "image's, but training does not flip images "
            "(augment.horizontal_flip); set model.test_time_flip=false unless "
            "the classes are known to be left-right symmetric.",
            UserWarning,
            stacklevel=3,
        )
    _check_gradients(config.gradients)
    _check_devices(train)


def _check_devices(train: TrainConfig) -> None:
    choices = {
        "train.mixed_precision": (train.mixed_precision, (None, *PRECISION_POLICIES)),
        "train.jit_compile": (train.jit_compile, JIT_COMPILE_VALUES),
        "train.strategy": (train.strategy, STRATEGIES),
        "train.scale_learning_rate": (
            train.scale_learning_rate,
            LEARNING_RATE_SCALING,
        ),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(
                f"{key} must be one of {list(allowed)}; received {value!r}."
            )


def _check_gradients(gradients: GradientLogConfig) -> None:
    counts = {
        "gradients.every_epochs": gradients.every_epochs,
        "gradients.every_steps": gradients.every_steps,
        "gradients.probe_size": gradients.probe_size,
    }
    for key, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{key} must be >= 1; received {value}.")
    low, high = gradients.vanishing_threshold, gradients.exploding_threshold
    if not 0 <= low < high:
        raise ValueError(
            "gradients.vanishing_threshold must be >= 0 and below "
            f"gradients.exploding_threshold; received {low} and {high}."
        )


def _from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Builds dataclass ``cls`` from ``values``, refusing unknown keys."""
    if not isinstance(values, dict):
        raise ValueError(f"Config section {where or 'root'!r} must be a mapping.")
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"Unknown config key(s) {[_join(where, k) for k in unknown]}; "
            f"section {where or 'root'!r} accepts {sorted(names)}."
        )
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _from_dict(hint, value or {}, _join(where, key))
        else:
            kwargs[key] = _coerce(value, hint, _join(where, key))
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Checks a scalar against its annotation, turning ints into floats."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = typing.get_args(hint) if is_union else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"Config key {key!r} may not be null.")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in allowed and isinstance(value, str):
        # YAML 1.1 reads "1e-5" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            pass
    origins = tuple(typing.get_origin(a) or a for a in allowed)
    if isinstance(value, origins) and not (
        isinstance(value, bool) and bool not in origins
    ):
        return value
    raise ValueError(
        f"Config key {key!r} expects {hint}; received {value!r} "
        f"({type(value).__name__})."
    )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``section.key=value`` overrides to a nested dict, in place.

    Args:
        values: the config as nested dicts.
        overrides: strings such as ``"train.fine_tune.epochs=3"``; each value is
            parsed as YAML, so ``null``, numbers and lists work.

    Returns:
        ``values``, updated.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"Override {item!r} is not of the form section.key=value "
                "(for example train.batch_size=16)."
            )
        *parents, leaf = key.strip().split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"Override {item!r}: {part!r} is not a section.")
        node[leaf] = yaml.safe_load(raw)
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Reads a YAML config, applies overrides and validates every key.

    Args:
        path: a YAML file, or ``None`` for the defaults alone.
        overrides: ``section.key=value`` strings, applied after the file.

    Returns:
        The validated `RunConfig`.

    Raises:
        ValueError: an unknown key, a value of the wrong type or an
            inconsistent setting; the message names the key.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    apply_overrides(values, list(overrides))
    return _from_dict(RunConfig, values, "")
