"""The pieces of the authors' training recipe around the training loop (`pattlite.train` runs them).

- callbacks: `ValidationCallback` (validation under a recorded protocol), `TestProbe` (a probe after
  given stage-2 epochs), `EpochLine` (one printed line per epoch), `logging_callbacks` (CSV and
  TensorBoard logs of a stage);
- the recipe's numbers: `balanced_class_weights` (stage 1's class weights), `inverse_time_decay`
  (stage 2's learning rate);
- `history_dict` (a Keras History as plain lists) and `check_data` (inputs that fit the model).
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from pattlite import config
from pattlite.arrays import in_memory
from pattlite.evaluate import predict

__all__ = [
    "balanced_class_weights",
    "inverse_time_decay",
    "ValidationCallback",
    "TestProbe",
    "EpochLine",
    "history_dict",
    "logging_callbacks",
    "check_data",
]


def balanced_class_weights(y, num_classes: int) -> np.ndarray:
    """sklearn's 'balanced' class weights n / (k * n_c) for the classes present; 1 for absent classes."""
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(y)
    present = np.unique(y)
    weights = np.ones(num_classes, dtype=np.float64)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return weights


def inverse_time_decay(
    epoch: int, learning_rate: float = 1e-5, decay_steps: float = 80.0, decay_rate: float = 1.0
) -> float:
    """The authors' stage-2 learning rate at an epoch index: lr / (1 + rate * epoch / steps)."""
    return float(learning_rate / (1.0 + decay_rate * epoch / decay_steps))


class ValidationCallback(keras.callbacks.Callback):
    """Adds `val_loss` and `val_accuracy` to the epoch logs, under a recorded validation protocol.

    Put it first in the callback list: EarlyStopping, ReduceLROnPlateau and CSVLogger read the same
    logs dict afterwards.

    Args:
        x, y: validation inputs and integer labels.
        protocol: "published" (stably sorted by class, batch `batch_size`) or "independent".
        batch_size: 8, as Keras validated the authors' fit.
        in_memory_bytes: x is read into memory when it takes at most this (`pattlite.arrays.in_memory`;
            `pattlite.train` passes its `IN_MEMORY_BYTES`).
    """

    def __init__(self, x, y, protocol: str, batch_size: int = 8, in_memory_bytes: float = float("inf")):
        super().__init__()
        config.check_name("validation protocol", protocol, config.VALIDATION_PROTOCOLS)
        # Held in memory (when it fits): it is predicted every epoch.
        self.x, self.y = in_memory(x, in_memory_bytes), np.asarray(y, dtype=np.int64)
        self.protocol, self.batch_size = protocol, int(batch_size)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        probs = predict(self.model, self.x, self.y, self.protocol, batch_size=self.batch_size)
        picked = np.clip(probs[np.arange(len(self.y)), self.y], 1e-7, 1.0)
        logs["val_loss"] = float(-np.mean(np.log(picked)))
        logs["val_accuracy"] = float(np.mean(probs.argmax(axis=1) == self.y))


class TestProbe(keras.callbacks.Callback):
    """Calls `probe(model)` after the stage-2 epochs counted in `epochs` (1 = its first epoch) and
    keeps what it returns in `probe_results` ({epochs run: result}); a training checkpoint saves them."""

    def __init__(self, probe, epochs):
        super().__init__()
        self.probe, self.epochs = probe, set(epochs)
        self.runs, self.probe_results = 0, {}

    def on_epoch_end(self, epoch, logs=None):
        self.runs += 1
        if self.runs in self.epochs:
            self.probe_results[str(self.runs)] = self.probe(self.model)


class EpochLine(keras.callbacks.Callback):
    """Prints one line per epoch: stage, epoch, metrics, learning rate, seconds."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")]
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        print(
            f"  {self.stage} epoch {epoch + 1}: " + ", ".join(parts) + f", lr {lr:.2e}, "
            f"{time.time() - self._start:.1f} s",
            flush=True,
        )


def history_dict(history) -> dict:
    return {k: [float(v) for v in values] for k, values in history.history.items()} | {
        "epoch": [int(e) for e in history.epoch]
    }


def logging_callbacks(log_dir, stage: str, tensorboard: bool, append: bool = False) -> list:
    """CSV (and TensorBoard) logs of a stage; `append`: a resumed stage adds to its log."""
    if log_dir is None:
        return []
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [keras.callbacks.CSVLogger(str(log_dir / f"{stage}.csv"), append=append)]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir / "tensorboard" / stage)))
    return callbacks


def check_data(model, x, y, what: str, views: int = 1):
    if len(x) != views * len(y):
        per = f" ({views} views of each image)" if views > 1 else ""
        raise ValueError(f"{what}: x has {len(x)} items but y has {len(y)} labels; expected {views * len(y)}{per}")
    if len(x) == 0:
        raise ValueError(f"{what}: empty (0 images)")
    expected = tuple(model.inputs[0].shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{what}: inputs of shape {tuple(x.shape)} do not fit model {model.name!r}, which expects (N,) + {expected}"
        )
