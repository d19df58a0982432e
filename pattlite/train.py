"""The authors' two-stage training recipe, driven by `TrainConfig`.

Stage 1 trains the new layers on a frozen backbone: Adam(1e-3, global_clipnorm 3), sparse categorical
cross-entropy, 'balanced' class weights, batch 8, up to 100 epochs, EarlyStopping and ReduceLROnPlateau
on validation accuracy. Stage 2 ("fine-tuning") runs the authors' stage-2 graph (`finetune_model`: extra
dropout) with Adam(1e-5, global_clipnorm 3), no class weights, a per-epoch inverse-time learning rate
1e-5 / (1 + epoch / 80), up to epoch 500, EarlyStopping on TRAINING accuracy, starting at the epoch
index `history.epoch[-5]` of stage 1. Which backbone layers are unfrozen is `TrainConfig.finetune`:
"as_coded" (the notebook's off-by-one: no backbone weight changes) or "paper" (the paper's text).

Works on full models fed uint8 images (resizing and augmentation happen inside the model) and on heads
fed cached backbone features (`pattlite.features`; no augmentation is possible on features).

Differences from the authors' notebook, all deliberate and recorded:
- The training set is shuffled every epoch in an order drawn from the seed (the authors shuffled their
  arrays once, unseeded, and let Keras reshuffle unseeded).
- Validation is computed by `ValidationCallback` under a recorded protocol: "published" reproduces
  the authors' Keras validation (class-grouped, unshuffled, batch 8); "independent" switches the
  batch mixing off.
- Class weights are applied as per-image sample weights (what Keras does with `class_weight`); a class
  absent from the training labels gets weight 1.

Keras 3 only, except `enable_determinism`, which calls the TensorFlow backend at the edge, and the
per-backend loops of `fit_in_order` (`_tensorflow_steps`, `_jax_steps`). About 580 lines: the recipe,
its callbacks and the fast loop that must give the same updates belong together.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from pathlib import Path

import keras
import numpy as np

from pattlite import config
from pattlite.checkpoints import TrainingCheckpoint
from pattlite.evaluate import OrderedBatches, epoch_order, in_memory, is_in_memory, predict
from pattlite.model import backbone_layers, count_params, cut_layer_name, finetune_model, set_finetune_trainable
from pattlite.recipe import TrainConfig


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: the final model (the stage-2 graph when stage 2 ran; it shares its layers with
            `stage1_model`, so both hold the final weights).
        stage1_model: the stage-1 graph.
        history: {"stage1": {metric: [per epoch]}, "stage2": {...}} (stage 2 empty when not run).
        epochs: {"stage1": epochs run, "stage2": epochs run, "stage2_initial_epoch": index}.
        trainable_params: {"stage1": count, "stage2": count}.
        finetune: `set_finetune_trainable`'s report for stage 2 (None when not run).
        wall_time_s: {"stage1": s, "stage2": s, "total": s}.
        test_probe: {stage-2 epochs run: what `train`'s `test_probe` returned} (`TrainConfig.test_probe_epochs`).
    """

    model: keras.Model
    stage1_model: keras.Model
    history: dict
    epochs: dict
    trainable_params: dict
    finetune: dict | None
    wall_time_s: dict
    test_probe: dict = dataclasses.field(default_factory=dict)


