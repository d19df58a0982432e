"""Seeding a training: Python, NumPy and the Keras backend, and, when asked, deterministic kernels.

Above both `pattlite.backends` (which kernels are deterministic is the backend's business) and
`pattlite.backbone` (whose layer-name cache must be built before seeding, see below).
"""

from __future__ import annotations

from pattlite import backends


def enable_determinism(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and the Keras backend; optionally asks for deterministic ops.

    Keras 3 has no backend-neutral switch for deterministic kernels, so `deterministic=True` asks the
    running backend's module (`deterministic_ops`): TensorFlow's `enable_op_determinism`; nothing on
    JAX (deterministic on CPU already; on GPU set XLA_FLAGS=--xla_gpu_deterministic_ops=true before
    starting). On CPU with TensorFlow the recipe is repeatable with seeds alone (tests/test_train.py
    checks it).
    """
    import random

    import keras

    from pattlite.backbone import cut_layer_name

    # The backbone builds a reference MobileNet once, lazily, to learn layer names; that draws from
    # the seeded Python RNG, so it must happen before seeding, or the first model of a process would
    # get different initial weights than the next ones.
    cut_layer_name(29)
    keras.utils.set_random_seed(int(seed))  # Python, NumPy and the backend
    random.seed(int(seed))
    if deterministic:
        backends.current().deterministic_ops()
