"""The PAtt-Lite model family's four custom Keras layers.

- `BatchMixingAttention`: the authors' attention across the batch axis (and its one-token-per-image
  form, the identity);
- `TokenSelfAttention`: the corrected model's attention of each image over its own patch tokens;
- `PatchSeparableConv2D`, `PatchConv2D`: `SeparableConv2D` / `Conv2D` with the same arguments,
  weights, outputs and gradients, whose call the running backend may replace with a faster form of
  its own (`pattlite.backends`: on JAX, patches and matrix products instead of XLA's convolutions).

Every layer is registered for Keras serialisation under the package name "pattlite". The model
builders are in `pattlite.model`.
"""

from __future__ import annotations

import keras
from keras import ops

from pattlite import backends

__all__ = ["BatchMixingAttention", "TokenSelfAttention", "PatchSeparableConv2D", "PatchConv2D"]


def _softmax_last(scores):
    # Written out: keras' softmax op warns on a size-1 axis, which batch size 1 legitimately gives.
    weights = ops.exp(scores - ops.max(scores, axis=-1, keepdims=True))
    return weights / ops.sum(weights, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="pattlite")
class BatchMixingAttention(keras.layers.Layer):
    """Dot-product self-attention over the batch axis of a 2-D input, as the authors' code computes it.

    For X of shape (batch, dim): `softmax(s * X X^T) X`, a (batch, batch) score matrix, so each image's
    vector becomes a weighted average of the vectors of every image in the same batch. This is what
    `keras.layers.Attention(use_scale=True)([x, x])` computes on a 2-D `x`. One weight: the scalar
    scale `s`, initialised to 1 (as Attention's `use_scale`). With batch size 1 the layer is the
    identity.

    Args:
        mixing: True (the authors' behaviour) mixes the batch. False computes what batch size 1 (or
            one token per image) computes: `softmax` over a single score is 1, so the output is the
            input. Toggle on a built model with `set_batch_mixing`.
    """

    def __init__(self, mixing=True, **kwargs):
        super().__init__(**kwargs)
        self.mixing = bool(mixing)
        # Inference speed-up (pattlite.evaluate): with group_size g, a batch of k * g rows is mixed as k
        # separate batches of g consecutive rows, exactly what k calls at batch size g compute.
        self.group_size = None

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{self.name}: expected a 2-D input (batch, dim), got shape {input_shape}")
        self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=True)

    def call(self, inputs):
        if self.mixing:
            x = inputs if self.group_size is None else ops.reshape(inputs, (-1, self.group_size, inputs.shape[-1]))
            scores = self.scale * ops.matmul(x, ops.swapaxes(x, -1, -2))  # (B, B) or (k, g, g)
            mixed = ops.matmul(_softmax_last(scores), x)
            return mixed if self.group_size is None else ops.reshape(mixed, (-1, inputs.shape[-1]))
        # One token per image: its only score is with itself, and a softmax over one score is 1.
        scores = self.scale * ops.sum(inputs * inputs, axis=-1, keepdims=True)  # (B, 1)
        return _softmax_last(scores) * inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mixing": self.mixing}


@keras.saving.register_keras_serializable(package="pattlite")
class TokenSelfAttention(keras.layers.Layer):
    """Dot-product self-attention of each sample over its own tokens.

    For T of shape (batch, tokens, dim): `softmax(s * T T^T) T` per sample, with one learnable scalar
    scale `s` initialised to 1. Nothing crosses the batch axis.
    """

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expected a 3-D input (batch, tokens, dim), got shape {input_shape}")
        self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=True)

    def call(self, inputs):
        scores = self.scale * ops.matmul(inputs, ops.transpose(inputs, (0, 2, 1)))  # (B, T, T)
        return ops.matmul(_softmax_last(scores), inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


# --------------------------------------------------------------------------------------------------
# Patch extraction layer
# --------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="pattlite")
class PatchSeparableConv2D(keras.layers.SeparableConv2D):
    """`keras.layers.SeparableConv2D` whose stride equals its kernel: non-overlapping patches.

    Same arguments, weights, outputs and gradients as `SeparableConv2D`. The running backend may
    compute it its own way (`pattlite.backends`, `patch_separable_conv`): on JAX the depthwise step is
    the kernel taps' strided slices multiplied and summed (under differentiation the padded input cut
    into patches, with a hand-written gradient) and the pointwise step one matrix product, since XLA's
    CPU gradient of the grouped convolution that `SeparableConv2D` lowers to is far slower
    (docs/audit.md). Other backends use `SeparableConv2D.call`, which TensorFlow runs faster than the
    JAX form.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if tuple(self.strides) != tuple(self.kernel_size) or tuple(self.dilation_rate) != (1, 1):
            raise ValueError(
                f"{self.name}: strides {self.strides} must equal kernel_size "
                f"{self.kernel_size}, without dilation (non-overlapping patches)"
            )
        if self.data_format != "channels_last" or self.depth_multiplier != 1:
            raise ValueError(f"{self.name}: expected channels_last and depth_multiplier 1")

    def call(self, inputs):
        form = backends.current().patch_separable_conv
        return super().call(inputs) if form is None else form(self, inputs)


@keras.saving.register_keras_serializable(package="pattlite")
class PatchConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (channels_last, no dilation, one group) whose JAX form is patches and a
    matrix product: Table 5's one-convolution patch blocks.

    Same arguments, weights, outputs and gradients as `Conv2D`. The running backend may compute it its
    own way (`pattlite.backends`, `patch_conv`): on JAX the input is padded as TensorFlow pads, cut
    into the kernel-sized patches at each output position and multiplied by the kernel as one
    (kernel_h * kernel_w * channels) x filters matrix, since XLA's CPU gradient of these large
    convolutions is far slower (docs/audit.md). Other backends use `Conv2D.call`.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if tuple(self.dilation_rate) != (1, 1) or self.groups != 1 or self.data_format != "channels_last":
            raise ValueError(f"{self.name}: expected channels_last, no dilation and one group")

    def call(self, inputs):
        form = backends.current().patch_conv
        return super().call(inputs) if form is None else form(self, inputs)
