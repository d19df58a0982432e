"""Test metrics under three evaluation protocols.

The authors' batch-mixing attention makes a prediction depend on the other images in its batch, so
"the accuracy" of such a model is only defined together with how test images are batched:

- `published`: the test set stably sorted by class (class-grouped, as the authors' arrays were),
  unshuffled, batch 32 (Keras' default `evaluate` batch size, what the authors' evaluation did).
- `shuffled`: a seeded random order, batch 32.
- `independent`: no prediction depends on another test image: the batch-mixing attention is switched
  off (`pattlite.model.set_batch_mixing`), which computes exactly what batch size 1 computes
  (`tests/test_evaluate.py` checks that equivalence). Models without batch mixing give the same numbers
  under every protocol.

Works on full models (uint8 images) and on heads (cached backbone features). Written against Keras 3's
backend-neutral API; the on-device prediction of in-memory features, where the running backend has one,
is `pattlite.backends`'.
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np

from pattlite import backends, config
from pattlite.arrays import gather_rows, in_memory, is_in_memory
from pattlite.config import PROTOCOLS
from pattlite.layers import BatchMixingAttention

# `in_memory` and `is_in_memory` (now in pattlite.arrays) stay importable from here.
__all__ = [
    "PUBLISHED_BATCH_SIZE",
    "epoch_order",
    "OrderedBatches",
    "batch_mixing_disabled",
    "batch_mixing_groups",
    "protocol_order",
    "is_in_memory",
    "in_memory",
    "predict",
    "metrics_from_predictions",
    "evaluate",
]

PUBLISHED_BATCH_SIZE = 32


def epoch_order(n: int, seed: int, epoch: int, views: int = 1) -> np.ndarray:
    """The row order of one training epoch: a permutation of the n samples drawn from
    `numpy.random.default_rng([seed, epoch])`; with `views` > 1 the inputs hold `views` blocks of n rows
    (block v holds view v of every sample: the originals, then e.g. their mirror images) and each sample
    is then read from one view drawn uniformly from the same generator, so every epoch sees each image
    as itself or as its mirror with probability 1/2. `views=1` draws nothing more: the orders of
    unaugmented training are unchanged."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(n).astype(np.int64)
    if views > 1:
        order += n * rng.integers(0, views, size=n)
    return order


