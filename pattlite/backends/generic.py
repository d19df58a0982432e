"""The fallback backend: what every Keras backend can do, with Keras' own code paths only.

Used for a backend that has no module of its own here (e.g. PyTorch), and the shared base of
`pattlite.backends.tensorflow` and `pattlite.backends.jax`: each of them starts from these names and
replaces the ones it does differently. The names (the interface of `pattlite.backends.current()`):

- `TENSORFLOW_MODELS`: the process's Keras models are TensorFlow models (`tf.function`, SavedModel
  export, `tf.GradientTape`), which the feature extractor, the exports and Grad-CAM need; elsewhere
  they run in a TensorFlow child process, or refuse.
- `PREDICT_ROWS`: rows per inference call on cached features (`pattlite.evaluate.predict`).
- `patch_separable_conv(layer, inputs)`, `patch_conv(layer, inputs)`: the patch layers' own forms
  (`pattlite.layers`), or None for Keras' `SeparableConv2D.call` / `Conv2D.call`.
- `train_steps(model, batch_size, chunk_batches)`: the fast training loop's engine (prepare, run) for
  `pattlite.train.fit_in_order`, or None for Keras' plain `fit`.
- `predict_in_memory`: the on-device prediction of in-memory features, or None.
- `deterministic_ops()`: asks the backend for deterministic kernels.
- `step_products`, `products_only_rate`: `pattlite.bench`'s matrix products of a training step and
  their ceiling rate, or None.
- `accelerators()`: the names of the GPUs/TPUs the backend sees (empty on a CPU), for the records.
"""

from __future__ import annotations

import keras

TENSORFLOW_MODELS = False
# A multiple of every protocol batch size used (8, 32).
PREDICT_ROWS = 512
patch_separable_conv = None
patch_conv = None
train_steps = None
predict_in_memory = None
step_products = None
products_only_rate = None


def accelerators() -> list[str]:
    """No accelerator this module knows how to list."""
    return []


def deterministic_ops() -> None:
    """Nothing to ask: the backend has no switch (JAX on CPU is deterministic already; on GPU set
    XLA_FLAGS=--xla_gpu_deterministic_ops=true before starting)."""


def widen(x):
    """float16 inputs cast to float32 inside the compiled step: CPU kernels for half precision are slow."""
    return keras.ops.cast(x, "float32") if keras.backend.standardize_dtype(x.dtype) == "float16" else x


def train_step_variables(model) -> tuple:
    """The four variable lists whose values make the state of Keras' stateless JAX `train_step`:
    trainable, non-trainable, optimizer and metric variables, in that order."""
    return (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )
