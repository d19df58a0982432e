"""The one seam between the package and the Keras backend it runs on.

Everything that differs between Keras' TensorFlow and JAX backends lives in this package: the fast
training loops, the on-device prediction, the patch layers' JAX forms with their hand-written
gradients, deterministic kernels (`enable_determinism`), and which work needs TensorFlow models. The rest of the package
never asks which backend runs; it asks `current()` for the module of the running backend
(`pattlite.backends.tensorflow`, `pattlite.backends.jax`, or `pattlite.backends.generic` for any
other) and uses the names `pattlite.backends.generic` documents. `name()` is the running backend's
name, for records.

Importing this package imports neither TensorFlow nor JAX; `current()` imports Keras (which loads
its backend) and the backend's module.
"""

from __future__ import annotations

import importlib

__all__ = ["name", "current", "enable_determinism", "MODULES"]

# The backends with a module of their own; any other gets `pattlite.backends.generic`.
MODULES = {"tensorflow": "pattlite.backends.tensorflow", "jax": "pattlite.backends.jax"}


def name() -> str:
    """The running Keras backend's name ("tensorflow", "jax", ...)."""
    import keras

    return keras.config.backend()


def current():
    """The module of the running Keras backend (its interface: `pattlite.backends.generic`)."""
    return importlib.import_module(MODULES.get(name(), "pattlite.backends.generic"))


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
        current().deterministic_ops()
