"""Callbacks that watch training: checkpoints and learning-rate logging.

A *checkpoint* is a full ``.keras`` model with its class names, optimizer state
and training state inside, written atomically: ``last.keras`` after every
epoch, ``best.keras`` whenever the monitored validation loss improves; an epoch
with a non-finite loss writes neither.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

__all__ = ["CheckpointSaver", "LearningRateInLogs"]

logger = logging.getLogger(__name__)


class LearningRateInLogs(keras.callbacks.Callback):
    """Adds the optimizer's ``learning_rate`` to each epoch's logs.

    Place it first so the CSV log and TensorBoard both record the rate.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            rate = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))


class CheckpointSaver(keras.callbacks.Callback):
    """Saves ``last.keras`` every epoch and ``best.keras`` on improvement.

    The best score survives across training stages: pass the same instance to
    every ``fit`` call, last in the callback list so that the early-stopping
    and plateau counters it stores are those of the epoch just ended. A failed
    save is logged and training goes on.

    Args:
        classifier: the `NeuropathologyClassifier` being trained.
        directory: the checkpoint folder.
        monitor: the logged quantity to minimise; ``"val_loss"`` by default.
        extra_metadata: stored in each checkpoint beside the class names.
        state_provider: called with the 0-based epoch at its end; returns more
            training state to store, such as the stage's progress.
    """

    def __init__(
        self,
        classifier,
        directory: str | os.PathLike,
        monitor: str = "val_loss",
        extra_metadata: dict[str, Any] | None = None,
        state_provider: Callable[[int], dict[str, Any]] | None = None,
    ):
        super().__init__()
        self.state_provider = state_provider
        self.classifier = classifier
        self.directory = Path(directory)
        self.monitor = monitor
        self.extra_metadata = extra_metadata or {}
        self.best = math.inf
        self.best_epoch: int | None = None
        self.stage = ""

    @property
    def best_path(self) -> Path:
        return self.directory / "best.keras"

    @property
    def last_path(self) -> Path:
        return self.directory / "last.keras"

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        losses = {key: logs.get(key) for key in ("loss", self.monitor)}
        if any(v is not None and not math.isfinite(v) for v in losses.values()):
            # A diverged model would replace the last good one on disk.
            logger.warning(
                "Epoch %d ended with a non-finite loss %s; no checkpoint written, "
                "the previous ones are kept.",
                epoch + 1,
                losses,
            )
            return
        improved = value is not None and math.isfinite(value) and value < self.best
        best, best_epoch = self.best, self.best_epoch
        if improved:
            best, best_epoch = float(value), epoch + 1
        state = {
            "epochs_done": epoch + 1,
            "stage": self.stage,
            "monitor": self.monitor,
            "best": best if math.isfinite(best) else None,
            "best_epoch": best_epoch,
            **(self.state_provider(epoch) if self.state_provider else {}),
        }
        extra = {
            **self.extra_metadata,
            "epoch": epoch + 1,
            "stage": self.stage,
            "training_state": state,
        }
        try:
            # The state travels inside the checkpoint: one atomic file, so a
            # kill can never pair the weights of one epoch with another's state.
            self.classifier.save(self.last_path, extra=extra)
            self.best, self.best_epoch = best, best_epoch
            if improved:
                # The best model is the one just saved: copying the file costs
                # milliseconds where a second serialisation costs a second.
                _copy_atomically(self.last_path, self.best_path)
            self._write_state(state)
        except OSError as err:
            logger.warning(
                "Could not write a checkpoint after epoch %d: %s", epoch + 1, err
            )

    def _write_state(self, state: dict[str, Any]) -> None:
        """A readable copy of the state stored in ``last.keras``."""
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.directory / "state.json")


def _copy_atomically(source: Path, target: Path) -> None:
    """Copies a file so that ``target`` is always either old or complete."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
