"""Continuing a training run that was stopped before it finished.

Every checkpoint ``last.keras`` carries the *training state* of the epoch it
closes, inside the same atomically written file: the stage and its epochs
done, the best monitored loss, the early-stopping and learning-rate plateau
counters and the gradient logger's step. A copy is kept readable beside it in
``checkpoints/state.json``. The *resume point* is that state with the run's
config; from it, training continues in the right stage with the optimizer's
moments and step count (hence the learning-rate schedule's position) restored.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from neuropath.config import RunConfig, load_config
from neuropathology_model import ModelFileError, read_metadata

__all__ = [
    "STATE_FILE",
    "ResumableEarlyStopping",
    "ResumableReduceLROnPlateau",
    "ResumePoint",
    "callback_state",
    "load_resume_point",
    "restore_checkpoint",
    "truncate_event_logs",
    "truncate_training_log",
    "write_state_file",
]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_KEY = "training_state"


@dataclasses.dataclass
class ResumePoint:
    """Where a stopped run picks up.

    Attributes:
        run_dir: the run folder.
        config: the run's resolved config, read from ``config.yaml``.
        checkpoint: the ``last.keras`` checkpoint to continue from.
        state: the training state stored in it (see `callback_state` and
            `neuropath.callbacks.CheckpointSaver`).
    """

    run_dir: Path
    config: RunConfig
    checkpoint: Path
    state: dict[str, Any]

    @property
    def epochs_done(self) -> int:
        """Epochs completed over all stages."""
        return int(self.state["epochs_done"])

    @property
    def stage(self) -> str:
        """The stage of the last completed epoch."""
        return str(self.state["stage"])

    @property
    def stage_finished(self) -> bool:
        """Whether that stage ran all its epochs or stopped early."""
        return bool(self.state.get("stage_finished"))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that can start from saved counters.

    Args:
        initial_state: ``{"wait": int, "best": float | None}`` from an
            earlier part of the same stage, or ``None`` to start afresh.
        **kwargs: `keras.callbacks.EarlyStopping`'s arguments.
    """

    def __init__(self, initial_state: dict[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.initial_state = initial_state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.initial_state:
            self.wait = int(self.initial_state.get("wait", 0))
            self.best = self.initial_state.get("best")


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """`keras.callbacks.ReduceLROnPlateau` that can start from saved counters.

    The reduced learning rate itself lives in the optimizer and is restored
    with it; this restores the patience and cooldown counters.

    Args:
        initial_state: ``{"wait", "cooldown_counter", "best"}`` or ``None``.
        **kwargs: `keras.callbacks.ReduceLROnPlateau`'s arguments.
    """

    def __init__(self, initial_state: dict[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.initial_state = initial_state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.initial_state:
            self.wait = int(self.initial_state.get("wait", 0))
            self.cooldown_counter = int(self.initial_state.get("cooldown_counter", 0))
            best = self.initial_state.get("best")
            if best is not None:
                self.best = best


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(np.asarray(value))
    return value if math.isfinite(value) else None


def callback_state(callbacks: Sequence[keras.callbacks.Callback]) -> dict[str, Any]:
    """The counters of the early-stopping and plateau callbacks, JSON-ready."""
    state: dict[str, Any] = {}
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.EarlyStopping):
            state["early_stopping"] = {
                "wait": int(callback.wait),
                "best": _number(callback.best),
                "stopped": bool(callback.stopped_epoch),
            }
        elif isinstance(callback, keras.callbacks.ReduceLROnPlateau):
            state["plateau"] = {
                "wait": int(callback.wait),
                "cooldown_counter": int(callback.cooldown_counter),
                "best": _number(callback.best),
            }
    return state


def write_state_file(state: dict[str, Any], directory: str | os.PathLike) -> Path:
    """Writes ``state.json`` atomically (temporary file, then rename)."""
    path = Path(directory) / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_resume_point(run_dir: str | os.PathLike) -> ResumePoint:
    """Reads the config and last checkpoint of a run folder to continue it.

    Temporary files a killed save left in ``checkpoints`` are removed.

    Args:
        run_dir: a run folder written by ``neuropath train``.

    Raises:
        FileNotFoundError: the folder, its config, split manifest or last
            checkpoint is missing.
        FileExistsError: the run already finished.
        ValueError: the checkpoint holds no training state.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"Run folder {str(run_dir)!r} does not exist; pass the folder a "
            "stopped 'neuropath train' was writing to --resume."
        )
    if (run_dir / "model.keras").exists():
        raise FileExistsError(
            f"Run {str(run_dir)!r} already finished (model.keras exists); "
            "there is nothing to resume."
        )
    for name in ("config.yaml", "split_manifest.csv"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"Cannot resume {str(run_dir)!r}: {name} is missing, so the "
                "run's settings and split are unknown. Start a new run instead."
            )
    checkpoints = run_dir / "checkpoints"
    _remove_temporary_files(checkpoints)
    checkpoint = checkpoints / "last.keras"
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"Cannot resume {str(run_dir)!r}: no epoch finished before it "
            f"stopped ({checkpoint} is missing). Start the run again."
        )
    try:
        state = read_metadata(checkpoint).get(STATE_KEY)
    except ModelFileError as err:
        raise ValueError(f"Cannot resume {str(run_dir)!r}: {err}") from err
    if not state:
        raise ValueError(
            f"Checkpoint {str(checkpoint)!r} holds no training state (it was "
            "written by an older version); start the run again."
        )
    _repair_best_checkpoint(checkpoints, state)
    config = load_config(run_dir / "config.yaml")
    return ResumePoint(run_dir, config, checkpoint, state)


def _repair_best_checkpoint(checkpoints: Path, state: dict[str, Any]) -> None:
    """Copies ``last.keras`` to ``best.keras`` if a kill came between the two."""
    if state.get("best_epoch") != state.get("epochs_done"):
        return
    best = checkpoints / "best.keras"
    try:
        current = read_metadata(best).get("epoch") if best.is_file() else None
    except ModelFileError:
        current = None
    if current != state["best_epoch"]:
        logger.info("Restoring best.keras from last.keras (epoch %s)", current)
        tmp = best.with_name(best.name + ".tmp")
        shutil.copyfile(checkpoints / "last.keras", tmp)
        os.replace(tmp, best)


def _remove_temporary_files(directory: Path) -> None:
    if not directory.is_dir():
        return
    for path in directory.iterdir():
        if path.name.endswith(".tmp") or (
            path.name.startswith("tmp") and path.suffix == ".keras"
        ):
            logger.info("Removing %s, left by an interrupted save", path.name)
            path.unlink()


def restore_checkpoint(
    model: keras.Model, checkpoint: str | os.PathLike, with_optimizer: bool
) -> None:
    """Copies a checkpoint's weights, and optionally optimizer state, into a model.

    ``model`` must be built and compiled as the checkpoint's model was in the
    same stage (same trainable layers), so that the optimizer's moment
    variables pair up one by one.

    Args:
        model: the freshly compiled model.
        checkpoint: a ``.keras`` checkpoint saved with its optimizer.
        with_optimizer: also restore the optimizer's step count and moments.

    Raises:
        ValueError: the checkpoint's variables do not match the model's.
    """
    saved = keras.saving.load_model(checkpoint, safe_mode=True, compile=with_optimizer)
    if [v.path for v in saved.weights] != [v.path for v in model.weights]:
        raise ValueError(
            f"The weights in {str(checkpoint)!r} do not fit the model the run's "
            "config.yaml builds; was it edited? Start a new run instead."
        )
    model.set_weights(saved.get_weights())
    if not with_optimizer:
        return
    model.optimizer.build(model.trainable_variables)
    target, source = model.optimizer.variables, saved.optimizer.variables
    shapes = [tuple(v.shape) for v in target], [tuple(v.shape) for v in source]
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"The optimizer state in {str(checkpoint)!r} does not fit the model "
            f"({len(source)} saved variables, {len(target)} expected); was the "
            "run's config.yaml edited? Start a new run instead."
        )
    for variable, value in zip(target, source, strict=True):
        variable.assign(value)


def truncate_training_log(path: str | os.PathLike, epochs_done: int) -> None:
    """Keeps only the rows of completed epochs in the CSV training log.

    A run killed after the log's row of an epoch but before its checkpoint
    would otherwise list that epoch twice once resumed.
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    column = header.index("epoch") if "epoch" in header else 0
    kept = [row for row in body if row and int(float(row[column])) < epochs_done]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *kept])
    os.replace(tmp, path)


def truncate_event_logs(
    log_dir: str | os.PathLike, epochs_done: int, gradient_steps: int
) -> None:
    """Drops the TensorBoard events written after the checkpoint resumed from.

    A run killed between an epoch's TensorBoard write and its checkpoint would
    otherwise show that epoch twice once resumed. Epoch summaries (``train/``,
    ``validation/``) are kept up to epoch ``epochs_done - 1``, gradient
    summaries (``gradients/``) up to training step ``gradient_steps``. Each
    event file is rewritten atomically, and only when it holds later events or
    a record cut short by the kill.

    Args:
        log_dir: the run's ``logs`` folder.
        epochs_done: epochs completed at the checkpoint.
        gradient_steps: the gradient logger's step at the checkpoint.
    """
    last_steps = {
        "train": epochs_done - 1,
        "validation": epochs_done - 1,
        "gradients": gradient_steps,
    }
    for folder, last_step in last_steps.items():
        for path in sorted(Path(log_dir, folder).glob("events.out.tfevents*")):
            _drop_events_after(path, last_step)


def _drop_events_after(path: Path, last_step: int) -> None:
    import tensorflow as tf

    from neuropath.gradient_logging import read_events

    events, complete = read_events(path)
    kept = [e for e in events if not e.HasField("summary") or e.step <= last_step]
    if len(kept) == len(events) and complete:
        return
    # No "tfevents" in the temporary name: a running TensorBoard ignores it.
    tmp = path.with_name(".resume-rewrite.tmp")
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for event in kept:
            writer.write(event.SerializeToString())
    os.replace(tmp, path)
    logger.info(
        "Dropped %d TensorBoard event(s) after step %d from %s",
        len(events) - len(kept),
        last_step,
        path,
    )