def enable_determinism(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and the Keras backend; optionally asks for deterministic ops.

    Keras 3.15 has no backend-neutral switch for deterministic kernels, so `deterministic=True` calls
    the backend at the edge: TensorFlow's `enable_op_determinism` (JAX on CPU is deterministic already;
    on GPU set XLA_FLAGS=--xla_gpu_deterministic_ops=true before starting). On CPU with TensorFlow the
    recipe is repeatable with seeds alone (tests/test_train.py checks it).
    """
    # pattlite.model builds a reference MobileNet once, lazily, to learn layer names; that draws from
    # the seeded Python RNG, so it must happen before seeding, or the first model of a process would
    # get different initial weights than the next ones.
    cut_layer_name(29)
    keras.utils.set_random_seed(int(seed))  # Python, NumPy and the backend
    random.seed(int(seed))
    if deterministic and keras.config.backend() == "tensorflow":
        import tensorflow as tf  # edge: the one TensorFlow call of the training code

        tf.config.experimental.enable_op_determinism()


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
    """

    def __init__(self, x, y, protocol: str, batch_size: int = 8):
        super().__init__()
        config.check_name("validation protocol", protocol, config.VALIDATION_PROTOCOLS)
        # Held in memory (when it fits): it is predicted every epoch.
        self.x, self.y = _in_memory(x), np.asarray(y, dtype=np.int64)
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


def _history_dict(history) -> dict:
    return {k: [float(v) for v in values] for k, values in history.history.items()} | {
        "epoch": [int(e) for e in history.epoch]
    }


def _logging_callbacks(log_dir, stage: str, tensorboard: bool, append: bool = False) -> list:
    """CSV (and TensorBoard) logs of a stage; `append`: a resumed stage adds to its log."""
    if log_dir is None:
        return []
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [keras.callbacks.CSVLogger(str(log_dir / f"{stage}.csv"), append=append)]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir / "tensorboard" / stage)))
    return callbacks


def _check_data(model, x, y, what: str, views: int = 1):
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


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: assume 8 GB
        return 8 * 2**30


