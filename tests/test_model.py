"""Tests of pattlite.model: parameter counts, batch mixing vs per-image attention, variants, weights,
fine-tuning, head/backbone split. Models use random weights and small inputs resized to 224."""

import os
import re
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from envvars import shared_weights_path

from pattlite import config
from pattlite import model as M

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = (32, 32, 3)  # cheap model input; the model resizes to 224 itself


def images(n, seed=0, shape=SMALL):
    return np.random.RandomState(seed).uniform(0, 255, (n,) + shape).astype("float32")


def calibrated(variant, num_classes=7, **options):
    options.setdefault("augment", False)
    model = M.build_model(variant, num_classes, input_shape=SMALL, **options)
    M.calibrate_batchnorm(model, images(8, seed=99))
    # Random-init heads give near-uniform probabilities; a larger output layer makes differences
    # between images (and between batch compositions) visible in the predictions.
    output = model.get_layer("predictions")
    output.set_weights([output.get_weights()[0] * 100.0, output.get_weights()[1]])
    return model


def test_model_code_uses_no_tensorflow():
    source = (REPO_ROOT / "pattlite" / "model.py").read_text()
    assert not re.search(r"\btf\.|import tensorflow|from tensorflow", source)


def test_table5_cut_layers_resolve_to_expected_names():
    expected = {
        17: "conv_dw_11_relu",
        23: "conv_dw_10_relu",
        29: "conv_dw_9_relu",
        35: "conv_dw_8_relu",
        41: "conv_dw_7_relu",
        47: "conv_dw_6_relu",
    }
    for n, name in expected.items():
        assert M.cut_layer_name(n) == name
        assert config.TABLE5_CUT_LAYERS[n] == name
    assert M.cut_layer_name("conv_dw_9_relu") == "conv_dw_9_relu"
    with pytest.raises(ValueError, match="not a MobileNet layer"):
        M.cut_layer_name("conv_dw_99_relu")
    with pytest.raises(ValueError, match="expected an int N"):
        M.cut_layer_name(0)


def test_variant_registry_entry_decides_options_and_cut():
    """A variant's registry entry alone decides the options it takes and where its backbone ends."""
    assert tuple(M.VARIANTS) == config.VARIANTS
    for name, entry in M.VARIANTS.items():
        default_cut = entry.cut_layer if isinstance(entry.cut_layer, str) else M.cut_layer_name(entry.cut_layer)
        assert M.variant_cut_layer(name) == default_cut
        for option in ("cut_layer", "kernel", "attention"):
            value = {"cut_layer": 35, "kernel": "P4", "attention": "tokens"}[option]
            if option in entry.options:
                M.variant_cut_layer(name, **{option: value})
            else:
                with pytest.raises(ValueError, match=f"unknown option.*{option}.*{name}"):
                    M.variant_cut_layer(name, **{option: value})
    assert M.variant_cut_layer("baseline") == M.variant_cut_layer("attention_only") == M.FULL_BACKBONE_LAYER
    assert M.variant_cut_layer("patch_attention", cut_layer=35) == "conv_dw_8_relu"
    with pytest.raises(ValueError, match="valid attentions: batch, tokens"):
        M.variant_cut_layer("attention_only", attention="single")


def test_published_parameter_counts():
    published = M.build_model("published", 7, input_shape=SMALL)
    backbone = sum(int(np.prod(w.shape)) for layer in M.backbone_layers(published) for w in layer.weights)
    assert backbone == 821_952
    assert published.count_params() == 1_102_664  # the authors' count, 7 classes (RAF-DB, FER2013)
    assert M.backbone_layers(published)[-1].name == "conv_dw_9_relu"
    for variant in ("no_mixing", "pattlite"):
        assert M.build_model(variant, 7, input_shape=SMALL).count_params() == 1_102_664
    # One class more adds one column of the 32-unit output Dense: 32 weights + 1 bias.
    assert M.build_model("published", 8, input_shape=SMALL).count_params() == 1_102_664 + 33


