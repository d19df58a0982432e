"""Keras' JAX backend: the patch layers' JAX forms, the compiled training loop, on-device prediction
and `pattlite.bench`'s matrix-product ceiling.

- `patch_separable_conv`, `patch_conv`: what `pattlite.layers.PatchSeparableConv2D` and `PatchConv2D`
  compute on JAX: strided slices, patches and matrix products instead of XLA's (grouped)
  convolutions, whose CPU gradients are far slower; the depthwise step has a hand-written gradient
  (`patch_depthwise`). Same outputs and gradients as Keras' layers, up to float rounding.
- `train_steps`: the full batches of a chunk in one compiled call (`jax.lax.fori_loop` over
  `model.train_step`), on inputs held as device arrays.
- `predict_in_memory`: prediction of in-memory features on the device, `PREDICT_ROWS` rows per block,
  up to `BLOCKS_PER_CALL` blocks per compiled call.
- `step_products`, `products_only_rate`: every matrix product of a training step, and how fast this
  CPU runs them alone.

Measured speeds of these choices are recorded in docs/audit.md.
"""

from __future__ import annotations

import jax
import numpy as np
from keras import ops

from pattlite.arrays import gather_rows, is_in_memory
from pattlite.backends.generic import deterministic_ops, train_step_variables, widen

__all__ = [
    "TENSORFLOW_MODELS",
    "PREDICT_ROWS",
    "BLOCKS_PER_CALL",
    "patch_separable_conv",
    "patch_conv",
    "patch_depthwise",
    "train_steps",
    "predict_in_memory",
    "deterministic_ops",
    "accelerators",
    "step_products",
    "products_only_rate",
]

TENSORFLOW_MODELS = False
# Rows per inference call on cached features, a multiple of every protocol batch size used (8, 32):
# fastest at 64 with the features on the device (at 128 a call's float32 copy of its features
# outgrows a 32 MB L3 cache; docs/audit.md).
PREDICT_ROWS = 64
# Up to this many blocks of `PREDICT_ROWS` rows per compiled call, one `jax.lax.map` over them.
BLOCKS_PER_CALL = 16


# --------------------------------------------------------------------------------------------------
# The patch layers' JAX forms
# --------------------------------------------------------------------------------------------------


def conv_padding(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int, int]:
    """Output size and the padding before and after along one axis, as TensorFlow (and XLA's "SAME")
    pad: the extra pixel goes last."""
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return out, total // 2, total - total // 2
    return (size - kernel) // stride + 1, 0, 0


def _patches(padding, inputs, kh, kw):
    """(batch, h, w, c) -> (batch, out_h, kh, out_w, kw, c): padded as TensorFlow pads, cut into
    non-overlapping kh x kw patches (a reshape)."""
    (out_h, top, bottom), (out_w, left, right) = (
        conv_padding(int(inputs.shape[1]), kh, kh, padding),
        conv_padding(int(inputs.shape[2]), kw, kw, padding),
    )
    if top or bottom or left or right:
        inputs = ops.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])
    channels = int(inputs.shape[-1])
    return ops.reshape(inputs[:, : out_h * kh, : out_w * kw, :], (-1, out_h, kh, out_w, kw, channels))


def _patch_taps(size: int, kernel: int, padding: str) -> list[tuple[int, int, int, int]]:
    """For each kernel offset along one axis of `size` pixels (stride = kernel): the first input index
    it reads, how many patches read a real pixel there, and how many patches before and after read
    padding instead. 'same' pads as TensorFlow does: output ceil(size / kernel), extra pixel last."""
    out, before, _ = conv_padding(size, kernel, kernel, padding)
    taps = []
    for offset in range(kernel):
        index = [patch * kernel + offset - before for patch in range(out)]
        real = [i for i in index if 0 <= i < size]
        taps.append((real[0] if real else 0, len(real), sum(i < 0 for i in index), sum(i >= size for i in index)))
    return taps


