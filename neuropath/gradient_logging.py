"""Gradient logging: per-layer gradient norms on a fixed probe batch, and alarms.

The *probe batch* is a fixed set of training images with one-hot labels, drawn
once without augmentation. At each *log step* (the global training step, which
keeps counting across training stages) `GradientNormLogger` takes the gradient
of the compiled training loss on the probe batch and writes, per layer, the
*gradient norm* (L2) of every parameter, the *update ratio* (learning rate times
gradient norm over weight norm) and histograms. An *alarm* is a layer whose
gradient norm is *vanishing* (below a threshold), *exploding* (above one) or
*non-finite*. The module also reads the logs back into a per-layer table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "ALARMS_FILE",
    "GradientAlarm",
    "GradientNormLogger",
    "GradientNormRow",
    "format_gradient_table",
    "parameter_layout",
    "plot_mean_abs_gradients",
    "read_events",
    "read_gradient_table",
]

logger = logging.getLogger(__name__)

ALARMS_FILE = "alarms.json"
NORM_PREFIX = "gradient_norm/"
GLOBAL_TAGS = ("global", "global_clipped")
ALARM_KINDS = ("nonfinite", "vanishing", "exploding")


@dataclasses.dataclass(frozen=True)
class GradientAlarm:
    """One layer's suspicious gradient at one log step.

    Attributes:
        layer: the layer's name, qualified by any nested model (``backbone/Conv1``).
        kind: ``"nonfinite"``, ``"vanishing"`` or ``"exploding"``.
        step: the global training step.
        epoch: the epoch (1-based) the step belongs to.
        value: the layer's gradient norm.
    """

    layer: str
    kind: str
    step: int
    epoch: int
    value: float

    def to_json(self) -> dict[str, Any]:
        """The alarm as JSON-safe values; a non-finite norm becomes a string."""
        value = self.value if math.isfinite(self.value) else str(self.value)
        return {**dataclasses.asdict(self), "value": value}


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Which layer and parameter each trainable variable belongs to.

    ``parameters[i]`` is ``(layer, parameter)`` of ``model.trainable_variables[i]``;
    ``layers`` lists the layers holding them, input to output, and
    ``members[j]`` the variable indices of ``layers[j]``.
    """

    parameters: tuple[tuple[str, str], ...]
    layers: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]