def test_batch_mixing_attention_matches_keras_attention_on_2d_input():
    vectors = np.random.RandomState(1).normal(size=(5, 32)).astype("float32")
    ours = M.BatchMixingAttention()
    ours.build(vectors.shape)
    ours.scale.assign(0.3)
    reference = keras.layers.Attention(use_scale=True)
    try:
        reference([vectors, vectors])
    except Exception as error:  # some Keras 3 versions reject 2-D input
        pytest.skip(f"this Keras rejects Attention on 2-D input: {error}")
    reference.scale.assign(0.3)
    np.testing.assert_allclose(ours(vectors), reference([vectors, vectors]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours(vectors[:1]), vectors[:1], rtol=1e-6)  # batch of 1: identity


def test_published_prediction_depends_on_other_images():
    model = calibrated("published")
    model.get_layer("attention").scale.assign(5.0)  # sharpen the mixing so it is plainly visible
    batch = images(3, seed=1)
    changed = batch.copy()
    changed[2] = images(1, seed=2)[0]
    out = model.predict(batch, verbose=0)
    out_changed = model.predict(changed, verbose=0)
    assert np.abs(out[0] - out_changed[0]).max() > 1e-3  # image 0 itself did not change
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_pattlite_prediction_is_independent_of_the_batch():
    model = calibrated("pattlite")
    model.get_layer("attention").scale.assign(5.0)
    batch = images(4, seed=3)
    together = model.predict(batch, verbose=0)
    alone = np.concatenate([model.predict(batch[i : i + 1], verbose=0) for i in range(4)])
    order = np.array([2, 0, 3, 1])
    shuffled = model.predict(batch[order], verbose=0)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(shuffled, together[order], rtol=1e-4, atol=1e-6)
    assert np.abs(together[0] - together[1]).max() > 1e-4  # outputs are not constant
    assert model.get_layer("patch_tokens").output.shape[1:] == (4, 256)  # 2x2 patches = 4 tokens


def test_set_batch_mixing_off_equals_batch_size_one():
    model = calibrated("published")
    model.get_layer("attention").scale.assign(5.0)
    batch = images(4, seed=4)
    mixed = model.predict(batch, verbose=0)
    assert M.set_batch_mixing(model, False) == 1
    independent = model.predict(batch, verbose=0)
    one_by_one = np.concatenate([model.predict(batch[i : i + 1], verbose=0) for i in range(4)])
    np.testing.assert_allclose(independent, one_by_one, rtol=1e-4, atol=1e-6)
    assert np.abs(independent - mixed).max() > 1e-3
    M.set_batch_mixing(model, True)  # the compiled predict function must follow the switch back
    np.testing.assert_allclose(model.predict(batch, verbose=0), mixed, rtol=1e-4, atol=1e-6)
    # no_mixing with the same weights is the batch-1 computation as well
    control = M.build_model("no_mixing", 7, input_shape=SMALL, augment=False)
    control.set_weights(model.get_weights())
    np.testing.assert_allclose(control.predict(batch, verbose=0), one_by_one, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "variant, options, grid",
    [
        ("published", {}, (2, 2)),
        ("no_mixing", {}, (2, 2)),
        ("pattlite", {}, (2, 2)),
        ("baseline", {}, None),
        ("patch_only", {}, (2, 2)),
        ("attention_only", {}, None),
        ("attention_only", {"attention": "tokens"}, None),
        ("patch_attention", {}, None),
        ("patch_attention", {"attention": "tokens"}, None),
        ("published", {"kernel": "NP7", "cut_layer": 17}, (2, 2)),
        ("published", {"kernel": "OP3", "cut_layer": 47}, (7, 7)),
        ("published", {"kernel": "OP5"}, (4, 4)),
        ("pattlite", {"kernel": "P4", "cut_layer": 35}, (4, 4)),
        ("published", {"kernel": "P8", "cut_layer": 41}, (2, 2)),
    ],
)
def test_variant_outputs_are_probabilities(variant, options, grid):
    model = M.build_model(variant, 5, input_shape=SMALL, **options)
    probabilities = model.predict(images(3, seed=5), verbose=0)
    assert probabilities.shape == (3, 5)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    if grid is not None:  # the patch grid each Table 5 code gives at 14x14 (docs/model.md)
        assert tuple(model.get_layer("patch_extraction_pointwise").output.shape[1:3]) == grid
    if variant in ("baseline", "attention_only"):
        assert M.backbone_layers(model)[-1].name == M.FULL_BACKBONE_LAYER
    for layer in M.backbone_layers(model):
        assert not layer.trainable


def test_bad_names_raise_value_errors_listing_valid_ones():
    with pytest.raises(ValueError, match="valid variants: published"):
        M.build_model("pattlite_v2", 7)
    with pytest.raises(ValueError, match="valid options: resize_to, augment, cut_layer, kernel"):
        M.build_model("published", 7, attention="tokens")
    with pytest.raises(ValueError, match="valid kernels: NP7"):
        M.build_model("published", 7, kernel="P9")
    with pytest.raises(ValueError, match="valid options: resize_to, augment$"):
        M.build_model("baseline", 7, cut_layer=17)


def test_weights_errors(tmp_path):
    missing = tmp_path / "nothing.weights.h5"
    with pytest.raises(M.WeightsNotFoundError, match="nothing.weights.h5.*mobilenet_1_0_224") as info:
        M.build_model("published", 7, input_shape=SMALL, weights=missing)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, M.WeightsError)
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(M.WeightsError, match="garbage.weights.h5.*MobileNetV1"):
        M.build_model("published", 7, input_shape=SMALL, weights=garbage)
    # Same layer names, other shapes: MobileNet alpha 0.5.
    half = tmp_path / "mobilenet_half.weights.h5"
    keras.applications.MobileNet(weights=None, include_top=False, alpha=0.5, input_shape=(32, 32, 3)).save_weights(half)
    with pytest.raises(M.WeightsError, match="mobilenet_half.weights.h5"):
        M.build_backbone(weights=half)
    with pytest.raises(M.WeightsError, match="expected None"):
        M.build_model("published", 7, weights=3)