# Training inputs up to this size are held in memory for the whole fit (float16 features of 10,000
# images at the default cut are 2.0 GB; a full FERPlus training set with its mirror images 11.4 GB):
# at least 4 GB, else half the machine's memory. Larger ones are read from their memory map chunk by chunk.
IN_MEMORY_BYTES = max(4 * 2**30, _physical_memory() // 2)
# Batches per compiled call on the JAX backend (and per host-side gather on every backend).
CHUNK_BATCHES = 128


def _in_memory(x):
    """x in memory when it fits `IN_MEMORY_BYTES` (`pattlite.evaluate.in_memory`), else as it is."""
    return in_memory(x, IN_MEMORY_BYTES)


def _gather(x, rows):
    """x[rows] for an in-memory array, a memory map or `FeatureRows`; memory maps are read in row order."""
    if is_in_memory(x):
        return x[rows]
    sort = np.argsort(rows, kind="stable")
    out = np.empty((len(rows),) + tuple(x.shape[1:]), dtype=x.dtype)
    out[sort] = x[rows[sort]]
    return out


def _widen(x):
    # float16 features are widened inside the compiled step: CPU kernels for half precision are slow.
    return keras.ops.cast(x, "float32") if keras.backend.standardize_dtype(x.dtype) == "float16" else x


def _tensorflow_steps(model, batch_size):
    """TensorFlow edge: one traced `model.train_step` call per batch, as Keras' own train function.

    Measured on 2 CPU cores: a `tf.while_loop` over many steps in one call runs the body slower than
    one call per step, so this loops in Python over a traced step. Returns (prepare, run): the inputs
    stay host arrays; `run(arrays, rows)` gathers the chunk `rows` on the host.
    """
    import tensorflow as tf  # edge: the backend's function tracing

    def one_step(data):
        return model.train_step((_widen(data[0]),) + tuple(data[1:]))

    step = tf.function(one_step, reduce_retracing=True, jit_compile=model.jit_compile)

    def run(arrays, rows):
        chunk = tuple(_gather(a, rows) for a in arrays)
        for start in range(0, len(rows), batch_size):
            step(tuple(a[start : start + batch_size] for a in chunk))

    return (lambda arrays: arrays), run


def train_step_variables(model) -> tuple:
    """The four variable lists whose values make the state of Keras' stateless JAX `train_step`:
    trainable, non-trainable, optimizer and metric variables, in that order."""
    return (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )


def _jax_steps(model, batch_size):
    """JAX edge: the full batches of a chunk in one compiled call (`jax.lax.fori_loop` over
    `model.train_step`); the model's variables are read before and written back after each chunk.

    Returns (prepare, run). `prepare` puts in-memory inputs on the device once per fit (on the CPU
    without a copy when aligned, see `_in_memory`); each step then gathers its batch there, by the row
    numbers it is given. Measured on 2 cores (AMD EPYC, published head, batch 8): about 3,800
    samples/s against 2,500 when each chunk of 1,024 rows was gathered and copied on the host, a step
    that stays for memory-mapped inputs over `IN_MEMORY_BYTES`. The row numbers of a chunk are passed
    as `CHUNK_BATCHES` batches (a shorter chunk padded with rows that are never read) with its number
    of batches as an argument, so the loop compiles once per model and input shape.
    """
    import jax  # edge: the backend's compilation, loop and device arrays

    def batch_of(arrays, rows):
        batch = tuple(a[rows] for a in arrays)
        return (_widen(batch[0]),) + batch[1:]

    @jax.jit
    def run_full(state, arrays, rows, steps):
        def body(i, state):
            _, state = model.train_step(
                state, batch_of(arrays, jax.lax.dynamic_slice_in_dim(rows, i * batch_size, batch_size))
            )
            return state

        return jax.lax.fori_loop(0, steps, body, state)

    @jax.jit
    def run_one(state, arrays, rows):
        _, state = model.train_step(state, batch_of(arrays, rows))
        return state

    built = []
    chunk = CHUNK_BATCHES * batch_size

    def prepare(arrays):
        if all(is_in_memory(a) for a in arrays):
            return tuple(jax.device_put(a, may_alias=True) for a in arrays)
        return arrays  # over the memory budget: gathered on the host chunk by chunk

    def run(arrays, rows):
        if not built:
            # Keras' JAX fit builds optimizer and metric variables from a first batch the same way.
            model._symbolic_build(data_batch=tuple(np.asarray(a[:batch_size]) for a in arrays))
            built.append(True)
        if not isinstance(arrays[0], jax.Array):
            arrays = tuple(_gather(a, rows) for a in arrays)
            if len(rows) < chunk:  # one input shape, one compilation
                arrays = tuple(np.concatenate([a, np.zeros((chunk - len(a),) + a.shape[1:], a.dtype)]) for a in arrays)
            rows = np.arange(len(rows))
        rows = np.asarray(rows, dtype=np.int32)
        state = tuple([v.value for v in vs] for vs in train_step_variables(model))
        full = len(rows) // batch_size * batch_size
        if full:
            padded = np.concatenate([rows[:full], np.zeros(chunk - full, np.int32)]) if full < chunk else rows
            state = run_full(state, arrays, padded, full // batch_size)
        if full < len(rows):
            state = run_one(state, arrays, rows[full:])
        for variables, values in zip(train_step_variables(model), state):
            for variable, value in zip(variables, values):
                variable.assign(value)

    return prepare, run


def fit_in_order(
    model,
    x,
    y,
    sample_weight,
    batch_size: int,
    epochs: int,
    callbacks,
    reshuffle_seed: int,
    initial_epoch: int = 0,
    views: int = 1,
    runs_before: int = 0,
):
    """What `model.fit(OrderedBatches(x, ..., reshuffle_seed, views), epochs, callbacks, shuffle=False)`
    does, faster.

    The same batches in the same order (the epoch run i uses `epoch_order(n, reshuffle_seed, i + 1,
    views)`, as `fit` does; x holds `views` blocks of n rows; a resumed fit passes the epochs it
    already ran as `runs_before`, so its orders continue where they stopped), the model's own `train_step`
    (loss, sample weights, gradient clipping, optimizer, metrics), the callbacks called at the same points with the same
    epoch logs, so EarlyStopping, ReduceLROnPlateau, CSVLogger and validation callbacks work as in
    `fit`. What it leaves out is per-step cost: no PyDataset, no per-batch callbacks, the inputs read
    into memory once when they fit (`IN_MEMORY_BYTES`; on JAX held as device arrays, each step
    gathering its own batch; else gathered chunk by chunk from the memory map), float16 widened inside
    the compiled step. The per-batch loop is a backend edge: a traced step
    per batch on TensorFlow, a compiled loop over `CHUNK_BATCHES` batches on JAX; other backends use
    the plain `fit`. `tests/test_train.py` checks that both paths give the same weights.

    Returns:
        The Keras `History` (also `model.history`).
    """
    backend = keras.config.backend()
    y = np.asarray(y)
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype="float32")
    if backend not in ("tensorflow", "jax"):
        batches = OrderedBatches(
            x, np.arange(len(y)), batch_size, y=y, sample_weight=weights, reshuffle_seed=reshuffle_seed, views=views
        )
        return model.fit(
            batches, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, verbose=0, shuffle=False
        )
    x = _in_memory(x)
    # The traced step is kept on the model, so a second fit does not trace again; a new compile (new
    # optimizer, loss and metric objects, which the trace captured) makes a new one.
    token = (int(batch_size), id(model.optimizer), tuple(id(m) for m in model.metrics))
    cached = getattr(model, "_pattlite_train_steps", None)
    if cached is None or cached[0] != token:
        make = _tensorflow_steps if backend == "tensorflow" else _jax_steps
        cached = (token, make(model, int(batch_size)))
        model._pattlite_train_steps = cached
    prepare, run = cached[1]
    n = len(y)
    if views > 1:  # one label and weight per row of x
        y = np.tile(y, views)
        weights = None if weights is None else np.tile(weights, views)
    inputs = prepare((x, y) + (() if weights is None else (weights,)))
    del x  # the in-memory copy is now the device's (or was the caller's)
    steps = math.ceil(n / batch_size)
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=False, model=model, epochs=epochs, steps=steps, verbose=0
    )
    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    chunk = CHUNK_BATCHES * int(batch_size)
    for run_index, epoch in enumerate(range(initial_epoch, epochs)):
        # run_index + 1: Keras' fit resets a PyDataset once before the first epoch (calling its
        # on_epoch_end), so the plain path's first epoch already uses OrderedBatches' epoch-1 order.
        order = epoch_order(n, reshuffle_seed, runs_before + run_index + 1, views)
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for start in range(0, n, chunk):
            run(inputs, order[start : start + chunk])
        logs = {name: float(keras.ops.convert_to_numpy(value)) for name, value in model.get_metrics_result().items()}
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return model.history


