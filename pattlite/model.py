"""The PAtt-Lite model family: the authors' model as coded, a corrected model and the paper's ablations.

Every model is a flat Keras functional graph (no nested sub-models) so Grad-CAM can reach any layer and
fine-tuning can unfreeze backbone layers one by one:

    image -> resize -> [random flip, random contrast] -> MobileNet preprocessing
          -> MobileNetV1 layers up to the cut (original Keras names, frozen) -> head

Keras 3 only (`keras`, `keras.ops`), so the models also run on Keras' JAX backend. The readings of what
the paper leaves vague are written down in docs/model.md.

Longer than the project's ~500-line guide on purpose: every piece of model code (the variant registry,
the three custom layers, backbone, heads, fine-tuning and batch-mixing switches) lives here, in one
place, as in Keras' application builders; split, each part would import the others' internals.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import warnings
from pathlib import Path

import keras
from keras import ops

from pattlite import config

__all__ = [
    "Variant",
    "VARIANTS",
    "COMMON_OPTIONS",
    "KERNEL_CODES",
    "DEFAULT_CUT_LAYER",
    "FULL_BACKBONE_LAYER",
    "AUTHORS_FINETUNE_REQUEST",
    "WeightsError",
    "WeightsNotFoundError",
    "BatchMixingAttention",
    "TokenSelfAttention",
    "PatchSeparableConv2D",
    "PatchConv2D",
    "mobilenet_layer_names",
    "cut_layer_name",
    "count_params",
    "variant_cut_layer",
    "build_model",
    "build_backbone",
    "build_head",
    "copy_head_weights",
    "backbone_layers",
    "head_layers",
    "finetune_model",
    "set_finetune_trainable",
    "calibrate_batchnorm",
    "set_batch_mixing",
]

# --------------------------------------------------------------------------------------------------
# Registry and constants
# --------------------------------------------------------------------------------------------------

DEFAULT_CUT_LAYER = 29
FULL_BACKBONE_LAYER = "conv_pw_13_relu"
# Options every variant takes, with their defaults: the side images are resized to before the backbone,
# and the training-only flip/contrast layers.
COMMON_OPTIONS = {"resize_to": 224, "augment": True}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One model of the family, everything about it in one place (a `VARIANTS` entry).

    Attributes:
        description: what the model is.
        cut_layer: where its backbone ends: the default of option `cut_layer` (a Table 5 layer number
            N, `backbone.layers[-N]`) when the variant takes it, else the layer's name.
        patch: the patch-extraction block follows the backbone (the final 3-layer block, or the
            one-convolution block of option `kernel` when the variant takes it).
        attention: the classifier's attention: None, "batch" (across the batch, the authors'),
            "single" (one token per image: the identity) or "tokens" (per image, over its patch
            tokens); the default of option `attention` when the variant takes it.
        region_attention: gACNN/pACNN-style patch attention instead of patch extraction.
        options: the options it takes besides `COMMON_OPTIONS` (cut_layer, kernel, attention).
    """

    description: str
    cut_layer: int | str
    patch: bool
    attention: str | None
    region_attention: bool = False
    options: tuple = ()


_TRUNCATED = ("cut_layer", "kernel")
VARIANTS = {
    "published": Variant(
        "the authors' code: 3-layer patch extraction, GAP, Dense(32), BN, attention across the batch "
        "(each image's 32-vector mixed with every image in its batch), softmax",
        DEFAULT_CUT_LAYER,
        patch=True,
        attention="batch",
        options=_TRUNCATED,
    ),
    "no_mixing": Variant(
        "as 'published', but the attention sees one token per image: exactly the identity, same "
        "parameters (the batch-composition audit's control)",
        DEFAULT_CUT_LAYER,
        patch=True,
        attention="single",
        options=_TRUNCATED,
    ),
    "pattlite": Variant(
        "corrected PAtt-Lite: self-attention of each image over its own 2x2 = 4 patch tokens, then the "
        "token mean; a prediction never depends on other images",
        DEFAULT_CUT_LAYER,
        patch=True,
        attention="tokens",
        options=_TRUNCATED,
    ),
    "baseline": Variant(
        "Table 4 row 1: full MobileNetV1 (to conv_pw_13_relu), GAP, plain classifier",
        FULL_BACKBONE_LAYER,
        patch=False,
        attention=None,
    ),
    "patch_only": Variant(
        "Table 4 row 2: truncated MobileNetV1 + patch extraction, plain classifier",
        DEFAULT_CUT_LAYER,
        patch=True,
        attention=None,
        options=_TRUNCATED,
    ),
    "attention_only": Variant(
        "Table 4 row 3: full MobileNetV1, GAP, attention classifier (option attention)",
        FULL_BACKBONE_LAYER,
        patch=False,
        attention="batch",
        options=("attention",),
    ),
    "patch_attention": Variant(
        "Table 6: gACNN/pACNN-style patch attention (2x2 regions weighted by a sigmoid attention net "
        "each) instead of patch extraction, attention classifier",
        DEFAULT_CUT_LAYER,
        patch=False,
        attention="batch",
        region_attention=True,
        options=("cut_layer", "attention"),
    ),
}
# Values of option `attention`.
ATTENTION_OPTIONS = ("batch", "tokens")