def _depthwise(padding, size, inputs, kernel):
    (kh, kw), (height, width) = kernel.shape[:2], size
    rows, cols = _patch_taps(height, kh, padding), _patch_taps(width, kw, padding)
    mixed = 0
    for i, (row, n_rows, rows_before, rows_after) in enumerate(rows):
        for j, (col, n_cols, cols_before, cols_after) in enumerate(cols):
            if n_rows == 0 or n_cols == 0:
                continue  # this kernel tap only ever sees padding
            taps = inputs[:, row : row + (n_rows - 1) * kh + 1 : kh, col : col + (n_cols - 1) * kw + 1 : kw, :]
            taps = taps * kernel[i, j, :, 0]
            if rows_before or rows_after or cols_before or cols_after:
                taps = ops.pad(taps, [[0, 0], [rows_before, rows_after], [cols_before, cols_after], [0, 0]])
            mixed = mixed + taps
    return mixed


def _depthwise_forward(padding, size, inputs, kernel):
    kh, kw, channels = kernel.shape[:3]
    patches = _patches(padding, inputs, kh, kw)
    return ops.sum(patches * ops.reshape(kernel, (kh, 1, kw, channels)), axis=(2, 4)), (patches, kernel)


def _depthwise_backward(padding, size, saved, gradient):
    (patches, kernel), (height, width) = saved, size
    kh, kw, channels = kernel.shape[:3]
    gradient = jax.lax.optimization_barrier(gradient)[:, :, None, :, None, :]
    kernel_gradient = ops.reshape(ops.sum(patches * gradient, axis=(0, 1, 3)), kernel.shape)
    # The input's gradient: each patch pixel's, back in place; padding dropped, unread pixels zero.
    (_, out_h, _, out_w, _, _) = patches.shape
    grid = ops.reshape(gradient * ops.reshape(kernel, (kh, 1, kw, channels)), (-1, out_h * kh, out_w * kw, channels))
    (_, top, _), (_, left, _) = (conv_padding(height, kh, kh, padding), conv_padding(width, kw, kw, padding))
    grid = grid[:, top : top + height, left : left + width, :]
    missing_h, missing_w = height - int(grid.shape[1]), width - int(grid.shape[2])
    if missing_h or missing_w:  # 'valid' leaves the last rows or columns unread
        grid = ops.pad(grid, [[0, 0], [0, missing_h], [0, missing_w], [0, 0]])
    return grid, kernel_gradient


# The depthwise step of `PatchSeparableConv2D`, f(padding, (h, w), inputs (batch, h, w, c), kernel
# (kh, kw, c, 1)) -> (batch, out_h, out_w, c), with a hand-written gradient.
#
# Without differentiation (prediction) it sums kh x kw strided slices of the input, each times its
# kernel tap, padding only these small results: the input is read in place (a padded float32 copy of
# 64 feature maps would outgrow a 32 MB L3 cache, and prediction ran several times slower). Under
# differentiation (training) the input is padded and cut into patches once, kept for the gradient;
# the two forms differ in float rounding only. The gradient is the one JAX derives, except that the
# incoming gradient passes an optimization barrier: without it XLA fuses the matrix product that
# makes it (the pointwise step's) into the kernel gradient's reduction, and the fused kernel runs
# slower (docs/audit.md). XLA drops the input gradient when nothing needs it (the first layer of a
# head on features).
patch_depthwise = jax.custom_vjp(_depthwise, nondiff_argnums=(0, 1))
patch_depthwise.defvjp(_depthwise_forward, _depthwise_backward)


def patch_separable_conv(layer, inputs):
    """`PatchSeparableConv2D.call` on JAX: the depthwise step `patch_depthwise`, the pointwise step
    one matrix product."""
    size = (int(inputs.shape[1]), int(inputs.shape[2]))
    mixed = patch_depthwise(layer.padding, size, inputs, ops.convert_to_tensor(layer.depthwise_kernel))
    channels, (_, out_h, out_w, _) = int(inputs.shape[-1]), mixed.shape
    outputs = ops.matmul(ops.reshape(mixed, (-1, channels)), ops.reshape(layer.pointwise_kernel, (channels, -1)))
    outputs = ops.reshape(outputs, (-1, out_h, out_w, layer.filters))
    if layer.use_bias:
        outputs = outputs + layer.bias
    return outputs if layer.activation is None else layer.activation(outputs)