def train_stage1(
    model,
    x_train,
    y_train,
    x_val,
    y_val,
    train_config: TrainConfig,
    log_dir=None,
    tensorboard: bool = False,
    checkpoint=None,
):
    """Stage 1 on a model whose backbone is frozen; returns (Keras History, seconds).

    Compiles the model, trains it with the stage-1 callbacks and leaves it with the best weights on the
    monitored validation accuracy (EarlyStopping restores them when it stops the run). `checkpoint`: a
    `pattlite.checkpoints.TrainingCheckpoint` to save every epoch to and resume from.
    """
    cfg = train_config
    _check_data(model, x_train, y_train, "training set", cfg.train_views)
    _check_data(model, x_val, y_val, "validation set")
    num_classes = int(model.outputs[0].shape[-1])
    y_train = np.asarray(y_train, dtype=np.int64)
    sample_weight = None
    if cfg.class_weight == "balanced":
        sample_weight = balanced_class_weights(y_train, num_classes)[y_train].astype("float32")
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.stage1_learning_rate, global_clipnorm=cfg.global_clipnorm),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=cfg.steps_per_execution,
    )
    callbacks = [
        ValidationCallback(x_val, y_val, cfg.validation, cfg.validation_batch_size),
        keras.callbacks.EarlyStopping(
            monitor=cfg.stage1_monitor,
            patience=cfg.stage1_patience,
            min_delta=cfg.stage1_min_delta,
            mode="max",
            restore_best_weights=True,
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor=cfg.stage1_monitor,
            patience=cfg.lr_patience,
            min_delta=cfg.lr_min_delta,
            factor=cfg.lr_factor,
            min_lr=cfg.min_learning_rate,
            mode="max",
        ),
    ]
    stage = None if checkpoint is None else checkpoint.stage("stage1", model, callbacks)
    callbacks += _logging_callbacks(log_dir, "stage1", tensorboard, append=stage is not None and stage.runs > 0)
    if cfg.verbose:
        callbacks.append(EpochLine("stage 1"))
    start = time.time()
    history = _fit(model, x_train, y_train, sample_weight, cfg, cfg.stage1_epochs, 0, callbacks, cfg.seed, stage)
    return history, time.time() - start + (0.0 if stage is None else stage.seconds_before)