@pytest.mark.skipif(
    not shared_weights_path().is_file(),
    reason="shared ImageNet MobileNet weights file absent (set PATTLITE_TEST_WEIGHTS)",
)
def test_shared_imagenet_weights_load():
    path = shared_weights_path()
    backbone = M.build_backbone(weights=path, input_shape=SMALL)
    assert tuple(backbone.output.shape[1:]) == (14, 14, 512)
    pretrained = M.build_model("published", 7, input_shape=SMALL, weights=path, augment=False)
    random = M.build_model("published", 7, input_shape=SMALL, augment=False)
    for layer in M.head_layers(random):  # same head, only the backbone weights differ
        pretrained.get_layer(layer.name).set_weights(layer.get_weights())
    batch = images(2, seed=6)
    assert np.abs(pretrained.predict(batch, verbose=0) - random.predict(batch, verbose=0)).max() > 1e-4
    np.testing.assert_allclose(
        backbone.predict(batch, verbose=0),
        keras.Model(pretrained.input, pretrained.get_layer("conv_dw_9_relu").output).predict(batch, verbose=0),
        rtol=1e-4,
        atol=1e-5,
    )


def test_finetune_trainable_modes():
    model = M.build_model("published", 7, input_shape=SMALL)
    stage1 = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    coded = M.set_finetune_trainable(model, "as_coded")
    assert coded["trainable_backbone_layers"] == ["conv_dw_9_relu"]
    assert coded["backbone_trainable_params"] == 0
    assert coded["trainable_params"] == stage1

    backbone = M.backbone_layers(model)
    assert len(backbone) + 1 == 58  # the authors' truncated model: input layer + 57 layers

    def non_bn_params(layers):
        return sum(
            int(np.prod(w.shape))
            for layer in layers
            for w in layer.weights
            if not isinstance(layer, keras.layers.BatchNormalization)
        )

    paper = M.set_finetune_trainable(model, "paper", dataset="rafdb")  # 59 > 58: the whole backbone
    assert paper["backbone_trainable_params"] == non_bn_params(backbone)
    assert paper["trainable_params"] == stage1 + non_bn_params(backbone)
    assert not any(layer.trainable for layer in backbone if isinstance(layer, keras.layers.BatchNormalization))
    ckplus = M.set_finetune_trainable(model, "paper", dataset="ckplus")  # 40 layers
    assert ckplus["backbone_trainable_params"] == non_bn_params(backbone[-40:])
    assert ckplus["trainable_backbone_layers"][0] == next(
        layer.name for layer in backbone[-40:] if not isinstance(layer, keras.layers.BatchNormalization)
    )
    assert 0 < ckplus["backbone_trainable_params"] < paper["backbone_trainable_params"]
    with pytest.raises(ValueError, match="needs n_layers or dataset"):
        M.set_finetune_trainable(model, "paper")