# Table 5 baseline patch blocks (one convolution + one pointwise convolution). The paper never defines
# the codes; our reading (docs/model.md): P = 'same' padding (14x14 padded up to a multiple of the
# stride), NP = no padding ('valid'), O = overlapping windows (stride = kernel - 1), the number = kernel.
KERNEL_CODES = {
    "NP7": {"kernel_size": 7, "strides": 7, "padding": "valid"},  # 14x14 -> 2x2
    "OP3": {"kernel_size": 3, "strides": 2, "padding": "same"},  # 14x14 -> 7x7
    "OP5": {"kernel_size": 5, "strides": 4, "padding": "same"},  # 14x14 -> 4x4
    "P4": {"kernel_size": 4, "strides": 4, "padding": "same"},  # 14x14 (padded to 16x16) -> 4x4
    "P8": {"kernel_size": 8, "strides": 8, "padding": "same"},  # 14x14 (padded to 16x16) -> 2x2
}

# The number of layers the authors' notebook asks to unfreeze (their RAF-DB setting).
AUTHORS_FINETUNE_REQUEST = 59

PATCH_FILTERS = 256
CLASSIFIER_UNITS = 32
CLASSIFIER_DROPOUT = 0.1
REGION_ATTENTION_UNITS = 64
PRE_HEAD_LAYER_NAMES = ("resize", "random_flip", "random_contrast", "mobilenet_preprocess")
_BACKBONE_NAME = re.compile(r"^conv(1|_dw_\d+|_pw_\d+|_pad_\d+)(_bn|_relu)?$")

_WEIGHTS_EXPECTED = (
    "Keras weights of MobileNetV1 (alpha 1.0, include_top=False) as saved by "
    "keras.applications.MobileNet(weights=None, include_top=False, input_shape=(224, 224, 3))"
    ".save_weights(...), e.g. the shared file mobilenet_1_0_224_imagenet_no_top.weights.h5"
)


