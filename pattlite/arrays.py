"""Low-level array helpers shared by training, evaluation and the feature cache (no Keras, no backend).

- `aligned_empty`: a NumPy buffer whose data starts at an `ALIGNMENT`-byte boundary, which the JAX
  backend's CPU client reads in place instead of copying it;
- `is_in_memory` / `in_memory`: whether inputs are an ordinary in-memory array, and reading a memory map
  or `pattlite.features.FeatureRows` into one (when it fits a budget);
- `gather_rows`: `x[rows]` for any of those inputs, reading memory maps in row order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ALIGNMENT", "aligned_empty", "is_in_memory", "in_memory", "gather_rows"]

# XLA's CPU client uses a host array in place, without a copy, when its data is aligned to this many
# bytes (NumPy's own large arrays are usually 16 bytes off).
ALIGNMENT = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """`np.empty(shape, dtype)` whose data starts at a multiple of `ALIGNMENT` bytes, so that the JAX
    backend can read it in place (`jax.device_put(..., may_alias=True)`) instead of copying it."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def is_in_memory(x) -> bool:
    """True for an ordinary NumPy array (not a memory map, not `FeatureRows`)."""
    return isinstance(x, np.ndarray) and not isinstance(x, np.memmap)


def in_memory(x, max_bytes: float = float("inf")):
    """x as an in-memory NumPy array when it takes at most `max_bytes`, else x as it is.

    A memory map or `pattlite.features.FeatureRows` is read once, sequentially, into an
    `aligned_empty` buffer, which the JAX backend then uses in place instead of copying it on every
    call. An in-memory array is returned as it is (the JAX backend copies it when it is not aligned).
    """
    if is_in_memory(x):
        return x
    nbytes = getattr(x, "nbytes", None)
    if nbytes is None or nbytes > max_bytes:
        return x
    out = aligned_empty(x.shape, x.dtype)
    rows = max(1, (64 * 2**20) // max(1, nbytes // max(1, len(x))))  # reads of about 64 MB
    for start in range(0, len(x), rows):
        out[start : start + rows] = x[start : start + rows]
    return out


def gather_rows(x, rows, dtype=None) -> np.ndarray:
    """`x[rows]` as a NumPy array (of `dtype`, default x's) for an in-memory array, a memory map or
    `FeatureRows`: an in-memory array is indexed directly; any other input is read in ascending row
    order (faster on memory maps; `FeatureRows` sorts per shard too), then put back in the asked order."""
    rows = np.asarray(rows)
    if is_in_memory(x):
        out = x[rows]
        return out if dtype is None else out.astype(dtype, copy=False)
    sort = np.argsort(rows, kind="stable")
    out = np.empty((len(rows),) + tuple(x.shape[1:]), dtype=x.dtype if dtype is None else dtype)
    out[sort] = x[rows[sort]]
    return out
