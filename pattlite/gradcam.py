"""Grad-CAM maps of a trained model (the paper's Figs. 6 and 7), with tf-keras-vis.

TensorFlow only: tf-keras-vis differentiates through `tf.GradientTape`, so this module needs the
TensorFlow backend in its own process (feature extraction and `pattlite.export` also need TensorFlow
models, and start a TensorFlow child process when the backend is another); everything it is given is a
plain Keras 3 model from `pattlite.model.build_model`.

The class activation map is taken at an explicit layer, by default the backbone layer that feeds the
head (`conv_dw_9_relu` for the published model, a 14x14 map at 224): the paper describes its maps as
what "the backbone extractor" highlights, and the patch-extraction output (2x2) is too coarse to show
anything. tf-keras-vis is always called with `seek_penultimate_conv_layer=False` so it cannot silently
pick another layer.

Each image is explained alone (batch of one): the published model's batch-mixing attention is the
identity at batch size 1, so a map never depends on which other images were explained with it.

Example:

```python
from pattlite import gradcam
model = gradcam.trained_model(exp)                       # rebuilds the model of a finished experiment
maps = gradcam.gradcam_maps(model, images, class_indices)  # (N, H, W) in [0, 1]
fig = gradcam.plot_per_class(images, maps, labels, classes)
```
"""

from __future__ import annotations

import warnings

import numpy as np


def _require_tensorflow():
    from pattlite import backends

    if not backends.current().TENSORFLOW_MODELS:
        raise RuntimeError(
            f"Grad-CAM uses tf-keras-vis, which needs the TensorFlow backend; the Keras "
            f"backend is {backends.name()!r} (set KERAS_BACKEND=tensorflow; ./run_all.sh runs this notebook on "
            "TensorFlow when KERAS_BACKEND is unset)"
        )


def default_layer(model) -> str:
    """Name of the backbone layer that feeds the head of a `pattlite.model.build_model` model."""
    from pattlite.backbone import backbone_layers

    layers = backbone_layers(model)
    if not layers:
        raise ValueError(f"model {model.name!r} has no MobileNet layers; pass layer= explicitly")
    return layers[-1].name


def _check_layer(model, layer: str) -> str:
    names = [layer_.name for layer_ in model.layers]
    if layer not in names:
        spatial = [layer_.name for layer_ in model.layers if len(layer_.output.shape) == 4]
        raise ValueError(
            f"model {model.name!r} has no layer {layer!r}; layers with a spatial (4-D) output: "
            f"{', '.join(spatial[-12:])}"
        )
    if len(model.get_layer(layer).output.shape) != 4:
        raise ValueError(
            f"layer {layer!r} of {model.name!r} has output shape "
            f"{tuple(model.get_layer(layer).output.shape)}; Grad-CAM needs a 4-D feature map"
        )
    return layer


