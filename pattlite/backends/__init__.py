"""The one seam between the package and the Keras backend it runs on.

Everything that differs between Keras' TensorFlow and JAX backends lives in this package: the fast
training loops, the on-device prediction, the patch layers' JAX forms with their hand-written
gradients, deterministic kernels (`deterministic_ops`, which `pattlite.seeding.enable_determinism` asks
for), and which work needs TensorFlow models. The rest of the package
never asks which backend runs; it asks `current()` for the module of the running backend
(`pattlite.backends.tensorflow`, `pattlite.backends.jax`, or `pattlite.backends.generic` for any
other) and uses the names `pattlite.backends.generic` documents. `name()` is the running backend's
name, for records, messages and choosing which process runs a trial (`pattlite.grid_ray.trial_backend`),
never a code path.

Importing this package imports neither TensorFlow nor JAX; `current()` imports Keras (which loads
its backend) and the backend's module.
"""

from __future__ import annotations

import importlib

__all__ = ["name", "current", "MODULES"]

# The backends with a module of their own; any other gets `pattlite.backends.generic`.
MODULES = {"tensorflow": "pattlite.backends.tensorflow", "jax": "pattlite.backends.jax"}


def name() -> str:
    """The running Keras backend's name ("tensorflow", "jax", ...)."""
    import keras

    return keras.config.backend()


def current():
    """The module of the running Keras backend (its interface: `pattlite.backends.generic`)."""
    return importlib.import_module(MODULES.get(name(), "pattlite.backends.generic"))