class WeightsError(ValueError):
    """A backbone weights file that cannot be read or does not fit MobileNetV1 (alpha 1.0, no top)."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """The backbone weights file does not exist."""


# --------------------------------------------------------------------------------------------------
# Attention layers
# --------------------------------------------------------------------------------------------------


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

    Same arguments, weights, outputs and gradients as `SeparableConv2D`. On the JAX backend the
    depthwise step is `_patch_depthwise` (the kernel taps' strided slices multiplied and summed; under
    differentiation the padded input cut into patches, with a hand-written gradient) and the pointwise
    step one matrix product: XLA's CPU gradient of the grouped convolution that `SeparableConv2D` lowers to is
    about 20x slower (`pattlite bench --parts cached` on 2 cores, the published head at batch 8: 69-100
    samples/s against about 2,000). Other backends use `SeparableConv2D.call`, which TensorFlow runs
    faster than the JAX form (measured 530 against 350 samples/s).
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
        if keras.config.backend() != "jax":
            return super().call(inputs)
        size = (int(inputs.shape[1]), int(inputs.shape[2]))
        mixed = _patch_depthwise()(self.padding, size, inputs, ops.convert_to_tensor(self.depthwise_kernel))
        channels, (_, out_h, out_w, _) = int(inputs.shape[-1]), mixed.shape
        outputs = ops.matmul(ops.reshape(mixed, (-1, channels)), ops.reshape(self.pointwise_kernel, (channels, -1)))
        outputs = ops.reshape(outputs, (-1, out_h, out_w, self.filters))
        if self.use_bias:
            outputs = outputs + self.bias
        return outputs if self.activation is None else self.activation(outputs)


def _patches(padding, inputs, kh, kw):
    """(batch, h, w, c) -> (batch, out_h, kh, out_w, kw, c): padded as TensorFlow pads, cut into
    non-overlapping kh x kw patches (a reshape)."""
    (out_h, top, bottom), (out_w, left, right) = (
        _conv_padding(int(inputs.shape[1]), kh, kh, padding),
        _conv_padding(int(inputs.shape[2]), kw, kw, padding),
    )
    if top or bottom or left or right:
        inputs = ops.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])
    channels = int(inputs.shape[-1])
    return ops.reshape(inputs[:, : out_h * kh, : out_w * kw, :], (-1, out_h, kh, out_w, kw, channels))


@functools.lru_cache(maxsize=None)
def _patch_depthwise():
    """JAX only: the depthwise step of `PatchSeparableConv2D`, f(padding, (h, w), inputs (batch, h, w, c),
    kernel (kh, kw, c, 1)) -> (batch, out_h, out_w, c), with a hand-written gradient.

    Without differentiation (prediction) it sums kh x kw strided slices of the input, each times its
    kernel tap, padding only these small results: the input is read in place (a padded float32 copy of
    64 feature maps would outgrow a 32 MB L3 cache, and prediction ran 5x slower). Under
    differentiation (training) the input is padded and cut into patches once, kept for the gradient;
    the two forms differ in float rounding only. The gradient is the one JAX derives, except that the
    incoming gradient passes an optimization barrier: without it XLA fuses the matrix product that
    makes it (the pointwise step's) into the kernel gradient's reduction, and the fused kernel runs
    slower. Measured on 2 cores (AMD EPYC, published head, batch 8, alternating runs in one process),
    against the earlier form (slices, gradients derived by JAX): the training step 6% and 8% faster
    (medians of 8 and 10 paired runs). XLA drops the input gradient when nothing needs it (the first
    layer of a head on features).
    """
    import jax  # edge: a custom gradient and an optimization barrier

    def depthwise(padding, size, inputs, kernel):
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

    def forward(padding, size, inputs, kernel):
        kh, kw, channels = kernel.shape[:3]
        patches = _patches(padding, inputs, kh, kw)
        return ops.sum(patches * ops.reshape(kernel, (kh, 1, kw, channels)), axis=(2, 4)), (patches, kernel)

    def backward(padding, size, saved, gradient):
        (patches, kernel), (height, width) = saved, size
        kh, kw, channels = kernel.shape[:3]
        gradient = jax.lax.optimization_barrier(gradient)[:, :, None, :, None, :]
        kernel_gradient = ops.reshape(ops.sum(patches * gradient, axis=(0, 1, 3)), kernel.shape)
        # The input's gradient: each patch pixel's, back in place; padding dropped, unread pixels zero.
        (_, out_h, _, out_w, _, _) = patches.shape
        grid = ops.reshape(
            gradient * ops.reshape(kernel, (kh, 1, kw, channels)), (-1, out_h * kh, out_w * kw, channels)
        )
        (_, top, _), (_, left, _) = (_conv_padding(height, kh, kh, padding), _conv_padding(width, kw, kw, padding))
        grid = grid[:, top : top + height, left : left + width, :]
        missing_h, missing_w = height - int(grid.shape[1]), width - int(grid.shape[2])
        if missing_h or missing_w:  # 'valid' leaves the last rows or columns unread
            grid = ops.pad(grid, [[0, 0], [0, missing_h], [0, missing_w], [0, 0]])
        return grid, kernel_gradient

    depthwise = jax.custom_vjp(depthwise, nondiff_argnums=(0, 1))
    depthwise.defvjp(forward, backward)
    return depthwise


def _patch_taps(size: int, kernel: int, padding: str) -> list[tuple[int, int, int, int]]:
    """For each kernel offset along one axis of `size` pixels (stride = kernel): the first input index
    it reads, how many patches read a real pixel there, and how many patches before and after read
    padding instead. 'same' pads as TensorFlow does: output ceil(size / kernel), extra pixel last."""
    out, before, _ = _conv_padding(size, kernel, kernel, padding)
    taps = []
    for offset in range(kernel):
        index = [patch * kernel + offset - before for patch in range(out)]
        real = [i for i in index if 0 <= i < size]
        taps.append((real[0] if real else 0, len(real), sum(i < 0 for i in index), sum(i >= size for i in index)))
    return taps


@keras.saving.register_keras_serializable(package="pattlite")
class PatchConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (channels_last, no dilation, one group) whose JAX form is patches and a
    matrix product: Table 5's one-convolution patch blocks.

    Same arguments, weights, outputs and gradients as `Conv2D`. On the JAX backend the input is padded
    as TensorFlow pads, cut into the kernel-sized patches at each output position (a reshape when the
    stride equals the kernel, else kernel_h x kernel_w strided slices side by side) and multiplied by
    the kernel as one (kernel_h * kernel_w * channels) x filters matrix: XLA's CPU gradient of these
    large convolutions is far slower (OP3 on 14x14x512, batch 8, 2 shared cores: 3 training samples/s
    against 176 on TensorFlow). Other backends use `Conv2D.call`.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if tuple(self.dilation_rate) != (1, 1) or self.groups != 1 or self.data_format != "channels_last":
            raise ValueError(f"{self.name}: expected channels_last, no dilation and one group")

    def call(self, inputs):
        if keras.config.backend() != "jax":
            return super().call(inputs)
        (kh, kw), (sh, sw), channels = self.kernel_size, self.strides, int(inputs.shape[-1])
        (out_h, top, bottom), (out_w, left, right) = (
            _conv_padding(int(inputs.shape[1]), kh, sh, self.padding),
            _conv_padding(int(inputs.shape[2]), kw, sw, self.padding),
        )
        if (kh, kw) == (sh, sw):  # non-overlapping patches: a reshape
            x = ops.transpose(_patches(self.padding, inputs, kh, kw), (0, 1, 3, 2, 4, 5))
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
        outputs = ops.matmul(x, ops.reshape(self.kernel, (kh * kw * channels, self.filters)))
        if self.use_bias:
            outputs = outputs + self.bias
        return outputs if self.activation is None else self.activation(outputs)


def _conv_padding(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int, int]:
    """Output size and the padding before and after along one axis, as TensorFlow (and XLA's "SAME")
    pad: the extra pixel goes last."""
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return out, total // 2, total - total // 2
    return (size - kernel) // stride + 1, 0, 0


# --------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def mobilenet_layer_names() -> tuple[str, ...]:
    """Layer names of Keras' MobileNet (alpha 1.0, include_top=False), input layer first."""
    reference = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(224, 224, 3))
    return tuple(layer.name for layer in reference.layers)


def cut_layer_name(n) -> str:
    """Name of the MobileNet layer at which the backbone is cut.

    Args:
        n: the paper's Table 5 layer number N, meaning `backbone.layers[-N]` of Keras' include_top=False
            MobileNet (17, 23, 29, 35, 41, 47 -> conv_dw_11_relu ... conv_dw_6_relu), or a layer name.

    Returns:
        The Keras layer name, e.g. "conv_dw_9_relu" for 29.
    """
    names = mobilenet_layer_names()
    if isinstance(n, str):
        if n not in names[1:]:
            raise ValueError(f"cut_layer {n!r} is not a MobileNet layer; valid names: {', '.join(names[1:])}")
        return n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(names) - 1:
        raise ValueError(
            f"cut_layer {n!r}: expected an int N in 1..{len(names) - 1} (backbone.layers[-N]) or a "
            f"MobileNet layer name; Table 5 uses {sorted(config.TABLE5_CUT_LAYERS)}"
        )
    return names[-n]


def _check_weights_argument(weights):
    if weights is None or weights == "imagenet":
        return weights
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"backbone weights file {str(path)!r} does not exist; expected {_WEIGHTS_EXPECTED}"
            )
        return path
    raise WeightsError(
        f"weights={weights!r}: expected None (random init), 'imagenet' or the path of a file of {_WEIGHTS_EXPECTED}"
    )


