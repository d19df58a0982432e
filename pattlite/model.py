"""The PAtt-Lite model family: the authors' model as coded, a corrected model and the paper's ablations.

Every model is a flat Keras functional graph (no nested sub-models) so Grad-CAM can reach any layer and
fine-tuning can unfreeze backbone layers one by one:

    image -> resize -> [random flip, random contrast] -> MobileNet preprocessing
          -> MobileNetV1 layers up to the cut (original Keras names, frozen) -> head

Written against Keras 3's backend-neutral API (`keras`, `keras.ops`); the four custom layers are in
`pattlite.layers`, and what one backend does differently in `pattlite.backends`. The readings of what
the paper leaves vague are written down in docs/model.md.

This module holds the variant registry, the backbone, the heads, weight transfer and the fine-tuning
and batch-mixing switches.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from pattlite import config
from pattlite.backbone import (
    DEFAULT_CUT_LAYER,
    FULL_BACKBONE_LAYER,
    PRE_HEAD_LAYER_NAMES,
    WeightsError,
    WeightsNotFoundError,
    apply_backbone,
    backbone_layers,
    build_backbone,
    calibrate_batchnorm,
    check_input_shape,
    cut_layer_name,
    is_backbone_layer,
    mobilenet_layer_names,
    pre_head,
)
from pattlite.layers import BatchMixingAttention, PatchConv2D, PatchSeparableConv2D, TokenSelfAttention

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
    inputs = keras.Input(check_input_shape(input_shape), name="image")
    x = pre_head(inputs, spec.resize_to, spec.augment)
    x = apply_backbone(x, weights, spec.resize_to, spec.cut_name)
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


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers after the backbone: everything but the input, pre-processing and MobileNet layers."""
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
        and layer.name not in PRE_HEAD_LAYER_NAMES
        and not is_backbone_layer(layer.name)
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
            if layer.name in PRE_HEAD_LAYER_NAMES or is_backbone_layer(layer.name):
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