def test_finetune_model_shares_layers_and_adds_dropouts():
    model = calibrated("published")
    tuned = M.finetune_model(model)
    names = [layer.name for layer in tuned.layers]
    assert names.index("finetune_spatial_dropout") == names.index("patch_extraction_pointwise") + 1
    assert names.index("finetune_gap_dropout") == names.index("gap") + 1
    assert names.index("finetune_attention_dropout") == names.index("attention") + 1
    assert tuned.get_layer("classifier_dense") is model.get_layer("classifier_dense")
    assert tuned.count_params() == model.count_params()
    batch = images(3, seed=7)
    np.testing.assert_allclose(
        tuned.predict(batch, verbose=0), model.predict(batch, verbose=0), rtol=1e-5, atol=1e-6
    )  # dropouts act only in training


@pytest.mark.parametrize("variant", ["published", "pattlite"])
def test_head_on_backbone_features_equals_full_model(variant):
    full = calibrated(variant, augment=True)  # augmentation layers are inactive in inference
    backbone = M.build_backbone(input_shape=SMALL)
    for layer in M.backbone_layers(backbone):
        layer.set_weights(full.get_layer(layer.name).get_weights())
    head = M.build_head(variant, 7, backbone.output.shape[1:])
    copied = M.copy_head_weights(full, head)
    assert "classifier_dense" in copied and "attention" in copied
    batch = images(3, seed=8)
    np.testing.assert_allclose(
        head.predict(backbone.predict(batch, verbose=0), verbose=0),
        full.predict(batch, verbose=0),
        rtol=1e-4,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="only in 'pattlite_.*': \\['attention'\\]"):
        M.copy_head_weights(head, M.build_head("patch_only", 7, (14, 14, 512)))


def test_calibrate_batchnorm_normalises_backbone_activations():
    model = M.build_model("published", 7, input_shape=SMALL, augment=False)
    probe = keras.Model(model.input, model.get_layer("conv_dw_9_bn").output)
    batch = images(8, seed=9)
    before = probe.predict(batch, verbose=0)
    count = M.calibrate_batchnorm(model, batch)
    assert count == sum(isinstance(layer, keras.layers.BatchNormalization) for layer in M.backbone_layers(model))
    after = probe.predict(batch, verbose=0)
    channel_mean = after.mean(axis=(0, 1, 2))
    channel_var = after.var(axis=(0, 1, 2))
    assert np.abs(channel_mean).max() < 1e-2
    assert 0.5 < np.median(channel_var) < 1.01
    assert np.median(channel_var) > 10 * np.median(before.var(axis=(0, 1, 2)))


