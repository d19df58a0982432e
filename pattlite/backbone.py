"""The frozen MobileNetV1 backbone of every PAtt-Lite model: its layer names, cut points, weights
files, the pre-processing in front of it, and BatchNorm calibration for random-init demos.

`build_backbone` is the feature extractor alone (`pattlite.features`); `pattlite.model` puts the same
layers in front of each head.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path

import keras
from keras import ops

from pattlite import config

__all__ = [
    "DEFAULT_CUT_LAYER",
    "FULL_BACKBONE_LAYER",
    "PRE_HEAD_LAYER_NAMES",
    "WeightsError",
    "WeightsNotFoundError",
    "mobilenet_layer_names",
    "cut_layer_name",
    "is_backbone_layer",
    "pre_head",
    "apply_backbone",
    "check_input_shape",
    "build_backbone",
    "backbone_layers",
    "calibrate_batchnorm",
]

DEFAULT_CUT_LAYER = 29
FULL_BACKBONE_LAYER = "conv_pw_13_relu"
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


def apply_backbone(x, weights, resize_to: int, cut_name: str):
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


def pre_head(inputs, resize_to: int, augment: bool):
    x = keras.layers.Resizing(resize_to, resize_to, name="resize")(inputs)
    if augment:
        x = keras.layers.RandomFlip("horizontal", name="random_flip")(x)
        x = keras.layers.RandomContrast(0.3, name="random_contrast")(x)
    # MobileNet's preprocess_input: x / 127.5 - 1.
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenet_preprocess")(x)


def check_input_shape(input_shape):
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
    inputs = keras.Input(check_input_shape(input_shape), name="image")
    x = pre_head(inputs, int(resize_to), augment)
    x = apply_backbone(x, weights, int(resize_to), cut_name)
    return keras.Model(inputs, x, name="pattlite_backbone")


def is_backbone_layer(name: str) -> bool:
    """True for the name of a MobileNetV1 layer (conv1, conv_dw_N, conv_pw_N, conv_pad_N and their bn/relu)."""
    return bool(_BACKBONE_NAME.match(name))


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The MobileNetV1 layers of a flat model, in call order (input, resize and preprocessing excluded)."""
    return [layer for layer in model.layers if _BACKBONE_NAME.match(layer.name)]


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