def _leaf_layers(model: keras.Model, prefix: str = "") -> list[tuple[str, Any]]:
    """Every non-model layer as ``(qualified name, layer)``, input to output."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_leaf_layers(layer, f"{prefix}{layer.name}/"))
        else:
            found.append((prefix + layer.name, layer))
    return found


def parameter_layout(model: keras.Model) -> list[tuple[str, str]]:
    """The ``(layer, parameter)`` name of each of the model's trainable variables.

    Layers of a nested model such as the backbone are named with its name in
    front (``backbone/Conv1``); parameters keep Keras' names (``kernel``,
    ``bias``, ``gamma``, ``beta``, ``depthwise_kernel``).

    Args:
        model: a built Keras model.

    Returns:
        One pair per entry of ``model.trainable_variables``, in that order.
    """
    owner: dict[int, str] = {}
    for name, layer in _leaf_layers(model):
        for variable in layer.trainable_weights:
            owner.setdefault(id(variable), name)
    pairs, seen = [], set()
    for variable in model.trainable_variables:
        layer = owner.get(id(variable), variable.path.rpartition("/")[0] or "model")
        parameter = variable.name
        suffix = 2
        while (layer, parameter) in seen:
            parameter, suffix = f"{variable.name}_{suffix}", suffix + 1
        seen.add((layer, parameter))
        pairs.append((layer, parameter))
    return pairs


def _layout(model: keras.Model) -> _Layout:
    parameters = parameter_layout(model)
    order = [name for name, _ in _leaf_layers(model)]
    held = {layer for layer, _ in parameters}
    # Layers not found by the walk (variables owned by the model itself) go last.
    layers = [name for name in order if name in held]
    layers += sorted(held - set(layers))
    members = tuple(
        tuple(i for i, (layer, _) in enumerate(parameters) if layer == name)
        for name in layers
    )
    return _Layout(tuple(parameters), tuple(layers), members)


def _check_positive_int(name: str, value: int | None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "an integer >= 1" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {allowed}; received {value!r}.")


def _check_thresholds(vanishing: float, exploding: float) -> None:
    if not 0 <= vanishing < exploding:
        raise ValueError(
            "vanishing_threshold must be >= 0 and below exploding_threshold; "
            f"received {vanishing!r} and {exploding!r}."
        )


def _check_probe(
    images: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels, dtype="float32")
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(
            "The probe batch needs as many labels as images, at least one; "
            f"received {len(images)} image(s) and {len(labels)} label(s)."
        )
    if sample_weight is None:
        sample_weight = np.ones(len(images), dtype="float32")
    sample_weight = np.asarray(sample_weight, dtype="float32")
    if sample_weight.shape != (len(images),):
        raise ValueError(
            f"probe_sample_weight must have shape ({len(images)},); received "
            f"{sample_weight.shape}."
        )
    return images, labels, sample_weight


def _numpy(value) -> np.ndarray | list[np.ndarray]:
    if isinstance(value, (list, tuple)):
        return [keras.ops.convert_to_numpy(v) for v in value]
    return keras.ops.convert_to_numpy(value)


def _dense(gradient, variable) -> tf.Tensor:
    """A gradient as a dense float32 tensor; zeros where the loss ignores it."""
    if gradient is None:
        return tf.zeros(variable.shape, dtype="float32")
    return tf.cast(tf.convert_to_tensor(gradient), "float32")


class _ProbeFunction:
    """The traced probe of one model, optimizer and trainable-variable set.

    It returns, per trainable variable, the squared L2 norm of the gradient,
    whether it is finite, the sum of its absolute values and the squared norm
    of the weights, and the gradients themselves when histograms are wanted.
    The probe batch and loss scale are tensor arguments, so it traces once.
    """

    def __init__(self, model: keras.Model, histograms: bool):
        self.model = model
        self.optimizer = model.optimizer
        self.variables = list(model.trainable_variables)
        self.layout = _layout(model)
        self.histograms = histograms
        self.loss_scaled = isinstance(
            self.optimizer, keras.optimizers.LossScaleOptimizer
        )
        self.function = tf.function(self._probe)

    def matches(self, model: keras.Model) -> bool:
        """Whether this trace still fits the model's optimizer and variables."""
        current = [id(v) for v in model.trainable_variables]
        return model.optimizer is self.optimizer and current == [
            id(v) for v in self.variables
        ]

    def _gradients(self, images, labels, weights, scale) -> list[tf.Tensor]:
        # Keras divides the loss by the replica count inside a tf.distribute
        # strategy's scope; the probe runs once, unsharded, on the whole batch
        # in cross-replica context, so undo it. BatchNorm therefore sees the
        # whole probe batch, where each replica in training sees its share.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # The stateless scope catches every assignment the forward pass makes
        # (BatchNorm moving statistics, dropout seed state, metrics), so the
        # probe leaves the model exactly as training left it.
        with keras.StatelessScope(), tf.GradientTape() as tape:
            predictions = self.model(images, training=True)
            loss = self.model.compute_loss(
                images, labels, predictions, weights, training=True
            )
            scaled = tf.cast(loss, "float32") * float(replicas) * scale
        gradients = tape.gradient(scaled, self.variables)
        return [
            _dense(g, v) / scale for g, v in zip(gradients, self.variables, strict=True)
        ]

    def _probe(self, images, labels, weights, loss_scale) -> dict[str, Any]:
        gradients = self._gradients(images, labels, weights, loss_scale)
        if self.loss_scaled:
            # A scaled float16 gradient may overflow where the true one does
            # not; the optimizer would skip that step, so retry unscaled.
            finite = tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(g)) for g in gradients]
            )
            gradients = tf.cond(
                finite,
                lambda: gradients,
                lambda: self._gradients(images, labels, weights, tf.constant(1.0)),
            )
        outputs = {
            "squares": tf.stack([tf.reduce_sum(tf.square(g)) for g in gradients]),
            "finite": tf.stack(
                [tf.reduce_all(tf.math.is_finite(g)) for g in gradients]
            ),
            "abs_sums": tf.stack([tf.reduce_sum(tf.abs(g)) for g in gradients]),
            "weight_squares": tf.stack(
                [
                    tf.reduce_sum(tf.square(tf.cast(v, "float32")))
                    for v in self.variables
                ]
            ),
        }
        if self.histograms:
            outputs["gradients"] = gradients
            outputs["weights"] = [tf.identity(v) for v in self.variables]
        return outputs