def assert_same_layer(ours, theirs, shape, rng):
    """Given the same random weights, `ours` gives `theirs`'s outputs for a random input, and one SGD
    step through each moves the weights alike (same gradients), those of a 1x1 layer before it too (so
    the gradient it passes to its input is the same)."""
    x = rng.standard_normal(shape).astype("float32")
    ours.build(shape)
    theirs.build(shape)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in theirs.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(theirs(x)), rtol=1e-5, atol=1e-4
    )
    probe = keras.layers.Input(shape[1:])
    before = [rng.standard_normal((shape[-1], shape[-1])).astype("float32") * 0.5, np.zeros(shape[-1], "float32")]
    befores = []
    for layer in (ours, theirs):
        befores.append(keras.layers.Dense(shape[-1]))
        model = keras.Model(probe, keras.layers.GlobalAveragePooling2D()(layer(befores[-1](probe))))
        befores[-1].set_weights(before)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.train_on_batch(x, np.ones((shape[0], 5), "float32"))
    for a, b in zip(ours.get_weights() + befores[0].get_weights(), theirs.get_weights() + befores[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(befores[0].get_weights()[0], before[0])  # the input gradient reached it


@pytest.mark.backends
@pytest.mark.parametrize(
    "shape,kernel,padding",
    [
        ((3, 14, 14, 16), 4, "same"),
        ((2, 4, 4, 8), 2, "valid"),
        ((2, 15, 13, 8), 4, "same"),
        ((2, 15, 13, 8), 4, "valid"),
    ],
)
def test_patch_separable_conv_equals_separable_conv(shape, kernel, padding):
    """Same weights, same outputs and gradients as SeparableConv2D (on JAX it computes them its own way,
    `pattlite.backends.jax.patch_separable_conv`)."""
    from pattlite.layers import PatchSeparableConv2D

    assert_same_layer(
        PatchSeparableConv2D(5, kernel, strides=kernel, padding=padding, activation="relu"),
        keras.layers.SeparableConv2D(5, kernel, strides=kernel, padding=padding, activation="relu"),
        shape,
        np.random.default_rng(0),
    )


@pytest.mark.backends
@pytest.mark.parametrize("code", ["NP7", "OP3", "OP5", "P4", "P8"])
@pytest.mark.parametrize("shape", [(3, 14, 14, 6), (2, 15, 13, 4)])
def test_patch_conv_equals_conv(code, shape):
    """Table 5's kernel codes: same weights, same outputs and gradients as Conv2D (on JAX it computes
    them as patches times a matrix, `pattlite.backends.jax.patch_conv`)."""
    from pattlite.layers import PatchConv2D
    from pattlite.model import KERNEL_CODES

    assert_same_layer(
        PatchConv2D(5, activation="relu", **KERNEL_CODES[code]),
        keras.layers.Conv2D(5, activation="relu", **KERNEL_CODES[code]),
        shape,
        np.random.default_rng(1),
    )


@pytest.mark.backends
def test_patch_conv_as_the_pointwise_layer_equals_conv():
    """The 1x1 convolution after every patch block (`patch_extraction_pointwise`) is a PatchConv2D too."""
    from pattlite.model import PatchConv2D  # still importable from pattlite.model

    assert_same_layer(
        PatchConv2D(5, 1, activation="relu"),
        keras.layers.Conv2D(5, 1, activation="relu"),
        (3, 4, 4, 6),
        np.random.default_rng(2),
    )
    assert isinstance(M.build_head("published", 7, (14, 14, 512)).get_layer("patch_extraction_pointwise"), PatchConv2D)


def test_patch_separable_conv_needs_non_overlapping_patches():
    from pattlite.model import PatchSeparableConv2D

    with pytest.raises(ValueError, match="strides .* must equal kernel_size"):
        PatchSeparableConv2D(4, 4, strides=2)