def patch_conv(layer, inputs):
    """`PatchConv2D.call` on JAX: the input padded as TensorFlow pads, cut into the kernel-sized
    patches at each output position (a reshape when the stride equals the kernel, else kernel_h x
    kernel_w strided slices side by side) and multiplied by the kernel as one
    (kernel_h * kernel_w * channels) x filters matrix."""
    (kh, kw), (sh, sw), channels = layer.kernel_size, layer.strides, int(inputs.shape[-1])
    (out_h, top, bottom), (out_w, left, right) = (
        conv_padding(int(inputs.shape[1]), kh, sh, layer.padding),
        conv_padding(int(inputs.shape[2]), kw, sw, layer.padding),
    )
    if (kh, kw) == (sh, sw):  # non-overlapping patches: a reshape
        x = ops.transpose(_patches(layer.padding, inputs, kh, kw), (0, 1, 3, 2, 4, 5))
    else:
        x = inputs
        if top or bottom or left or right:
            x = ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
        x = ops.stack(
            [
                x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
                for i in range(kh)
                for j in range(kw)
            ],
            axis=3,
        )
    # (batch, out_h, out_w, kh * kw * channels) in the kernel's (i, j, c) order
    x = ops.reshape(x, (-1, out_h, out_w, kh * kw * channels))
    outputs = ops.matmul(x, ops.reshape(layer.kernel, (kh * kw * channels, layer.filters)))
    if layer.use_bias:
        outputs = outputs + layer.bias
    return outputs if layer.activation is None else layer.activation(outputs)


# --------------------------------------------------------------------------------------------------
# Training: a compiled loop over the batches of a chunk
# --------------------------------------------------------------------------------------------------


def train_steps(model, batch_size, chunk_batches):
    """The full batches of a chunk in one compiled call (`jax.lax.fori_loop` over `model.train_step`);
    the model's variables are read before and written back after each chunk.

    Returns (prepare, run). `prepare` puts in-memory inputs on the device once per fit (on the CPU
    without a copy when aligned, `pattlite.arrays.aligned_empty`); each step then gathers its batch
    there, by the row numbers it is given (faster than gathering and copying each chunk on the host,
    which stays for inputs not in memory). The row numbers of a chunk are passed as `chunk_batches`
    batches (a shorter chunk padded with rows that are never read) with its number of batches as an
    argument, so the loop compiles once per model and input shape.
    """

    def batch_of(arrays, rows):
        batch = tuple(a[rows] for a in arrays)
        return (widen(batch[0]),) + batch[1:]

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
    chunk = chunk_batches * batch_size

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
            arrays = tuple(gather_rows(a, rows) for a in arrays)
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


# --------------------------------------------------------------------------------------------------
# Prediction of in-memory features on the device
# --------------------------------------------------------------------------------------------------