@dataclasses.dataclass(frozen=True)
class _LayerStats:
    """One probe's numbers per layer, input to output."""

    layers: tuple[str, ...]
    norm: np.ndarray
    finite: np.ndarray
    mean_abs: np.ndarray
    update_ratio: np.ndarray


def _layer_stats(
    layout: _Layout, variables: list, result: dict[str, np.ndarray], lr: float
) -> _LayerStats:
    norm, finite, mean_abs, ratio = [], [], [], []
    for members in layout.members:
        index = list(members)
        grad_norm = math.sqrt(float(np.sum(result["squares"][index], dtype="float64")))
        weight_norm = math.sqrt(
            float(np.sum(result["weight_squares"][index], dtype="float64"))
        )
        size = sum(int(np.prod(variables[i].shape)) for i in index)
        norm.append(grad_norm)
        finite.append(bool(np.all(result["finite"][index])))
        mean_abs.append(float(np.sum(result["abs_sums"][index])) / max(size, 1))
        # A layer whose weights are all zero has no meaningful ratio.
        ratio.append(lr * grad_norm / weight_norm if weight_norm > 0 else 0.0)
    return _LayerStats(
        layout.layers,
        np.array(norm),
        np.array(finite),
        np.array(mean_abs),
        np.array(ratio),
    )


def _summary_proto(
    layout: _Layout,
    result: dict[str, Any],
    stats: _LayerStats,
    clip: float | None,
) -> bytes:
    """Every tag of one probe as one serialised ``Summary``."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.scalar.summary_v2 import scalar_pb

    # TensorBoard's own proto classes: its summary builders return them.
    summary = Summary()
    norms = np.sqrt(result["squares"].astype("float64"))
    for (layer, parameter), norm in zip(layout.parameters, norms, strict=True):
        summary.MergeFrom(scalar_pb(f"{NORM_PREFIX}{layer}/{parameter}", norm))
    for layer, ratio in zip(stats.layers, stats.update_ratio, strict=True):
        summary.MergeFrom(scalar_pb(f"update_ratio/{layer}", ratio))
    global_norm = math.sqrt(float(np.sum(result["squares"], dtype="float64")))
    summary.MergeFrom(scalar_pb(NORM_PREFIX + "global", global_norm))
    if clip is not None:
        clipped = min(global_norm, clip)
        summary.MergeFrom(scalar_pb(NORM_PREFIX + "global_clipped", clipped))
    if "gradients" in result:
        _add_histograms(summary, layout, result)
    return summary.SerializeToString()


def _add_histograms(summary, layout: _Layout, result: dict[str, Any]) -> None:
    """Gradient and weight histograms of every parameter, binned in NumPy.

    Hundreds of histogram ops inside the traced probe take minutes to compile
    on a CPU; binning here takes milliseconds.
    """
    pairs = zip(layout.parameters, result["gradients"], result["weights"], strict=True)
    for (layer, parameter), gradient, weights in pairs:
        summary.value.append(
            _histogram_value(f"gradients/{layer}/{parameter}", gradient)
        )
        summary.value.append(_histogram_value(f"weights/{layer}/{parameter}", weights))


HISTOGRAM_BINS = 30


def _histogram_value(tag: str, values: np.ndarray):
    """A TensorBoard histogram: rows of ``(left edge, right edge, count)``."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.histogram.metadata import create_summary_metadata
    from tensorboard.util.tensor_util import make_tensor_proto

    values = np.asarray(values, dtype="float64").ravel()
    # Non-finite values cannot be binned; the norms and alarms report them.
    values = values[np.isfinite(values)]
    buckets = np.zeros((HISTOGRAM_BINS, 3))
    if values.size:
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
        buckets = np.stack([edges[:-1], edges[1:], counts], axis=1)
    return Summary.Value(
        tag=tag,
        metadata=create_summary_metadata(display_name=tag, description=""),
        tensor=make_tensor_proto(buckets),
    )


