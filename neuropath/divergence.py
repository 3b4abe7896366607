"""Stopping a run whose loss stops being a number.

A run *diverges* when a training batch's loss is NaN or infinite, or the
gradient logger finds non-finite gradients: the weights are then garbage, so
training stops, the last checkpoint with a finite loss is kept and no final
model is written.
"""

from __future__ import annotations

import logging
import math

import keras
import numpy as np

__all__ = ["NonFiniteLossGuard", "TrainingDivergedError"]

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Raised when training stopped on a non-finite loss or gradient."""


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite.

    Attributes:
        diverged_at: ``(epoch, batch, loss)`` of that batch (1-based epoch and
            batch), or ``None`` while the loss stays finite.
    """

    def __init__(self):
        super().__init__()
        self.diverged_at: tuple[int, int, float] | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.diverged_at is not None:
            return
        value = float(np.asarray(loss))
        if not math.isfinite(value):
            self.diverged_at = (self._epoch, batch + 1, value)
            self.model.stop_training = True
            logger.warning(
                "Loss is %s at epoch %d, batch %d: stopping training.",
                value,
                self._epoch,
                batch + 1,
            )