def gradcam_maps(model, images, class_indices, layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps of `images` for the given classes, one image at a time.

    Args:
        model: a trained model from `pattlite.model.build_model` (softmax output).
        images: array (N, height, width, 3) of model inputs, pixel values 0..255.
        class_indices: the class to explain for each image (e.g. the prediction or the true label),
            an int or a sequence of N ints.
        layer: the layer whose activations are weighted (default `default_layer(model)`).

    Returns:
        float32 array (N, height, width): maps resized to the input size and normalised to [0, 1].
    """
    _require_tensorflow()
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    images = np.asarray(images, dtype="float32")
    expected = tuple(model.inputs[0].shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images of shape {images.shape}: expected (N,) + {expected}")
    n = len(images)
    indices = (
        np.broadcast_to(np.asarray(class_indices, dtype=int), (n,))
        if np.ndim(class_indices) == 0
        else np.asarray(class_indices, dtype=int)
    )
    if indices.shape != (n,):
        raise ValueError(f"class_indices has {indices.shape} entries for {n} images")
    num_classes = int(model.outputs[0].shape[-1])
    if n and (indices.min() < 0 or indices.max() >= num_classes):
        raise ValueError(
            f"class_indices range {indices.min()}..{indices.max()} outside the model's {num_classes} classes"
        )
    layer = _check_layer(model, layer or default_layer(model))
    # ReplaceToLinear drops the final softmax on a clone (gradients of the logit, as Grad-CAM defines).
    explainer = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    maps = np.zeros(images.shape[:3], dtype="float32")
    with warnings.catch_warnings():
        # At batch size 1 the batch-mixing attention's softmax runs over one item; Keras warns about it.
        warnings.filterwarnings("ignore", message=".*softmax over axis -1 of a tensor of shape.*")
        for i in range(n):
            cam = explainer(
                CategoricalScore([int(indices[i])]),
                images[i : i + 1],
                penultimate_layer=layer,
                seek_penultimate_conv_layer=False,
                training=False,
            )
            maps[i] = np.nan_to_num(np.asarray(cam, dtype="float32")[0])
    return maps


# ---------------------------------------------------------------------------------------------------
# Choosing samples


def pick_per_class(y, predictions=None, num_classes: int | None = None, seed: int = 0) -> np.ndarray:
    """Index of one test image per class (Fig. 6), a correctly predicted one where there is one.

    Classes without any image are skipped. The choice is seeded.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    out = []
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        if members.size == 0:
            continue
        if predictions is not None:
            correct = members[np.asarray(predictions)[members] == c]
            members = correct if correct.size else members
        out.append(int(rng.choice(members)))
    return np.asarray(out, dtype=int)


def pick_true_false(y, predictions, n_true: int = 6, n_false: int = 6, seed: int = 0) -> np.ndarray:
    """Indices of up to `n_true` correct then up to `n_false` wrong predictions (Fig. 7), seeded."""
    y, predictions = np.asarray(y), np.asarray(predictions)
    if y.shape != predictions.shape:
        raise ValueError(f"y {y.shape} and predictions {predictions.shape} differ in shape")
    rng = np.random.default_rng(seed)
    right, wrong = np.flatnonzero(y == predictions), np.flatnonzero(y != predictions)
    chosen_right = rng.permutation(right)[:n_true]
    chosen_wrong = rng.permutation(wrong)[:n_false]
    return np.concatenate([chosen_right, chosen_wrong]).astype(int)


# ---------------------------------------------------------------------------------------------------
# Figures


def _overlay(ax, image, cam, alpha=0.45):
    ax.imshow(np.clip(image, 0, 255).astype("uint8"))
    ax.imshow(cam, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_per_class(images, maps, labels, classes, title: str = ""):
    """Fig. 6: a row of test images (one per class) and, below, each image's Grad-CAM overlay."""
    import matplotlib.pyplot as plt

    n = len(images)
    if not (len(maps) == len(labels) == n) or n == 0:
        raise ValueError(f"need as many maps ({len(maps)}) and labels ({len(labels)}) as images ({n}), at least 1")
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.2), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(np.clip(images[i], 0, 255).astype("uint8"))
        axes[0, i].set_title(classes[int(labels[i])], fontsize=9)
        axes[0, i].set_xticks([])
        axes[0, i].set_yticks([])
        _overlay(axes[1, i], images[i], maps[i])
    if title:
        fig.suptitle(title, fontsize=10, y=1.0, va="bottom")  # above a synthetic banner
    fig.tight_layout()
    return fig


def plot_predictions(images, maps, y_true, y_pred, classes, columns: int = 6, title: str = ""):
    """Fig. 7: Grad-CAM overlays labelled with the ground truth (black) and the prediction (green when
    right, red when wrong)."""
    import matplotlib.pyplot as plt

    n = len(images)
    if not (len(maps) == len(y_true) == len(y_pred) == n) or n == 0:
        raise ValueError("need as many maps, true labels and predictions as images, at least one")
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes[i // columns, i % columns]
        ax.axis("on")
        _overlay(ax, images[i], maps[i])
        right = int(y_true[i]) == int(y_pred[i])
        ax.set_title(classes[int(y_true[i])], fontsize=8, color="black")
        ax.set_xlabel(classes[int(y_pred[i])], fontsize=8, color="green" if right else "red")
    if title:
        fig.suptitle(title, fontsize=10, y=1.0, va="bottom")  # above a synthetic banner
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------
# The trained model of an experiment


def trained_model(exp, results_dir=None, root=None, progress: bool = False):
    """The full trained model of an experiment (images in, probabilities out), and its data.

    Loads the weights that `pattlite.experiments.run_experiment` saved next to the result file
    (`pattlite.experiments.weights_path`); an experiment not run yet is run first (its recipe and
    seed), which saves them. A head trained on cached features is put on the backbone with
    `pattlite.model.copy_head_weights`.

    Returns:
        (model, data): a `keras.Model` from `build_model` and the dict of
        `pattlite.experiments.load_experiment_data` (manifest, classes, pixels, y, index).

    Raises:
        FileNotFoundError: the experiment has a result file but no weights beside it.
    """
    from pattlite import experiments
    from pattlite.model import build_head, build_model, copy_head_weights, variant_cut_layer

    exp = experiments.bind_root(exp, root)  # the weights are filed under the key of the data used
    path = experiments.weights_path(exp, results_dir)
    if not path.is_file():
        result = experiments.result_path(exp, results_dir)
        if result.is_file():
            raise FileNotFoundError(
                f"result file {result} has no trained weights beside it ({path.name}); "
                "retrain it with `pattlite train ... --force` (force=True in Python)"
            )
        experiments.run_experiment(exp, results_dir=results_dir, progress=progress)
    data = experiments.load_experiment_data(exp, progress=progress)
    weights = experiments.experiment_weights(exp, data, progress=progress)
    num_classes = len(data["classes"])
    options = dict(exp.model_options, resize_to=exp.resize_to)
    full = build_model(
        exp.variant, num_classes, input_shape=(exp.image_size, exp.image_size, 3), weights=weights, **options
    )
    if exp.evaluated_on_features():
        cut = variant_cut_layer(exp.variant, **exp.model_options)
        head = build_head(exp.variant, num_classes, tuple(full.get_layer(cut).output.shape[1:]), **options)
        head.load_weights(str(path))
        copy_head_weights(head, full)
    else:
        full.load_weights(str(path))
    return full, data