@dataclasses.dataclass(frozen=True)
class _FlowRecord:
    """Mean absolute gradient per layer at one logged epoch, for the flow plot."""

    epoch: int
    step: int
    mean_abs: dict[str, float]


class GradientNormLogger(keras.callbacks.Callback):
    """Logs per-layer gradient norms of a fixed probe batch and raises alarms.

    Every ``every_epochs`` epochs, and every ``every_steps`` training steps if
    given, the gradient of the model's compiled loss on the probe batch is
    taken with dropout and BatchNorm in training mode, as in a training step,
    without changing any weight, moving statistic or random state. The tags,
    all at the global step, are ``gradient_norm/<layer>/<parameter>``,
    ``gradient_norm/global`` (the raw norm) and, when the optimizer clips,
    ``gradient_norm/global_clipped``; ``update_ratio/<layer>``; and histograms
    ``gradients/<layer>/<parameter>`` and ``weights/<layer>/<parameter>``.

    Pass one instance to every ``fit`` of a run: the step keeps counting when a
    new stage compiles a new optimizer, and the flow plot spans all stages.
    ``on_train_begin`` resets what belongs to one ``fit`` (the step offset of
    its optimizer); the alarms and the flow history belong to the run. The
    probe is traced once per optimizer and trainable-variable set. A failing
    probe is logged and switches the logger off; it never stops training.

    Under a ``mixed_float16`` policy the loss is scaled by the optimizer's
    current loss scale and the gradients unscaled in float32, retrying without
    scaling if the scaled ones overflow. Under a ``tf.distribute`` strategy the
    probe runs in cross-replica context, on one device, over the whole probe
    batch.

    Args:
        probe_images: model inputs, shape ``(probe, height, width, 3)`` for the
            classifier.
        probe_labels: one-hot labels, shape ``(probe, classes)``.
        log_dir: the folder of this logger's event files and ``alarms.json``,
            usually ``<run_dir>/logs/gradients``.
        probe_sample_weight: per-image loss weights, shape ``(probe,)``, such
            as the class weights of the labels; ones by default.
        every_epochs: log at the end of every this many epochs; 1 by default.
        every_steps: also log every this many training steps; off by default.
        histograms: also write gradient and weight histograms; on by default.
        vanishing_threshold: a layer gradient norm below this is an alarm;
            1e-7 by default.
        exploding_threshold: a layer gradient norm above this is an alarm;
            1e3 by default.
        stop_on_nonfinite: stop training at a non-finite gradient; on by
            default.
        flow_plot: where to draw the mean absolute gradient per layer at the
            end of training (a PNG), or ``None``.

    Example:

    >>> logger = GradientNormLogger(images, labels, "runs/r/logs/gradients")
    >>> model.fit(dataset, epochs=5, callbacks=[logger])
    """

    def __init__(
        self,
        probe_images: np.ndarray,
        probe_labels: np.ndarray,
        log_dir: str | os.PathLike,
        probe_sample_weight: np.ndarray | None = None,
        every_epochs: int = 1,
        every_steps: int | None = None,
        histograms: bool = True,
        vanishing_threshold: float = 1e-7,
        exploding_threshold: float = 1e3,
        stop_on_nonfinite: bool = True,
        flow_plot: str | os.PathLike | None = None,
    ):
        super().__init__()
        _check_positive_int("every_epochs", every_epochs)
        _check_positive_int("every_steps", every_steps, optional=True)
        _check_thresholds(vanishing_threshold, exploding_threshold)
        self.probe = _check_probe(probe_images, probe_labels, probe_sample_weight)
        self.log_dir = Path(log_dir)
        self.every_epochs = every_epochs
        self.every_steps = every_steps
        self.histograms = histograms
        self.vanishing_threshold = float(vanishing_threshold)
        self.exploding_threshold = float(exploding_threshold)
        self.stop_on_nonfinite = stop_on_nonfinite
        self.flow_plot = Path(flow_plot) if flow_plot is not None else None
        self.alarms: list[GradientAlarm] = []
        self.stopped_on_nonfinite = False
        self._flow: list[_FlowRecord] = []
        self._layer_order: list[str] = []
        self._warned: set[tuple[str, str]] = set()
        self._steps_done = 0
        self._last_logged = -1
        self._writer = None
        self._probe_fn: _ProbeFunction | None = None
        self._offset = 0
        self._epoch = 0
        self._switched_off = False

    @property
    def alarms_path(self) -> Path:
        return self.log_dir / ALARMS_FILE

    @property
    def steps_done(self) -> int:
        """Training steps seen so far over every stage: the logs' step axis."""
        return self._steps_done

    def continue_from(self, steps_done: int) -> None:
        """Continues the step axis of a resumed run after ``steps_done`` steps."""
        self._steps_done = int(steps_done)
        self._last_logged = int(steps_done)

    # Keras hooks.

    def on_train_begin(self, logs=None):
        # A new stage compiles a new optimizer whose count restarts at 0.
        self._offset = self._steps_done - self._iterations()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps is None:
            return
        step = self._step()
        if step % self.every_steps == 0:
            self._log(step, flow=False)

    def on_epoch_end(self, epoch, logs=None):
        step = self._step()
        if (epoch + 1) % self.every_epochs == 0:
            self._log(step, flow=True)

    def on_train_end(self, logs=None):
        self._step()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.flow_plot is not None and self._flow:
            self._draw_flow()
        if self.alarms:
            layers = {alarm.layer for alarm in self.alarms}
            logger.warning(
                "%d gradient alarm(s) in %d layer(s); see %s",
                len(self.alarms),
                len(layers),
                self.alarms_path,
            )

    # Steps and the probe.

    def _iterations(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return 0
        return int(keras.ops.convert_to_numpy(optimizer.iterations))

    def _step(self) -> int:
        """The global step; it never goes back, whatever the optimizer does."""
        self._steps_done = max(self._steps_done, self._offset + self._iterations())
        return self._steps_done

    def _log(self, step: int, flow: bool) -> None:
        if self._switched_off or step <= self._last_logged:
            return
        if not self.model.trainable_variables:
            return
        try:
            stats = self._run_probe(step)
        except Exception as err:
            # Whatever breaks in the probe, the training it watches goes on.
            self._switched_off = True
            logger.warning(
                "Gradient logging failed at step %d and is off for the rest of the "
                "run; training goes on. %s: %s",
                step,
                type(err).__name__,
                err,
            )
            return
        self._last_logged = step
        self._check_alarms(stats, step)
        if flow:
            self._remember_flow(stats, step)

    def _run_probe(self, step: int) -> _LayerStats:
        model = self.model
        if self._probe_fn is None or not self._probe_fn.matches(model):
            self._probe_fn = _ProbeFunction(model, self.histograms)
        probe = self._probe_fn
        optimizer = model.optimizer
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        scale = 1.0
        if probe.loss_scaled and optimizer.built:
            scale = float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))
        outputs = probe.function(*self.probe, tf.constant(scale))
        result = {key: _numpy(value) for key, value in outputs.items()}
        learning_rate = float(keras.ops.convert_to_numpy(inner.learning_rate))
        stats = _layer_stats(probe.layout, probe.variables, result, learning_rate)
        clip = getattr(inner, "global_clipnorm", None)
        proto = _summary_proto(probe.layout, result, stats, clip)
        if self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        with self._writer.as_default():
            tf.summary.experimental.write_raw_pb(tf.constant(proto), step=step)
        self._writer.flush()
        return stats

    # Alarms.

    def _classify(self, norm: float, finite: bool) -> str | None:
        if not finite:
            return "nonfinite"
        # Finite values whose squares overflow give an infinite norm: exploding.
        if norm < self.vanishing_threshold:
            return "vanishing"
        if norm > self.exploding_threshold:
            return "exploding"
        return None

    def _check_alarms(self, stats: _LayerStats, step: int) -> None:
        new = []
        for layer, norm, finite in zip(
            stats.layers, stats.norm, stats.finite, strict=True
        ):
            kind = self._classify(float(norm), bool(finite))
            if kind is not None:
                new.append(GradientAlarm(layer, kind, step, self._epoch, float(norm)))
        if not new:
            return
        for alarm in new:
            self._announce(alarm)
        self.alarms.extend(new)
        self._write_alarms()
        nonfinite = any(alarm.kind == "nonfinite" for alarm in new)
        if nonfinite and self.stop_on_nonfinite and not self.stopped_on_nonfinite:
            self.stopped_on_nonfinite = True
            self.model.stop_training = True
            logger.warning(
                "Stopping training at step %d: non-finite gradients; the last "
                "checkpoint with a finite loss is kept.",
                step,
            )

    def _announce(self, alarm: GradientAlarm) -> None:
        """A WARNING the first time a layer raises an alarm of a kind."""
        threshold = {
            "vanishing": f"below {self.vanishing_threshold:g}",
            "exploding": f"above {self.exploding_threshold:g}",
            "nonfinite": "not finite",
        }[alarm.kind]
        key = (alarm.layer, alarm.kind)
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        logger.log(
            level,
            "%s gradient in layer %r at step %d (epoch %d): norm %.3g, %s",
            alarm.kind.capitalize(),
            alarm.layer,
            alarm.step,
            alarm.epoch,
            alarm.value,
            threshold,
        )

    def _write_alarms(self) -> None:
        document = {
            "vanishing_threshold": self.vanishing_threshold,
            "exploding_threshold": self.exploding_threshold,
            "alarms": [alarm.to_json() for alarm in self.alarms],
        }
        tmp = self.alarms_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=2), encoding="utf-8")
        os.replace(tmp, self.alarms_path)

    # The flow plot.

    def _remember_flow(self, stats: _LayerStats, step: int) -> None:
        for name, _ in _leaf_layers(self.model):
            if name not in self._layer_order:
                self._layer_order.append(name)
        values = dict(
            zip(stats.layers, (float(v) for v in stats.mean_abs), strict=True)
        )
        self._flow.append(_FlowRecord(self._epoch, step, values))

    def _draw_flow(self) -> None:
        try:
            path = plot_mean_abs_gradients(
                self._flow, self._layer_order, self.flow_plot
            )
        except (OSError, ValueError) as err:
            logger.warning("Could not draw %s: %s", self.flow_plot, err)
            return
        logger.info("Gradient flow plot: %s", path)


