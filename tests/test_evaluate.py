"""Tests of pattlite.evaluate: protocol semantics, original-order predictions, metrics, bad names.

Heads on small random features stand in for full models (the protocols act on whatever the model is
fed); the batch-mixing attention's scale is raised so that mixing visibly changes predictions."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from pattlite import evaluate as E
from pattlite.model import BatchMixingAttention, build_head

FEATURES = (14, 14, 16)  # small channel count: cheap, the patch block accepts any depth
CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


def grouped_data(n_per_class=10, seed=0):
    """Class-grouped features (as the authors' arrays were) with a weak class signal."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), n_per_class)
    x = rng.normal(0, 1, (len(y),) + FEATURES).astype("float32")
    x[np.arange(len(y)), :, :, y] += 0.5
    return x, y


def head(variant, scale=None, seed=0):
    keras.utils.set_random_seed(seed)
    model = build_head(variant, len(CLASSES), FEATURES)
    # Sharpen the random classifier so differences in its input show in the probabilities.
    dense = model.get_layer("predictions")
    dense.set_weights([w * 100.0 for w in dense.get_weights()])
    if scale is not None:
        for layer in model.layers:
            if isinstance(layer, BatchMixingAttention):
                layer.scale.assign(scale)
    return model


@pytest.mark.backends
def test_published_model_depends_on_protocol_but_pattlite_does_not():
    x, y = grouped_data()
    mixing = head("published", scale=30.0)
    results = {p: E.evaluate(mixing, x, y, CLASSES, p, seed=1) for p in E.PROTOCOLS}
    probs = {p: r["probabilities"] for p, r in results.items()}
    assert not np.allclose(probs["published"], probs["shuffled"], atol=1e-4)
    assert not np.allclose(probs["published"], probs["independent"], atol=1e-4)

    per_image = head("pattlite")
    others = {p: E.evaluate(per_image, x, y, CLASSES, p, seed=1) for p in E.PROTOCOLS}
    for p in E.PROTOCOLS:
        np.testing.assert_allclose(others[p]["probabilities"], others["independent"]["probabilities"], atol=1e-5)
        assert others[p]["accuracy"] == others["independent"]["accuracy"]


@pytest.mark.backends
def test_independent_equals_batch_size_one():
    x, y = grouped_data(n_per_class=10)  # 70 images: two batches of 32 predicted in one call, then 6
    model = head("published", scale=30.0)
    E.predict(model, x, y, "published", batch_size=32)  # a compiled mixing call exists: it must not be reused
    independent = E.predict(model, x, y, "independent", batch_size=32)
    one_by_one = np.concatenate([model.predict(x[i : i + 1], verbose=0) for i in range(len(x))])
    np.testing.assert_allclose(independent, one_by_one, atol=1e-5)
    # And the mixing is back on afterwards: batches of 32 differ from batch size 1 again.
    assert not np.allclose(model.predict(x, batch_size=32, verbose=0), one_by_one, atol=1e-4)


def test_published_protocol_batches_class_grouped_in_original_order():
    x, y = grouped_data(n_per_class=4)
    perm = np.random.default_rng(3).permutation(len(y))  # a non-grouped input order
    model = head("published", scale=30.0)
    probs = E.predict(model, x[perm], y[perm], "published")
    # Reference: the grouped order, batch 32, mapped back to the shuffled input order.
    grouped = model.predict(x, batch_size=32, verbose=0)
    np.testing.assert_allclose(probs, grouped[perm], atol=1e-5)


def test_metrics_confusion_and_per_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 0, 2])
    m = E.metrics_from_predictions(y, predictions, CLASSES[:4])
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == {"anger": 0.5, "disgust": 1.0, "fear": 0.5, "happiness": None}
    assert m["mean_class_accuracy"] == pytest.approx(2 / 3)


def test_metrics_of_an_empty_subset_and_of_a_class_only_predicted():
    empty = E.metrics_from_predictions([], [], CLASSES[:3])
    assert empty["n"] == 0 and empty["confusion_matrix"] == [[0] * 3] * 3
    assert np.isnan(empty["accuracy"]) and np.isnan(empty["mean_class_accuracy"])
    assert set(empty["per_class_accuracy"].values()) == {None}
    # class 2 is predicted but absent from y: no accuracy of its own, and not in the class mean
    m = E.metrics_from_predictions([0, 0, 1], [2, 0, 1], CLASSES[:3])
    assert m["per_class_accuracy"] == {"anger": 0.5, "disgust": 1.0, "fear": None}
    assert m["mean_class_accuracy"] == pytest.approx(0.75) and m["confusion_matrix"][0] == [1, 0, 1]


def test_evaluate_predictions_match_probabilities_and_labels():
    x, y = grouped_data(n_per_class=2)
    r = E.evaluate(head("pattlite"), x, y, CLASSES, "shuffled", seed=5)
    assert r["predictions"].shape == (len(y),)
    np.testing.assert_array_equal(r["predictions"], r["probabilities"].argmax(axis=1))
    assert np.array(r["confusion_matrix"]).sum() == len(y)
    assert r["accuracy"] == pytest.approx(np.mean(r["predictions"] == y))


def test_bad_input_is_named():
    x, y = grouped_data(n_per_class=1)
    model = head("pattlite")
    with pytest.raises(ValueError, match="published, shuffled, independent"):
        E.evaluate(model, x, y, CLASSES, "batch1")
    with pytest.raises(ValueError, match="7 labels"):
        E.evaluate(model, x[:3], y, CLASSES, "published")
    with pytest.raises(ValueError, match="expects"):
        E.evaluate(model, x[:, :7], y, CLASSES, "published")
    with pytest.raises(ValueError, match="class names"):
        E.evaluate(model, x, y, CLASSES[:5], "published")


@pytest.mark.backends
@pytest.mark.parametrize("batch_size", [8, 32])
def test_head_predictions_in_big_calls_keep_the_batches(batch_size):
    """A head is predicted several batches per call (the backend's `PREDICT_ROWS`: 512 rows on
    TensorFlow, 64 on JAX); each protocol's batches of 8 or 32 (and the last, smaller one) are still
    mixed only within themselves."""
    x, y = grouped_data(n_per_class=80)  # 560 images: more than one 512-row call, a partial last batch
    model = head("published", scale=30.0)
    for protocol in ("published", "shuffled"):
        order = E.protocol_order(y, protocol, seed=2)
        reference = np.concatenate(
            [model.predict_on_batch(x[order[i : i + batch_size]]) for i in range(0, len(order), batch_size)]
        )
        probs = E.predict(model, x.astype("float16"), y, protocol, seed=2, batch_size=batch_size)
        np.testing.assert_allclose(probs[order], reference, atol=2e-3)  # float16 inputs
        np.testing.assert_allclose(
            E.predict(model, x, y, protocol, seed=2, batch_size=batch_size)[order], reference, atol=1e-5
        )
    # Mixing across a whole 512-row call would change the predictions: the grouping is what keeps them.
    order = E.protocol_order(y, "published")
    assert not np.allclose(
        model.predict_on_batch(x[order[:512]])[:batch_size],
        reference_first := model.predict_on_batch(x[order[:batch_size]]),
        atol=1e-4,
    )
    assert reference_first.shape == (batch_size, len(CLASSES))