def _mobilenet(weights, resize_to: int) -> keras.Model:
    """Keras' MobileNet (alpha 1.0, include_top=False) at resize_to x resize_to with the given weights."""
    weights = _check_weights_argument(weights)
    shape = (resize_to, resize_to, 3)
    if weights is None or weights == "imagenet":
        return keras.applications.MobileNet(weights=weights, include_top=False, input_shape=shape)
    net = keras.applications.MobileNet(weights=None, include_top=False, input_shape=shape)
    # Keras only warns about some partial loads; any warning here means the file does not fit.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            net.load_weights(str(weights))
        except Exception as error:  # h5py OSError, Keras ValueError: all mean "not these weights"
            raise WeightsError(
                f"cannot load backbone weights from {str(weights)!r} ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:300]}); expected {_WEIGHTS_EXPECTED}"
            ) from error
    problems = [
        str(w.message).splitlines()[0]
        for w in caught
        if "load" in str(w.message).lower() or "skipping" in str(w.message).lower()
    ]
    if problems:
        raise WeightsError(
            f"backbone weights file {str(weights)!r} does not fit MobileNetV1: {problems[0][:300]}; "
            f"expected {_WEIGHTS_EXPECTED}"
        )
    return net


def _apply_backbone(x, weights, resize_to: int, cut_name: str):
    """Applies fresh copies of the MobileNet layers conv1 .. `cut_name` to `x`, frozen, with the weights.

    Copies rather than the keras.applications layers themselves: a reused layer's `.output` would
    still point into the discarded MobileNet graph, which breaks sub-models built from layer outputs
    (Grad-CAM, probes).
    """
    net = _mobilenet(weights, resize_to)
    names = [layer.name for layer in net.layers]
    for source in net.layers[1 : names.index(cut_name) + 1]:
        layer = source.__class__.from_config(source.get_config())
        x = layer(x)
        layer.set_weights(source.get_weights())
        # A non-trainable BatchNormalization runs in inference mode in Keras 3, as the authors'
        # backbone call did.
        layer.trainable = False
    return x


def _pre_head(inputs, resize_to: int, augment: bool):
    x = keras.layers.Resizing(resize_to, resize_to, name="resize")(inputs)
    if augment:
        x = keras.layers.RandomFlip("horizontal", name="random_flip")(x)
        x = keras.layers.RandomContrast(0.3, name="random_contrast")(x)
    # MobileNet's preprocess_input: x / 127.5 - 1.
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenet_preprocess")(x)


def _check_input_shape(input_shape):
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] != 3 or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape {input_shape!r}: expected (height, width, 3) with positive ints")
    return shape


