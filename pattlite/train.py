"""The authors' two-stage training recipe, driven by `TrainConfig`.

Stage 1 trains the new layers on a frozen backbone: Adam(1e-3, global_clipnorm 3), sparse categorical
cross-entropy, 'balanced' class weights, batch 8, up to 100 epochs, EarlyStopping and ReduceLROnPlateau
on validation accuracy. Stage 2 ("fine-tuning") runs the authors' stage-2 graph (`finetune_model`: extra
dropout) with Adam(1e-5, global_clipnorm 3), no class weights, a per-epoch inverse-time learning rate
1e-5 / (1 + epoch / 80), up to epoch 500, EarlyStopping on TRAINING accuracy, starting at the epoch
index `history.epoch[-5]` of stage 1. Which backbone layers are unfrozen is `TrainConfig.finetune`:
"as_coded" (the notebook's off-by-one: no backbone weight changes) or "paper" (the paper's text).

Works on full models fed uint8 images (resizing and augmentation happen inside the model) and on heads
fed cached backbone features (`pattlite.features`; the flip as mirror-image features, `train_views=2`; no random
contrast).

Differences from the authors' notebook, all deliberate and recorded:
- The training set is shuffled every epoch in an order drawn from the seed (the authors shuffled their
  arrays once, unseeded, and let Keras reshuffle unseeded).
- Validation is computed by `ValidationCallback` under a recorded protocol: "published" reproduces
  the authors' Keras validation (class-grouped, unshuffled, batch 8); "independent" switches the
  batch mixing off.
- Class weights are applied as per-image sample weights (what Keras does with `class_weight`); a class
  absent from the training labels gets weight 1.

Written against Keras 3's backend-neutral API: what differs between backends (deterministic kernels,
the per-batch loop of `fit_in_order`) is asked of `pattlite.backends`.
"""

from __future__ import annotations

import dataclasses
import math
import time

import keras
import numpy as np

from pattlite import backends
from pattlite.arrays import in_memory
from pattlite.backends.generic import train_step_variables  # noqa: F401  (importable from here)
from pattlite.callbacks import (  # all of them still importable from pattlite.train
    EpochLine,
    TestProbe,
    ValidationCallback,
    balanced_class_weights,
    check_data,
    history_dict,
    inverse_time_decay,
    logging_callbacks,
)
from pattlite.checkpoints import TrainingCheckpoint
from pattlite.evaluate import OrderedBatches, epoch_order
from pattlite.files import physical_memory
from pattlite.model import backbone_layers, count_params, finetune_model, set_finetune_trainable
from pattlite.recipe import TrainConfig
from pattlite.seeding import enable_determinism


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


# Training inputs up to this size are held in memory for the whole fit (float16 features of 10,000
# images at the default cut are 2.0 GB; a full FERPlus training set with its mirror images 11.4 GB):
# at least 4 GB, else half the machine's memory. Larger ones are read from their memory map chunk by chunk.
IN_MEMORY_BYTES = max(4 * 2**30, (physical_memory() or 8 * 2**30) // 2)  # unknown size: assume 8 GB
# Batches per compiled call on the JAX backend (and per host-side gather on every backend).
CHUNK_BATCHES = 128


def _in_memory(x):
    """x in memory when it fits `IN_MEMORY_BYTES` (`pattlite.arrays.in_memory`), else as it is."""
    return in_memory(x, IN_MEMORY_BYTES)


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
    the compiled step. The per-batch loop is the running backend's (`pattlite.backends`, its
    `train_steps`): a traced step per batch on TensorFlow, a compiled loop over `CHUNK_BATCHES`
    batches on JAX; other backends use the plain `fit`. `tests/test_train.py` checks that both paths
    give the same weights.

    Returns:
        The Keras `History` (also `model.history`).
    """
    engine = backends.current().train_steps
    y = np.asarray(y)
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype="float32")
    if engine is None:
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
        cached = (token, engine(model, int(batch_size), CHUNK_BATCHES))
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
    check_data(model, x_train, y_train, "training set", cfg.train_views)
    check_data(model, x_val, y_val, "validation set")
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
        ValidationCallback(x_val, y_val, cfg.validation, cfg.validation_batch_size, IN_MEMORY_BYTES),
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
    callbacks += logging_callbacks(log_dir, "stage1", tensorboard, append=stage is not None and stage.runs > 0)
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
        ValidationCallback(x_val, y_val, cfg.validation, cfg.validation_batch_size, IN_MEMORY_BYTES),
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
    callbacks += logging_callbacks(log_dir, "stage2", tensorboard, append=stage is not None and stage.runs > 0)
    if cfg.verbose:
        callbacks.append(EpochLine("stage 2"))
    start = time.time()
    # A different stream from stage 1, still drawn from the seed.
    history = _fit(
        finetune_graph, x_train, y_train, None, cfg, end_epoch, initial_epoch, callbacks, cfg.seed + 1_000_003, stage
    )
    seconds = time.time() - start + (0.0 if stage is None else stage.seconds_before)
    if checkpoint is not None:
        checkpoint.finish("stage2", finetune_graph, history_dict(history), seconds, test_probe=probe.probe_results)
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
    result.history["stage2"] = history_dict(history)
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
            cached backbone features; the flip through `train_views`).
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
        history1 = history_dict(history)
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