def _fit(
    model, x, y, sample_weight, cfg: TrainConfig, epochs: int, initial_epoch: int, callbacks, seed: int, checkpoint=None
):
    """`fit_in_order` (cfg.fast) or the plain Keras `fit` over `OrderedBatches`: the same updates.

    With a `pattlite.checkpoints.StageCheckpoint`, the stage's state is saved after every epoch, and a
    stage stopped before continues from its last saved epoch (the History returned then holds every
    epoch of the stage)."""
    runs_before = 0
    if checkpoint is not None:
        callbacks = list(callbacks) + [checkpoint]
        if checkpoint.next_epoch is not None:
            runs_before = checkpoint.runs
            initial_epoch = epochs if checkpoint.stopped else checkpoint.next_epoch
    if cfg.fast:
        history = fit_in_order(
            model,
            x,
            y,
            sample_weight,
            cfg.batch_size,
            epochs,
            callbacks,
            seed,
            initial_epoch,
            cfg.train_views,
            runs_before,
        )
    else:
        batches = OrderedBatches(
            x,
            np.arange(len(y)),
            cfg.batch_size,
            y=y,
            sample_weight=sample_weight,
            reshuffle_seed=seed,
            views=cfg.train_views,
        )
        batches.epoch = runs_before  # fit advances it once before its first epoch, as fit_in_order does
        batches._reshuffle()
        # shuffle=False: the order is OrderedBatches' seeded permutation alone (Keras would otherwise also
        # shuffle the batch order of a PyDataset with Python's global `random`).
        history = model.fit(
            batches, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, verbose=0, shuffle=False
        )
    if checkpoint is not None:
        history.history = {k: v for k, v in checkpoint.history.items() if k != "epoch"}
        history.epoch = list(checkpoint.history.get("epoch", []))
    return history


def stage2_initial_epoch(stage1_epochs_run: int, offset: int = 5) -> int:
    """The authors' `history.epoch[-offset]`, guarded: 0 when stage 1 ran fewer than `offset` epochs."""
    return max(0, int(stage1_epochs_run) - int(offset))