def build_backbone(
    weights=None, cut_layer=DEFAULT_CUT_LAYER, resize_to: int = 224, input_shape=(120, 120, 3), augment: bool = False
) -> keras.Model:
    """Builds the frozen feature extractor: input -> resize -> preprocessing -> MobileNetV1 to the cut.

    Its output is exactly what the head of `build_model` sees in inference for the same weights, so
    features cached from it can train a `build_head` model.

    Args:
        weights: None (random init), "imagenet" (Keras download) or the path of a `.weights.h5` file
            of the include_top=False MobileNetV1 (alpha 1.0) at 224.
        cut_layer: Table 5 layer number N (`backbone.layers[-N]`) or a MobileNet layer name;
            `FULL_BACKBONE_LAYER` for the un-truncated backbone.
        resize_to: side of the square image the backbone sees.
        input_shape: shape of the images fed to the model.
        augment: include the training-only random flip and random contrast layers.

    Returns:
        A flat `keras.Model` named "pattlite_backbone".
    """
    cut_name = cut_layer_name(cut_layer)
    inputs = keras.Input(_check_input_shape(input_shape), name="image")
    x = _pre_head(inputs, int(resize_to), augment)
    x = _apply_backbone(x, weights, int(resize_to), cut_name)
    return keras.Model(inputs, x, name="pattlite_backbone")


# --------------------------------------------------------------------------------------------------
# Variant resolution and heads
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    variant: str
    num_classes: int
    cut_name: str
    patch: str | None  # None, "final" (3-layer block) or a KERNEL_CODES key
    region_attention: bool
    attention: str | None  # None, "batch", "single" (one token per image) or "tokens"
    resize_to: int
    augment: bool