def predict_in_memory(model, x, order, batch_size, grouped, mixing_state):
    """`pattlite.evaluate`'s grouped prediction for in-memory x: x is put on the device once (in
    place when aligned), and each compiled call maps over up to `BLOCKS_PER_CALL` blocks of
    `PREDICT_ROWS` rows, each block gathering its rows there: no host-side gather and copy, and few
    calls. Calls take 16, 8, 4, 2 or 1 blocks (the last block padded with whole batches of row 0,
    dropped), so each batch-mixing setting compiles at most 5 shapes.

    `grouped`: the context manager in which batches of `batch_size` rows are mixed on their own
    (`pattlite.evaluate.batch_mixing_groups`); `mixing_state(model)`: what keys a compiled function
    (the batch-mixing layers' settings, which a trace bakes in).
    """
    functions = model.__dict__.setdefault("_pattlite_jax_predict", {})

    def compiled(kind):
        key = (mixing_state(model), kind)
        if key not in functions:

            def run(trainable, non_trainable, features, rows):
                inputs = features[rows]
                if inputs.dtype == np.float16:  # widened inside the call, as in training
                    inputs = inputs.astype("float32")
                return model.stateless_call(trainable, non_trainable, inputs, training=False)[0]

            def run_blocks(trainable, non_trainable, features, blocks):
                return jax.lax.map(lambda rows: run(trainable, non_trainable, features, rows), blocks)

            functions[key] = jax.jit(run_blocks if kind == "blocks" else run)
        return functions[key]

    features = jax.device_put(x, may_alias=True)
    weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
    step = PREDICT_ROWS
    full = len(order) // batch_size * batch_size
    rows = np.asarray(order, dtype=np.int32)
    parts = []
    with grouped:
        run = compiled("blocks")
        start = 0
        while start < full:
            blocks = min(BLOCKS_PER_CALL, 1 << ((full - start + step - 1) // step).bit_length() - 1)
            chunk = rows[start : min(start + blocks * step, full)]
            real = len(chunk)
            if real < blocks * step:  # whole batches of row 0, dropped below
                chunk = np.concatenate([chunk, np.zeros(blocks * step - real, np.int32)])
            out = run(*weights, features, chunk.reshape(blocks, step))
            parts.append(out.reshape(blocks * step, -1)[:real])
            start += real
    if full < len(order):  # the last, smaller batch: a batch of its own
        parts.append(compiled("rows")(*weights, features, rows[full:]))
    return np.concatenate([np.asarray(part) for part in parts])


# --------------------------------------------------------------------------------------------------
# pattlite.bench: the matrix products of a training step
# --------------------------------------------------------------------------------------------------


def step_products(model, batch) -> list:
    """Every matrix product (`dot_general`) of one `model.train_step` on `batch`, as (lhs aval, rhs
    aval, dimension numbers, multiply-adds). The model must be compiled and built."""
    state = tuple([v.value for v in group] for group in train_step_variables(model))
    products = []

    def collect(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
                (contract, _), _ = eqn.params["dimension_numbers"]
                depth = int(np.prod([lhs.shape[d] for d in contract]))
                products.append(
                    (lhs, rhs, eqn.params["dimension_numbers"], int(np.prod(eqn.outvars[0].aval.shape)) * depth)
                )
            for value in eqn.params.values():  # sub-computations: loops, calls, custom gradients
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr (duck-typed: the
                    if hasattr(sub, "eqns"):  # classes moved between JAX versions)
                        collect(sub)

    collect(jax.make_jaxpr(model.train_step)(state, batch).jaxpr)
    return products


def products_only_rate(model, batch, repeats: int, steps: int = 256, median_rate=None) -> dict:
    """How fast this CPU runs the matrix products of `model.train_step` alone, at their shapes
    (`step_products`), `steps` times in one compiled loop: a ceiling for any training loop built from
    XLA's kernels, whatever else the step does. Each product's smaller operand gets the loop's scalar
    added, so that XLA cannot hoist the product out of the loop (one elementwise pass over that
    operand, included in the time). `median_rate(samples, call, repeats)` times the loop
    (`pattlite.bench`'s)."""
    products = step_products(model, batch)
    rng = np.random.default_rng(0)
    operands = [
        tuple(jax.numpy.asarray(rng.normal(0, 0.01, aval.shape).astype(aval.dtype)) for aval in (lhs, rhs))
        for lhs, rhs, _, _ in products
    ]

    def one_step(_, carry):
        total = carry
        for (lhs, rhs), (_, _, numbers, _) in zip(operands, products):
            if lhs.size <= rhs.size:
                lhs = lhs + carry.astype(lhs.dtype)
            else:
                rhs = rhs + carry.astype(rhs.dtype)
            total = total + jax.lax.dot_general(lhs, rhs, numbers).ravel()[0].astype(total.dtype) * 1e-30
        return total

    run = jax.jit(lambda: jax.lax.fori_loop(0, steps, one_step, jax.numpy.float32(0)))
    jax.block_until_ready(run())  # compiles
    batch_size = len(batch[0])
    rate = median_rate(steps * batch_size, lambda: jax.block_until_ready(run()), repeats)
    rate.update(products=len(products), multiply_adds_per_step=sum(p[3] for p in products))
    return rate


def accelerators() -> list[str]:
    """The devices JAX sees other than the CPU, by kind."""
    return [d.device_kind for d in jax.devices() if d.platform != "cpu"]
