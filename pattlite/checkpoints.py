"""Checkpoints inside one training, so that a stopped training resumes where it was.

A full-size stage 2 can run for an hour (500 epochs at most); a session, a job or a laptop lid can end
it sooner. `TrainingCheckpoint(folder)` keeps, after every epoch of a stage, everything the rest of the
training depends on, in one file written atomically (`<folder>/<stage>.npz`):

- the values of the model's variables (weights, BatchNorm statistics, the dropout layers' seed
  generator states) and of the optimizer's (step count, learning rate, Adam's moments);
- the state of the callbacks that carry one across epochs (EarlyStopping's and ReduceLROnPlateau's
  `wait`, `best`, `best_weights`, `best_epoch`, `stopped_epoch`, `cooldown_counter`);
- the history so far, the next epoch, the number of epochs run (it picks the next shuffle order,
  `pattlite.evaluate.epoch_order`), whether training was stopped, and the seconds spent.

When a stage ends, `finish` keeps its final weights and record (`<stage>-done.npz`) and drops the
per-epoch file, so a later resume skips that stage. A resumed training makes the same updates in the
same order as one that was never stopped (`tests/test_checkpoints.py` compares the weights). The
experiment runner (`pattlite.experiments.run_experiment`) keeps checkpoints under
`<results>/checkpoints/<key>/` and removes them once the result file is written.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from pattlite.files import write_atomic

# Attributes of Keras callbacks that carry state from one epoch to the next (EarlyStopping,
# ReduceLROnPlateau); `on_train_begin` resets them, so they are set again after it.
CALLBACK_STATE = (
    "wait",
    "best",
    "best_weights",
    "best_epoch",
    "stopped_epoch",
    "cooldown_counter",
    "runs",
    "probe_results",
)  # the last two: pattlite.train.TestProbe


def _save_npz(path: Path, arrays: dict, meta: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    write_atomic(path, buffer.getvalue())


def _load_npz(path: Path) -> tuple[dict, dict]:
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(
            f"{path}: damaged training checkpoint ({error}); delete it to train this stage from its start"
        ) from None
    return arrays, json.loads(arrays.pop("__meta__").tobytes().decode())


def _variable_values(prefix: str, variables) -> dict:
    return {f"{prefix}{i}": np.asarray(keras.ops.convert_to_numpy(v.value)) for i, v in enumerate(variables)}


def _assign(prefix: str, variables, arrays: dict, path: Path) -> None:
    variables = list(variables)
    stored = sum(1 for name in arrays if name.startswith(prefix) and name[len(prefix) :].isdigit())
    if stored != len(variables):
        raise ValueError(
            f"{path}: the checkpoint holds {stored} {prefix.rstrip('_')} variables, the model "
            f"{len(variables)}; it was written for another model: delete it"
        )
    for i, variable in enumerate(variables):
        variable.assign(arrays[f"{prefix}{i}"])


class TrainingCheckpoint:
    """The checkpoints of one training (its stages) in `folder`."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def stage(self, name: str, model, callbacks) -> "StageCheckpoint":
        """The per-epoch checkpoint of a stage that trains `model` with `callbacks`."""
        return StageCheckpoint(self.folder / f"{name}.npz", model, callbacks)

    def finished(self, name: str, model) -> dict | None:
        """When stage `name` finished before: sets `model`'s weights to its final ones and returns its
        record ({"history", "seconds"}); else None."""
        path = self.folder / f"{name}-done.npz"
        if not path.is_file():
            return None
        arrays, meta = _load_npz(path)
        _assign("model_", model.variables, arrays, path)
        return meta

    def finish(self, name: str, model, history: dict, seconds: float, **record) -> None:
        """Keeps stage `name`'s final weights and record (history, seconds and any JSON `record`, which
        `finished` returns); its per-epoch checkpoint is no longer needed."""
        _save_npz(
            self.folder / f"{name}-done.npz",
            _variable_values("model_", model.variables),
            {"history": history, "seconds": seconds, **record},
        )
        (self.folder / f"{name}.npz").unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class StageCheckpoint(keras.callbacks.Callback):
    """Saves the stage's state after every epoch and restores it when training resumes.

    Put it last in the callback list: its `on_epoch_end` then sees what the others did (EarlyStopping
    restoring the best weights, ReduceLROnPlateau lowering the rate), and its `on_train_begin` sets the
    others' state after they reset it.
    """

    def __init__(self, path: Path, model, callbacks):
        super().__init__()
        self.path, self.tracked = Path(path), list(callbacks)
        self.saved = None
        if self.path.is_file():
            self.arrays, self.saved = _load_npz(self.path)
        self.history = dict(self.saved["history"]) if self.saved else {}
        self.runs = self.saved["runs"] if self.saved else 0
        self._start = None

    # What the training loop needs to continue.
    @property
    def next_epoch(self) -> int | None:
        return None if self.saved is None else self.saved["next_epoch"]

    @property
    def stopped(self) -> bool:
        return bool(self.saved and self.saved["stop_training"])

    @property
    def seconds_before(self) -> float:
        return float(self.saved["seconds"]) if self.saved else 0.0

    def on_train_begin(self, logs=None):
        self._start = time.time()
        if self.saved is None:
            return
        model = self.model
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        _assign("model_", model.variables, self.arrays, self.path)
        _assign("optimizer_", model.optimizer.variables, self.arrays, self.path)
        model.stop_training = self.stopped
        for i, callback in enumerate(self.tracked):
            for name, value in self.saved["callbacks"][i].items():
                if name == "best_weights":
                    value = None if value is None else [self.arrays[f"best_{i}_{j}"] for j in range(value)]
                setattr(callback, name, value)

    def on_epoch_end(self, epoch, logs=None):
        self.runs += 1
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))
        self.history.setdefault("epoch", []).append(int(epoch))
        arrays = {
            **_variable_values("model_", self.model.variables),
            **_variable_values("optimizer_", self.model.optimizer.variables),
        }
        states = []
        for i, callback in enumerate(self.tracked):
            state = {}
            for name in CALLBACK_STATE:
                if not hasattr(callback, name):
                    continue
                value = getattr(callback, name)
                if name == "best_weights":
                    if value is not None:
                        arrays.update({f"best_{i}_{j}": np.asarray(w) for j, w in enumerate(value)})
                    value = None if value is None else len(value)
                elif isinstance(value, (np.floating, np.integer)):
                    value = value.item()
                state[name] = value
            states.append(state)
        meta = {
            "next_epoch": int(epoch) + 1,
            "runs": self.runs,
            "history": self.history,
            "stop_training": bool(self.model.stop_training),
            "callbacks": states,
            "seconds": self.seconds_before + time.time() - self._start,
        }
        _save_npz(self.path, arrays, meta)