def _resolve(variant, num_classes, options) -> _Spec:
    config.check_name("variant", variant, list(VARIANTS))
    entry = VARIANTS[variant]
    valid = tuple(COMMON_OPTIONS) + entry.options
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for variant {variant!r}; valid options: {', '.join(valid)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes {num_classes!r}: expected an int >= 2")
    resize_to = options.get("resize_to", COMMON_OPTIONS["resize_to"])
    if isinstance(resize_to, bool) or not isinstance(resize_to, int) or resize_to < 32:
        raise ValueError(f"resize_to {resize_to!r}: expected an int >= 32 (MobileNet's minimum)")
    augment = options.get("augment", COMMON_OPTIONS["augment"])
    if not isinstance(augment, bool):
        raise ValueError(f"augment {augment!r}: expected True or False")
    kernel = options.get("kernel")
    if kernel is not None:
        config.check_name("kernel", kernel, list(KERNEL_CODES))
    attention = options.get("attention", entry.attention)
    if "attention" in options:
        config.check_name("attention", attention, ATTENTION_OPTIONS)
    # A variant without option cut_layer names its layer; no lookup (it would build a MobileNet).
    cut_name = (
        cut_layer_name(options.get("cut_layer", entry.cut_layer)) if "cut_layer" in entry.options else entry.cut_layer
    )
    patch = (kernel or "final") if entry.patch else None
    return _Spec(variant, num_classes, cut_name, patch, entry.region_attention, attention, resize_to, augment)


class _Layers:
    """Creates head layers by name, or hands back existing ones (to rebuild a graph on the same layers)."""

    def __init__(self, existing=None):
        self.existing = existing

    def __call__(self, name, cls, *args, new=False, **kwargs):
        if self.existing is None or new:
            return cls(*args, name=name, **kwargs)
        if name not in self.existing:
            raise ValueError(f"the model has no layer {name!r}; it was not built by pattlite.model")
        return self.existing[name]


def _patch_extraction(x, patch, L):
    if patch == "final":
        x = L(
            "patch_extraction_sepconv1",
            PatchSeparableConv2D,
            PATCH_FILTERS,
            4,
            strides=4,
            padding="same",
            activation="relu",
        )(x)
        x = L(
            "patch_extraction_sepconv2",
            PatchSeparableConv2D,
            PATCH_FILTERS,
            2,
            strides=2,
            padding="valid",
            activation="relu",
        )(x)
    else:
        x = L("patch_extraction_conv", PatchConv2D, PATCH_FILTERS, activation="relu", **KERNEL_CODES[patch])(x)
    return L("patch_extraction_pointwise", PatchConv2D, PATCH_FILTERS, 1, activation="relu")(x)


def _region_attention(x, L):
    """Patch attention (gACNN/pACNN style): 2x2 regions, each weighted by its own sigmoid attention net."""
    height, width = int(x.shape[1]), int(x.shape[2])
    if height < 2 or width < 2:
        raise ValueError(f"patch_attention needs a feature map of at least 2x2, got {height}x{width}")
    rows = [(0, height - height // 2), (height // 2, 0)]  # (crop top, crop bottom)
    cols = [(0, width - width // 2), (width // 2, 0)]
    tokens = []
    for index, (row, col) in enumerate((r, c) for r in rows for c in cols):
        region = L(f"region{index}_crop", keras.layers.Cropping2D, (row, col))(x)
        feature = L(f"region{index}_gap", keras.layers.GlobalAveragePooling2D)(region)
        hidden = L(f"region{index}_attention_hidden", keras.layers.Dense, REGION_ATTENTION_UNITS, activation="relu")(
            feature
        )
        weight = L(f"region{index}_attention_weight", keras.layers.Dense, 1, activation="sigmoid")(hidden)
        weighted = L(f"region{index}_weighted", keras.layers.Multiply)([feature, weight])
        tokens.append(L(f"region{index}_token", keras.layers.Reshape, (1, int(x.shape[-1])))(weighted))
    return L("region_tokens", keras.layers.Concatenate, axis=1)(tokens)  # (B, 4, C)


def _head(x, spec: _Spec, L: _Layers, finetune=None):
    """The head on a backbone feature map. `finetune` = (spatial_rate, rate) adds the stage-2 dropouts."""
    if spec.region_attention:
        if finetune:
            x = L("finetune_spatial_dropout", keras.layers.SpatialDropout2D, finetune[0], new=True)(x)
        tokens = _region_attention(x, L)
        if spec.attention == "tokens":
            x = tokens
        else:
            x = L("gap", keras.layers.GlobalAveragePooling1D)(tokens)
    else:
        if spec.patch is not None:
            x = _patch_extraction(x, spec.patch, L)
            if finetune:
                x = L("finetune_spatial_dropout", keras.layers.SpatialDropout2D, finetune[0], new=True)(x)
        if spec.attention == "tokens":
            # Each cell of the output grid (2x2 = 4 patches for the final block) is one token.
            x = L("patch_tokens", keras.layers.Reshape, (-1, int(x.shape[-1])))(x)
        else:
            x = L("gap", keras.layers.GlobalAveragePooling2D)(x)
    if finetune:
        x = L("finetune_gap_dropout", keras.layers.Dropout, finetune[1], new=True)(x)
    x = L("classifier_dropout", keras.layers.Dropout, CLASSIFIER_DROPOUT)(x)
    x = L("classifier_dense", keras.layers.Dense, CLASSIFIER_UNITS, activation="relu")(x)
    x = L("classifier_bn", keras.layers.BatchNormalization)(x)
    if spec.attention in ("batch", "single"):
        x = L("attention", BatchMixingAttention, mixing=spec.attention == "batch")(x)
    elif spec.attention == "tokens":
        x = L("attention", TokenSelfAttention)(x)
    if finetune and spec.attention is not None:
        x = L("finetune_attention_dropout", keras.layers.Dropout, finetune[1], new=True)(x)
    if spec.attention == "tokens":
        x = L("token_mean", keras.layers.GlobalAveragePooling1D)(x)
    return L("predictions", keras.layers.Dense, spec.num_classes, activation="softmax")(x)


def _attach_spec(model, spec, kind):
    # Plain attribute so finetune_model can rebuild the same graph; not serialised with the model.
    model._pattlite_spec = (spec, kind)
    return model


def variant_cut_layer(variant: str, **options) -> str:
    """Name of the backbone layer whose output feeds the head of `variant` with these options."""
    return _resolve(variant, 2, options).cut_name


def build_model(variant: str, num_classes: int, input_shape=(120, 120, 3), weights=None, **options) -> keras.Model:
    """Builds a PAtt-Lite family model as one flat Keras functional graph.

    image -> Resizing(resize_to) -> RandomFlip("horizontal") -> RandomContrast(0.3) (training only)
    -> MobileNet preprocessing (x / 127.5 - 1) -> MobileNetV1 (alpha 1.0) layers up to the cut,
    frozen, with their Keras names -> the head of `variant`.

    Args:
        variant: a name of `VARIANTS` (its `Variant` entry says what it is).
        num_classes: number of output classes (softmax).
        input_shape: shape of the images fed to the model (height, width, 3), pixel values 0..255.
        weights: backbone weights: None (random init), "imagenet" (Keras download) or the path of a
            `.weights.h5` file of the include_top=False MobileNetV1 at 224 (e.g. the shared
            mobilenet_1_0_224_imagenet_no_top.weights.h5). A file that is missing or does not fit
            raises `WeightsError`.
        **options: variant options (an unknown one raises ValueError listing the valid ones):
            resize_to: side the image is resized to before the backbone (default 224).
            augment: include the training-only flip/contrast layers (default True).
            cut_layer: Table 5 layer number N (`backbone.layers[-N]`) or a MobileNet layer name
                (default 29 = conv_dw_9_relu); variants with a truncated backbone only.
            kernel: a Table 5 code of `KERNEL_CODES` to use the baseline patch block (one convolution
                + one 1x1 convolution) instead of the final 3-layer block (default None).
            attention: "batch" (the authors' batch-mixing attention) or "tokens" (per-image attention
                over spatial tokens); attention_only and patch_attention only (default "batch").

    Returns:
        A `keras.Model` named "pattlite_<variant>".
    """
    spec = _resolve(variant, num_classes, options)
    inputs = keras.Input(_check_input_shape(input_shape), name="image")
    x = _pre_head(inputs, spec.resize_to, spec.augment)
    x = _apply_backbone(x, weights, spec.resize_to, spec.cut_name)
    outputs = _head(x, spec, _Layers())
    return _attach_spec(keras.Model(inputs, outputs, name=f"pattlite_{variant}"), spec, "full")


def build_head(variant: str, num_classes: int, feature_shape, **options) -> keras.Model:
    """Builds the head of `variant` alone, on a backbone feature input.

    Head layers carry the same names as in `build_model`, so `copy_head_weights` moves trained weights
    between a head trained on cached features and the full model.

    Args:
        variant, num_classes, **options: as for `build_model` (backbone-only options such as
            resize_to, augment and cut_layer are accepted and checked, but only the feature shape matters).
        feature_shape: the backbone output at the cut, e.g. (14, 14, 512) for conv_dw_9_relu at 224.

    Returns:
        A `keras.Model` named "pattlite_<variant>_head".
    """
    spec = _resolve(variant, num_classes, options)
    shape = tuple(feature_shape)
    if len(shape) != 3 or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"feature_shape {feature_shape!r}: expected (height, width, channels)")
    inputs = keras.Input(shape, name="features")
    outputs = _head(inputs, spec, _Layers())
    return _attach_spec(keras.Model(inputs, outputs, name=f"pattlite_{variant}_head"), spec, "head")


# --------------------------------------------------------------------------------------------------
# Layer groups and weight transfer
# --------------------------------------------------------------------------------------------------


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The MobileNetV1 layers of a flat model, in call order (input, resize and preprocessing excluded)."""
    return [layer for layer in model.layers if _BACKBONE_NAME.match(layer.name)]


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers after the backbone: everything but the input, pre-processing and MobileNet layers."""
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
        and layer.name not in PRE_HEAD_LAYER_NAMES
        and not _BACKBONE_NAME.match(layer.name)
    ]


def copy_head_weights(src_model: keras.Model, dst_model: keras.Model) -> list[str]:
    """Copies head weights by layer name from `src_model` to `dst_model` (head-only or full models).

    Every head layer with weights must exist, with the same weight shapes, in both models; otherwise a
    ValueError names the missing or mismatching layers. Returns the names of the layers copied.
    """
    src = {layer.name: layer for layer in head_layers(src_model) if layer.weights}
    dst = {layer.name: layer for layer in head_layers(dst_model) if layer.weights}
    if set(src) != set(dst):
        raise ValueError(
            f"head layers differ: only in {src_model.name!r}: {sorted(set(src) - set(dst))}; only in "
            f"{dst_model.name!r}: {sorted(set(dst) - set(src))}"
        )
    for name, layer in src.items():
        source_shapes = [tuple(w.shape) for w in layer.weights]
        target_shapes = [tuple(w.shape) for w in dst[name].weights]
        if source_shapes != target_shapes:
            raise ValueError(f"head layer {name!r}: weight shapes {source_shapes} != {target_shapes}")
        dst[name].set_weights(layer.get_weights())
    return sorted(src)


# --------------------------------------------------------------------------------------------------
# Fine-tuning (stage 2)
# --------------------------------------------------------------------------------------------------


def finetune_model(model: keras.Model, spatial_dropout: float = 0.2, dropout: float = 0.2) -> keras.Model:
    """Builds the authors' stage-2 graph on the same layers (weights shared, nothing copied).

    Adds SpatialDropout2D(spatial_dropout) after patch extraction (patch_attention: on the backbone
    map before the region split), Dropout(dropout) after the global average pooling (token variants:
    on the tokens) and Dropout(dropout) after the attention (variants with attention only).

    Args:
        model: a model from `build_model` or `build_head`.
        spatial_dropout, dropout: the stage-2 dropout rates (the authors used 0.2 and 0.2).

    Returns:
        A new `keras.Model` named "<model name>_finetune" sharing every layer of `model`.
    """
    if not hasattr(model, "_pattlite_spec"):
        raise ValueError(f"model {model.name!r} was not built by pattlite.model.build_model/build_head")
    for rate in (spatial_dropout, dropout):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate {rate!r}: expected 0 <= rate < 1")
    spec, kind = model._pattlite_spec
    existing = {layer.name: layer for layer in model.layers}
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="image" if kind == "full" else "features")
    x = inputs
    if kind == "full":
        for layer in model.layers:
            if layer.name in PRE_HEAD_LAYER_NAMES or _BACKBONE_NAME.match(layer.name):
                x = layer(x)
    outputs = _head(x, spec, _Layers(existing), finetune=(spatial_dropout, dropout))
    return _attach_spec(keras.Model(inputs, outputs, name=f"{model.name}_finetune"), spec, kind)


def count_params(weights) -> int:
    """The number of values in a list of weights (e.g. `model.trainable_weights`)."""
    return int(sum(math.prod(int(d) for d in w.shape) for w in weights))


def set_finetune_trainable(
    model: keras.Model, mode: str, n_layers: int | None = None, dataset: str | None = None
) -> dict:
    """Unfreezes the last backbone layers for fine-tuning, as coded or as the paper says.

    The authors' truncated backbone is a Keras model whose layer list starts with its input layer
    (58 layers up to conv_dw_9_relu). Both modes index that list; BatchNormalization layers stay
    frozen (inference mode) in both. Recompile the model afterwards.

    Args:
        model: a model from `build_model` or `finetune_model`.
        mode: "as_coded": the notebook's `layers[:len(layers) - n]` frozen with n = n_layers or 59;
            with 58 layers the index is -1, so only the weightless last layer (conv_dw_9_relu)
            becomes trainable and no backbone weight is fine-tuned.
            "paper": the last N backbone layers trainable, N = n_layers or
            `config.PAPER_FINETUNE_LAYERS[dataset]` (40/59/46/49 for ckplus/rafdb/fer2013/ferplus),
            all of them when N exceeds the backbone.
        n_layers: the number of layers to unfreeze (overrides the default of the mode).
        dataset: for mode "paper" without n_layers.

    Returns:
        dict with trainable_backbone_layers (names), backbone_trainable_params,
        backbone_non_trainable_params, trainable_params, non_trainable_params.
    """
    config.check_name("fine-tuning mode", mode, config.FINETUNE_MODES)
    backbone = backbone_layers(model)
    if not backbone:
        raise ValueError(f"model {model.name!r} has no MobileNet layers to fine-tune")
    if n_layers is None:
        if mode == "as_coded":
            n_layers = AUTHORS_FINETUNE_REQUEST
        else:
            if dataset is None:
                raise ValueError(
                    f"mode 'paper' needs n_layers or dataset (one of {', '.join(config.PAPER_FINETUNE_LAYERS)})"
                )
            config.check_name("dataset", dataset, list(config.PAPER_FINETUNE_LAYERS))
            n_layers = config.PAPER_FINETUNE_LAYERS[dataset]
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
        raise ValueError(f"n_layers {n_layers!r}: expected an int >= 0")
    as_keras_model = [None] + backbone  # index 0 = the truncated model's input layer
    start = len(as_keras_model) - n_layers
    if mode == "paper":
        start = max(start, 0)
    frozen = as_keras_model[:start]  # Python slicing, negative start included: the authors' bug
    unfrozen = [layer for layer in as_keras_model if layer is not None and not any(layer is f for f in frozen)]
    for layer in backbone:
        layer.trainable = any(layer is u for u in unfrozen) and not isinstance(layer, keras.layers.BatchNormalization)
    backbone_trainable = [w for layer in backbone for w in layer.trainable_weights]
    backbone_all = [w for layer in backbone for w in layer.weights]
    return {
        "trainable_backbone_layers": [layer.name for layer in backbone if layer.trainable],
        "backbone_trainable_params": count_params(backbone_trainable),
        "backbone_non_trainable_params": count_params(backbone_all) - count_params(backbone_trainable),
        "trainable_params": count_params(model.trainable_weights),
        "non_trainable_params": count_params(model.non_trainable_weights),
    }


# --------------------------------------------------------------------------------------------------
# Utilities for random-init demos and evaluation protocols
# --------------------------------------------------------------------------------------------------


def calibrate_batchnorm(model: keras.Model, images) -> int:
    """Sets the backbone BatchNorm moving statistics to the batch statistics of `images`.

    With random weights and the default moving statistics (0, 1), activations vanish through the
    frozen backbone; after this, the backbone in inference mode computes what one training-mode pass
    over `images` computes, so random-init demos and saliency maps are meaningful.

    Args:
        model: a model from `build_model` (or `build_backbone`).
        images: array (N, height, width, 3) of model inputs, pixel values 0..255.

    Returns:
        The number of BatchNormalization layers calibrated.
    """
    x = ops.convert_to_tensor(images, dtype="float32")
    if len(x.shape) != 4 or tuple(x.shape[1:]) != tuple(model.inputs[0].shape[1:]):
        raise ValueError(f"images of shape {tuple(x.shape)}: expected (N,) + {tuple(model.inputs[0].shape[1:])}")
    backbone = backbone_layers(model)
    if not backbone:
        raise ValueError(f"model {model.name!r} has no MobileNet layers to calibrate")
    last = backbone[-1]
    calibrated = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.layers.BatchNormalization) and _BACKBONE_NAME.match(layer.name):
            axes = list(range(len(x.shape) - 1))
            layer.moving_mean.assign(ops.mean(x, axis=axes))
            layer.moving_variance.assign(ops.var(x, axis=axes))
            calibrated += 1
        x = layer(x, training=False)
        if layer is last:
            break
    return calibrated


def set_batch_mixing(model: keras.Model, enabled: bool) -> int:
    """Switches the batch mixing of every `BatchMixingAttention` layer of `model` on or off.

    Off, each image gets exactly what batch size 1 computes (the identity), so the "independent"
    evaluation protocol can run at any batch size. Resets the model's compiled functions so the
    change takes effect in predict/evaluate/fit.

    Returns:
        The number of layers switched (0 for variants without batch-mixing attention).
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled {enabled!r}: expected True or False")
    layers = [layer for layer in model.layers if isinstance(layer, BatchMixingAttention)]
    for layer in layers:
        layer.mixing = enabled
    # Compiled functions bake the Python flag in when traced.
    for attribute in ("predict_function", "test_function", "train_function"):
        if hasattr(model, attribute):
            setattr(model, attribute, None)
    model.__dict__.pop("_pattlite_predict_functions", None)  # pattlite.evaluate's per-setting functions
    return len(layers)