# The flow plot.

MAX_FLOW_LINES = 8
MAX_TICK_LABELS = 60


def plot_mean_abs_gradients(
    records: Sequence[_FlowRecord],
    layer_order: Sequence[str],
    path: str | os.PathLike,
) -> Path:
    """Mean absolute gradient per layer, input to output, one line per epoch.

    Args:
        records: the logged epochs, each with ``epoch``, ``step`` and
            ``mean_abs`` (``{layer: value}``).
        layer_order: every layer name, input to output; those never logged
            are left out.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    from neuropath.theory_figures import _pyplot, _save, _spread

    logged = {layer for record in records for layer in record.mean_abs}
    layers = [name for name in layer_order if name in logged]
    layers += sorted(logged - set(layers))
    if not layers:
        raise ValueError("No layer gradients were logged: nothing to plot.")
    # Sixty overlapping lines read as one smear: draw an even selection of
    # epochs, always with the first and the last.
    records = _spread(list(records), MAX_FLOW_LINES)
    plt = _pyplot()
    width = min(max(8.0, 0.12 * len(layers)), 30.0)
    figure, axes = plt.subplots(figsize=(width, 5.5))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(records)))
    marker = "o-" if len(layers) <= 40 else "-"
    for record, colour in zip(records, colours, strict=True):
        values = [record.mean_abs.get(name, np.nan) for name in layers]
        label = f"epoch {record.epoch} (step {record.step})"
        axes.plot(range(len(layers)), values, marker, color=colour, label=label)
    # Every label of a deep backbone would overlap; show an even selection.
    ticks = _spread(list(range(len(layers))), MAX_TICK_LABELS)
    axes.set_xticks(ticks, [layers[i] for i in ticks], rotation=90, fontsize=7)
    axes.set_yscale("log")
    axes.set_xlabel("layer, input to output")
    axes.set_ylabel("mean |gradient|")
    axes.set_title("Gradient flow on the probe batch")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(alpha=0.3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(figure, Path(path))


# Reading the logs back.


@dataclasses.dataclass(frozen=True)
class GradientNormRow:
    """One logged gradient norm series, summarised.

    Attributes:
        layer: the layer, or ``"global"`` for the whole model.
        parameter: ``kernel``, ``bias``, ...; ``raw`` or ``clipped`` for the
            global norm.
        first, last, min, max: over the logged steps.
        steps: how many steps were logged.
        flag: the alarm kinds the layer raised, comma-separated, or ``""``.
    """

    layer: str
    parameter: str
    first: float
    last: float
    min: float
    max: float
    steps: int
    flag: str


def read_events(path: str | os.PathLike) -> tuple[list, bool]:
    """The events of one TensorBoard event file, as far as it can be read.

    Args:
        path: an ``events.out.tfevents.*`` file.

    Returns:
        ``(events, complete)``: the ``tf.compat.v1.Event`` protos in file
        order, and whether the file ended cleanly (``False`` when a record
        was cut short, as by a killed writer; the events before it are kept).
    """
    events = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            events.append(tf.compat.v1.Event.FromString(record.numpy()))
    except tf.errors.DataLossError as err:
        logger.warning("The event file %s is cut short: %s", path, err)
        return events, False
    return events, True


def _read_norm_series(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the ``gradient_norm/`` scalars.

    Tags keep the order in which the latest event file writes them, which is
    the model's input-to-output order; older tags follow.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents*"), reverse=True):
        for event in read_events(path)[0]:
            for value in event.summary.value:
                if not value.tag.startswith(NORM_PREFIX):
                    continue
                if value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    number = float(tf.make_ndarray(value.tensor).ravel()[0])
                series.setdefault(value.tag, []).append((event.step, number))
    return {tag: sorted(points) for tag, points in series.items()}


def _split_tag(tag: str) -> tuple[str, str]:
    name = tag[len(NORM_PREFIX) :]
    if name in GLOBAL_TAGS:
        return "global", "raw" if name == "global" else "clipped"
    layer, _, parameter = name.rpartition("/")
    return layer, parameter


def _read_alarm_flags(log_dir: Path) -> dict[str, str]:
    path = log_dir / ALARMS_FILE
    if not path.is_file():
        return {}
    kinds: dict[str, set[str]] = {}
    for alarm in json.loads(path.read_text(encoding="utf-8"))["alarms"]:
        kinds.setdefault(alarm["layer"], set()).add(alarm["kind"])
    return {
        layer: ",".join(k for k in ALARM_KINDS if k in found)
        for layer, found in kinds.items()
    }


def read_gradient_table(run_dir: str | os.PathLike) -> list[GradientNormRow]:
    """Summarises the gradient norms a run logged, one row per parameter.

    Args:
        run_dir: a run folder whose ``logs/gradients`` holds the logger's files.

    Returns:
        The global norm rows first, then every layer's parameters.

    Raises:
        FileNotFoundError: the run folder or its gradient logs are missing.
    """
    run_dir = Path(run_dir)
    log_dir = run_dir / "logs" / "gradients"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Run folder {str(run_dir)!r} does not exist.")
    series = _read_norm_series(log_dir) if log_dir.is_dir() else {}
    if not series:
        raise FileNotFoundError(
            f"Run folder {str(run_dir)!r} has no gradient logs in {str(log_dir)!r}; "
            "train with gradients.enabled=true to write them."
        )
    flags = _read_alarm_flags(log_dir)
    rows = []
    for tag, points in series.items():
        layer, parameter = _split_tag(tag)
        values = [value for _, value in points]
        rows.append(
            GradientNormRow(
                layer,
                parameter,
                values[0],
                values[-1],
                min(values),
                max(values),
                len(values),
                flags.get(layer, ""),
            )
        )
    rows.sort(key=lambda row: row.layer != "global")
    return rows


def format_gradient_table(rows: Sequence[GradientNormRow]) -> str:
    """The rows as a fixed-width text table, one line per row."""
    header = ("layer", "parameter", "first", "last", "min", "max", "steps", "flag")
    lines = [
        (row.layer, row.parameter)
        + tuple(f"{v:.3e}" for v in (row.first, row.last, row.min, row.max))
        + (str(row.steps), row.flag)
        for row in rows
    ]
    widths = [
        max(len(str(cell)) for cell in column)
        for column in zip(header, *lines, strict=True)
    ]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(line, widths, strict=True)
        ).rstrip()
        for line in [header, *lines]
    )