def train_stage2(
    model,
    x_train,
    y_train,
    x_val,
    y_val,
    stage1_epochs_run: int,
    train_config: TrainConfig,
    dataset: str | None = None,
    log_dir=None,
    tensorboard: bool = False,
    checkpoint=None,
    test_probe=None,
):
    """Stage 2 on the authors' fine-tuning graph built from `model` (a full model or a head).

    Returns (stage-2 model, Keras History, `set_finetune_trainable` report or None, initial epoch,
    seconds, test-probe results: {epochs run: what `test_probe(model)` returned} at
    `train_config.test_probe_epochs`). On a head (cached features) there are no backbone layers: only mode "as_coded" is
    possible there, and it is exact, since as coded no backbone weight is unfrozen.
    """
    cfg = train_config
    finetune_graph = finetune_model(model, spatial_dropout=cfg.spatial_dropout, dropout=cfg.finetune_dropout)
    report = None
    if backbone_layers(finetune_graph):
        report = set_finetune_trainable(finetune_graph, cfg.finetune, n_layers=cfg.finetune_layers, dataset=dataset)
    elif cfg.finetune == "paper":
        raise ValueError(
            f"fine-tuning mode 'paper' unfreezes backbone layers, but {model.name!r} is a head on cached "
            "features; run stage 2 on the full model (stage1='exact', or copy the head weights into "
            "build_model(...) first)"
        )
    finetune_graph.compile(
        optimizer=keras.optimizers.Adam(cfg.stage2_learning_rate, global_clipnorm=cfg.global_clipnorm),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=cfg.steps_per_execution,
    )
    initial_epoch = stage2_initial_epoch(stage1_epochs_run, cfg.stage2_start_offset)
    end_epoch = cfg.stage2_epochs
    if cfg.stage2_max_epochs is not None:
        end_epoch = min(end_epoch, initial_epoch + cfg.stage2_max_epochs)
    y_train = np.asarray(y_train, dtype=np.int64)
    if checkpoint is not None:
        done = checkpoint.finished("stage2", finetune_graph)
        if done is not None:  # finished before an interruption: its final weights and record
            history = keras.callbacks.History()
            history.history = {k: v for k, v in done["history"].items() if k != "epoch"}
            history.epoch = done["history"]["epoch"]
            return finetune_graph, history, report, initial_epoch, done["seconds"], done.get("test_probe", {})
    probe = TestProbe(test_probe, cfg.test_probe_epochs if test_probe is not None else ())
    callbacks = [
        ValidationCallback(x_val, y_val, cfg.validation, cfg.validation_batch_size),
        probe,  # before EarlyStopping, which may put the best weights back at the epoch it stops
        keras.callbacks.LearningRateScheduler(
            lambda epoch, lr: inverse_time_decay(
                epoch, cfg.stage2_learning_rate, cfg.stage2_decay_steps, cfg.stage2_decay_rate
            )
        ),
        keras.callbacks.EarlyStopping(
            monitor=cfg.stage2_monitor,
            patience=cfg.stage2_patience,
            min_delta=cfg.stage2_min_delta,
            mode="max",
            restore_best_weights=True,
        ),
    ]
    stage = None if checkpoint is None else checkpoint.stage("stage2", finetune_graph, callbacks)
    callbacks += _logging_callbacks(log_dir, "stage2", tensorboard, append=stage is not None and stage.runs > 0)
    if cfg.verbose:
        callbacks.append(EpochLine("stage 2"))
    start = time.time()
    # A different stream from stage 1, still drawn from the seed.
    history = _fit(
        finetune_graph, x_train, y_train, None, cfg, end_epoch, initial_epoch, callbacks, cfg.seed + 1_000_003, stage
    )
    seconds = time.time() - start + (0.0 if stage is None else stage.seconds_before)
    if checkpoint is not None:
        checkpoint.finish("stage2", finetune_graph, _history_dict(history), seconds, test_probe=probe.probe_results)
    return finetune_graph, history, report, initial_epoch, seconds, probe.probe_results


def add_stage2(
    result: TrainResult,
    model,
    x_train,
    y_train,
    x_val,
    y_val,
    train_config: TrainConfig,
    dataset: str | None = None,
    log_dir=None,
    tensorboard: bool = False,
    checkpoint=None,
    test_probe=None,
) -> TrainResult:
    """Runs stage 2 (`train_stage2`) on `model` after the stage 1 that `result` records, and records it
    there: the stage-2 graph as `result.model`, its history, epochs, trainable parameters, fine-tuning
    report and seconds (added to the total). `train` calls it; so does `pattlite.experiments` when
    stage 1 ran on a head and the paper's fine-tuning needs the full model.
    """
    graph, history, report, initial, seconds, probes = train_stage2(
        model,
        x_train,
        y_train,
        x_val,
        y_val,
        result.epochs["stage1"],
        train_config,
        dataset,
        log_dir,
        tensorboard,
        checkpoint,
        test_probe,
    )
    result.test_probe = probes
    result.model = graph
    result.history["stage2"] = _history_dict(history)
    result.epochs.update(stage2=len(history.epoch), stage2_initial_epoch=initial)
    result.trainable_params["stage2"] = count_params(graph.trainable_weights)
    result.finetune = report
    result.wall_time_s["stage2"] = seconds
    result.wall_time_s["total"] += seconds
    return result


