"""Keras' TensorFlow backend: its training step engine and deterministic kernels.

Keras models here are TensorFlow models, which the feature extractor (OpenVINO converts its
SavedModel), the ONNX/OpenVINO exports and Grad-CAM (tf-keras-vis) need. Prediction on cached
features runs `PREDICT_ROWS` rows per call (Keras' `predict_on_batch`); the patch layers use Keras'
own convolutions, which TensorFlow runs faster than their JAX forms (docs/audit.md). TensorFlow is
imported only inside the functions that call it.
"""

from __future__ import annotations

from pattlite.arrays import gather_rows
from pattlite.backends.generic import (
    patch_conv,
    patch_separable_conv,
    predict_in_memory,
    products_only_rate,
    step_products,
    widen,
)

__all__ = [
    "TENSORFLOW_MODELS",
    "PREDICT_ROWS",
    "patch_separable_conv",
    "patch_conv",
    "train_steps",
    "predict_in_memory",
    "deterministic_ops",
    "accelerators",
    "step_products",
    "products_only_rate",
]

TENSORFLOW_MODELS = True
# Fastest on cached features (docs/audit.md); a multiple of every protocol batch size used (8, 32).
PREDICT_ROWS = 512


def deterministic_ops() -> None:
    """TensorFlow's `enable_op_determinism` (Keras 3 has no backend-neutral switch)."""
    import tensorflow as tf  # edge: the one TensorFlow call of the training code

    tf.config.experimental.enable_op_determinism()


def train_steps(model, batch_size, chunk_batches):
    """One traced `model.train_step` call per batch, as Keras' own train function.

    A `tf.while_loop` over many steps in one call runs the body slower than one call per step
    (measured on CPU), so this loops in Python over a traced step. Returns (prepare, run): the inputs
    stay host arrays; `run(arrays, rows)` gathers the chunk `rows` on the host. `chunk_batches` is not
    used: the caller's chunks are gathered whole.
    """
    import tensorflow as tf  # edge: the backend's function tracing

    def one_step(data):
        return model.train_step((widen(data[0]),) + tuple(data[1:]))

    step = tf.function(one_step, reduce_retracing=True, jit_compile=model.jit_compile)

    def run(arrays, rows):
        chunk = tuple(gather_rows(a, rows) for a in arrays)
        for start in range(0, len(rows), batch_size):
            step(tuple(a[start : start + batch_size] for a in chunk))

    return (lambda arrays: arrays), run


def accelerators() -> list[str]:
    """The GPUs TensorFlow sees, by device name."""
    import tensorflow as tf  # already imported by Keras' backend: no cost

    names = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(details.get("device_name", device.name))
    return names