class OrderedBatches(keras.utils.PyDataset):
    """Batches `x[order[i * batch_size : (i + 1) * batch_size]]`, read lazily (memory-mapped x stays on disk).

    Args:
        x: array (N, ...) of model inputs.
        order: indices into x, in the order batches are formed.
        batch_size: images per batch (the last batch may be smaller).
        y, sample_weight: optional per-image targets and weights, batched alongside x.
        reshuffle_seed: when not None, `order` is replaced by `epoch_order(len(x) // views,
            reshuffle_seed, epoch, views)` at the start of every epoch.
        views: x holds this many blocks of rows, one view of every sample each (`epoch_order`); y and
            sample_weight then have one entry per sample. Needs `reshuffle_seed`.
    """

    def __init__(self, x, order, batch_size, y=None, sample_weight=None, reshuffle_seed=None, views=1):
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=10)
        if views > 1 and (reshuffle_seed is None or len(x) % views):
            raise ValueError(f"views={views} needs reshuffle_seed and len(x) ({len(x)}) divisible by views")
        self.views = int(views)
        if self.views > 1:
            y = None if y is None else np.tile(np.asarray(y), self.views)
            sample_weight = None if sample_weight is None else np.tile(np.asarray(sample_weight), self.views)
        self.x, self.y, self.sample_weight = x, y, sample_weight
        self.order = np.asarray(order, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.reshuffle_seed = reshuffle_seed
        self.epoch = 0
        if reshuffle_seed is not None:
            self._reshuffle()

    def _reshuffle(self):
        self.order = epoch_order(len(self.x) // self.views, self.reshuffle_seed, self.epoch, self.views)

    def __len__(self):
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        # float16 features are widened here: CPU kernels for half precision are slow or missing.
        x = gather_rows(self.x, rows, "float32" if self.x.dtype == np.float16 else None)
        if self.y is None:
            return (x,)
        y = np.asarray(self.y)[rows]
        if self.sample_weight is None:
            return x, y
        return x, y, np.asarray(self.sample_weight, dtype="float32")[rows]

    def on_epoch_end(self):
        if self.reshuffle_seed is not None:
            self.epoch += 1
            self._reshuffle()


@contextlib.contextmanager
def _mixing_layers_set(model, **attributes):
    """Within the block, `attributes` are set on the model's mixing `BatchMixingAttention` layers.

    The compiled predict function bakes them in when traced, so one is kept per setting and swapped
    in and out: a validation callback that switches protocols every epoch then compiles each once.
    Nothing changes for models without batch mixing.
    """
    layers = [layer for layer in model.layers if isinstance(layer, BatchMixingAttention) and layer.mixing]
    if not layers:
        yield model
        return
    functions = model.__dict__.setdefault("_pattlite_predict_functions", {})
    state = lambda: tuple((layer.mixing, layer.group_size) for layer in layers)  # noqa: E731
    saved = [{name: getattr(layer, name) for name in attributes} for layer in layers]
    outer = state()
    functions[outer] = model.predict_function
    for layer in layers:
        for name, value in attributes.items():
            setattr(layer, name, value)
    inner = state()
    model.predict_function = functions.get(inner)
    try:
        yield model
    finally:
        functions[inner] = model.predict_function
        for layer, values in zip(layers, saved):
            for name, value in values.items():
                setattr(layer, name, value)
        model.predict_function = functions.get(outer)


def batch_mixing_disabled(model):
    """Within the block (a context manager), every `BatchMixingAttention` of `model` computes what
    batch size 1 computes.

    Unlike `pattlite.model.set_batch_mixing`, only the compiled predict function is swapped (it bakes
    the flag in when traced), so this is safe inside `fit` (validation callbacks).
    """
    return _mixing_layers_set(model, mixing=False)


def protocol_order(y, protocol: str, seed: int = 0) -> np.ndarray:
    """The order in which a protocol feeds images: indices into y.

    `published`: stably sorted by class (the dataset's own order within a class); `shuffled`: a
    permutation from `numpy.random.default_rng(seed)`; `independent`: the given order (it does not matter).
    """
    config.check_name("evaluation protocol", protocol, PROTOCOLS)
    y = np.asarray(y)
    if protocol == "published":
        return np.argsort(y, kind="stable")
    if protocol == "shuffled":
        return np.random.default_rng(seed).permutation(len(y))
    return np.arange(len(y))


def _check_inputs(model, x, y):
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} items but y has {len(y)} labels")
    if len(x) == 0:
        raise ValueError("cannot evaluate on an empty set (0 images)")
    expected = tuple(model.inputs[0].shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"inputs of shape {tuple(x.shape)} do not fit model {model.name!r}, which expects (N,) + {expected}"
        )


def batch_mixing_groups(model, group_size: int):
    """Within the block (a context manager), a batch of k * `group_size` rows is mixed as k batches of
    `group_size` consecutive rows (`BatchMixingAttention.group_size`): big inference batches, the small
    batches' composition."""
    return _mixing_layers_set(model, group_size=int(group_size))


def _rows_per_call() -> int:
    """Rows per inference call on cached features: the running backend's `PREDICT_ROWS` (512 on
    TensorFlow and other backends, 64 on JAX)."""
    return backends.current().PREDICT_ROWS


def _is_head(model) -> bool:
    return getattr(model, "_pattlite_spec", (None, None))[1] == "head"


def predict(model, x, y, protocol: str, seed: int = 0, batch_size: int = PUBLISHED_BATCH_SIZE) -> np.ndarray:
    """Class probabilities (N, C) under a protocol, in the ORIGINAL order of x.

    Every protocol keeps its batch composition: the images taken in the protocol's order, in batches
    of `batch_size` (the last one smaller). On a head (cached features) the batches are computed
    `_rows_per_call()` rows at a time (the backend's `PREDICT_ROWS`): the batch-mixing attention mixes each run
    of `batch_size` consecutive rows on its own (`batch_mixing_groups`), the rest of the head is per image in
    inference, so the result is what batches of `batch_size` give (tests/test_evaluate.py checks it).

    Args:
        model: a Keras model (full model on images, or a head on features).
        x: inputs (N, ...), e.g. uint8 images or float16 features; memory maps are read batch by batch.
        y: integer labels (N,); `published` groups batches by them.
        protocol: one of `PROTOCOLS`.
        seed: the `shuffled` order's seed.
        batch_size: images per batch (32 in the authors' evaluation).
    """
    config.check_name("evaluation protocol", protocol, PROTOCOLS)
    y = np.asarray(y)
    _check_inputs(model, x, y)
    order = protocol_order(y, protocol, seed)
    mixing_off = batch_mixing_disabled(model) if protocol == "independent" else contextlib.nullcontext()
    with mixing_off:
        if _is_head(model) and _rows_per_call() % int(batch_size) == 0:
            probs_in_order = _predict_grouped(model, x, order, int(batch_size))
        else:
            probs_in_order = model.predict(OrderedBatches(x, order, batch_size), verbose=0)
    probs = np.empty_like(probs_in_order)
    probs[order] = probs_in_order
    return probs


def _predict_grouped(model, x, order, batch_size):
    """Predictions in `order`, batches of `batch_size` computed `_rows_per_call()` rows per call; on the
    running backend's device when it has a way (`pattlite.backends`, `predict_in_memory`) and x is in
    memory."""
    on_device = backends.current().predict_in_memory
    if on_device is not None and is_in_memory(x):
        return on_device(model, x, order, batch_size, batch_mixing_groups(model, batch_size), _mixing_state)
    full = len(order) // batch_size * batch_size
    parts = []
    with batch_mixing_groups(model, batch_size):
        step = _rows_per_call()
        for start in range(0, full, step):
            rows = order[start : min(start + step, full)]
            parts.append(keras.ops.convert_to_numpy(model.predict_on_batch(gather_rows(x, rows))))
    if full < len(order):  # the last, smaller batch: a batch of its own
        parts.append(keras.ops.convert_to_numpy(model.predict_on_batch(gather_rows(x, order[full:]))))
    return np.concatenate(parts)


def _mixing_state(model) -> tuple:
    """The settings of the model's `BatchMixingAttention` layers, which a compiled call bakes in."""
    return tuple((layer.mixing, layer.group_size) for layer in model.layers if isinstance(layer, BatchMixingAttention))


def metrics_from_predictions(y, predictions, classes) -> dict:
    """Accuracy, per-class accuracy, mean class accuracy and confusion matrix (rows = true class), by
    scikit-learn: per-class accuracy is each class's recall, the mean class accuracy their mean over the
    classes present in `y` (balanced accuracy)."""
    from sklearn import metrics

    y = np.asarray(y, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    n = len(classes)
    if y.size and (y.min() < 0 or y.max() >= n):
        raise ValueError(f"labels range {y.min()}..{y.max()} does not fit the {n} classes {tuple(classes)}")
    labels = np.arange(n)
    if y.size:
        confusion = metrics.confusion_matrix(y, predictions, labels=labels)
        recall = metrics.recall_score(y, predictions, labels=labels, average=None, zero_division=np.nan)
    else:  # an empty test subset: scikit-learn refuses empty arrays
        confusion, recall = np.zeros((n, n), dtype=np.int64), np.full(n, np.nan)
    support = confusion.sum(axis=1)
    per_class = {c: (float(recall[i]) if support[i] else None) for i, c in enumerate(classes)}
    present = recall[support > 0]
    return {
        "n": int(len(y)),
        "accuracy": float(metrics.accuracy_score(y, predictions)) if len(y) else float("nan"),
        "per_class_accuracy": per_class,
        "mean_class_accuracy": float(np.mean(present)) if present.size else float("nan"),
        "support": {c: int(s) for c, s in zip(classes, support)},
        "confusion_matrix": confusion.tolist(),
    }


def evaluate(model, x, y, classes, protocol: str, seed: int = 0, batch_size: int = PUBLISHED_BATCH_SIZE) -> dict:
    """Evaluates a model on a test set under one protocol.

    Args:
        model: a Keras model (full model on uint8 images, or a head on cached features).
        x: inputs (N, ...).
        y: integer labels (N,), indices into `classes`.
        classes: the class names, in label order.
        protocol: "published", "shuffled" or "independent" (see the module docstring).
        seed: the `shuffled` protocol's seed.
        batch_size: images per batch (32: Keras' default, what the authors used).

    Returns:
        dict with protocol, seed, batch_size, n, accuracy, per_class_accuracy (class -> accuracy, None
        for a class absent from y), mean_class_accuracy (over present classes), support,
        confusion_matrix (counts, rows = true class, columns = predicted), predictions (int array in the
        original order of x) and probabilities (float array (N, C), same order).

    Raises:
        ValueError: unknown protocol (lists the valid ones), mismatching shapes, labels out of range.
    """
    config.check_name("evaluation protocol", protocol, PROTOCOLS)
    probs = predict(model, x, y, protocol, seed=seed, batch_size=batch_size)
    if probs.shape[1] != len(classes):
        raise ValueError(
            f"model {model.name!r} predicts {probs.shape[1]} classes but {len(classes)} "
            f"class names were given: {tuple(classes)}"
        )
    predictions = probs.argmax(axis=1)
    result = {"protocol": protocol, "seed": int(seed), "batch_size": int(batch_size)}
    result.update(metrics_from_predictions(y, predictions, classes))
    result["predictions"] = predictions
    result["probabilities"] = probs
    return result