def train(
    model,
    x_train,
    y_train,
    x_val,
    y_val,
    train_config: TrainConfig | None = None,
    dataset: str | None = None,
    log_dir=None,
    tensorboard: bool = False,
    checkpoint_dir=None,
    test_probe=None,
) -> TrainResult:
    """Runs the authors' two-stage recipe on `model` (built by `pattlite.model.build_model` or `build_head`).

    Args:
        model: a full model (inputs: uint8 images; resizing and augmentation inside) or a head (inputs:
            cached backbone features; no augmentation).
        x_train, y_train: training inputs (N, ...) and integer labels; memory maps are read batch by
            batch. With `train_config.train_views` = 2, x_train holds 2N rows: the N images' inputs,
            then those of their mirror images.
        x_val, y_val: validation inputs and labels (used under `train_config.validation`).
        train_config: a `TrainConfig` (default: the authors' recipe).
        dataset: benchmark name, for the paper's per-dataset fine-tuning depth.
        log_dir: folder for CSV logs (`stage1.csv`, `stage2.csv`) and optional TensorBoard logs.
        tensorboard: also write TensorBoard logs under `log_dir/tensorboard/`.
        checkpoint_dir: keep a checkpoint after every epoch here (`pattlite.checkpoints`) and resume
            from the one there: a training stopped at any epoch then ends with the same weights as one
            never stopped. The caller removes the folder when it no longer needs it.
        test_probe: `probe(model)` called after the stage-2 epochs `train_config.test_probe_epochs`
            (e.g. the test accuracy, for analysis only); its results are `TrainResult.test_probe`.

    Returns:
        A `TrainResult`.
    """
    cfg = train_config or TrainConfig()
    enable_determinism(cfg.seed, cfg.deterministic)
    total_start = time.time()
    stage1_params = count_params(model.trainable_weights)
    checkpoint = None if checkpoint_dir is None else TrainingCheckpoint(checkpoint_dir)
    done = None if checkpoint is None else checkpoint.finished("stage1", model)
    if done is not None:  # stage 1 finished before an interruption: its final weights and record
        history1, seconds1 = done["history"], done["seconds"]
    else:
        history, seconds1 = train_stage1(model, x_train, y_train, x_val, y_val, cfg, log_dir, tensorboard, checkpoint)
        history1 = _history_dict(history)
        if checkpoint is not None:
            checkpoint.finish("stage1", model, history1, seconds1)
    epochs1 = len(history1["epoch"])
    result = TrainResult(
        model=model,
        stage1_model=model,
        history={"stage1": history1, "stage2": {}},
        epochs={"stage1": epochs1, "stage2": 0, "stage2_initial_epoch": None},
        trainable_params={"stage1": stage1_params, "stage2": None},
        finetune=None,
        wall_time_s={"stage1": seconds1, "stage2": 0.0, "total": 0.0},
    )
    if cfg.stage2:
        add_stage2(
            result, model, x_train, y_train, x_val, y_val, cfg, dataset, log_dir, tensorboard, checkpoint, test_probe
        )
    # A training resumed from checkpoints ran partly in earlier processes: its stages' seconds hold them.
    stages = result.wall_time_s["stage1"] + result.wall_time_s["stage2"]
    result.wall_time_s["total"] = max(time.time() - total_start, stages)
    return result
