"""Tests of pattlite.backends: the one seam between the package and the running Keras backend.

Every test here is marked `backends`, so tests/test_jax_backend.py runs them again on JAX."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import types

import keras
import numpy as np
import pytest

from pattlite import backends, seeding
from pattlite.backends import generic

pytestmark = pytest.mark.backends

INTERFACE = (
    "TENSORFLOW_MODELS",
    "PREDICT_ROWS",
    "patch_separable_conv",
    "patch_conv",
    "train_steps",
    "predict_in_memory",
    "deterministic_ops",
    "step_products",
    "products_only_rate",
)


def test_the_running_backends_module_has_the_whole_interface():
    assert backends.name() == keras.config.backend()
    module = backends.current()
    assert module.__name__ == backends.MODULES.get(backends.name(), "pattlite.backends.generic")
    for backend in (module, generic):
        missing = [name for name in INTERFACE if not hasattr(backend, name)]
        assert not missing, (backend.__name__, missing)
        assert backend.PREDICT_ROWS % 32 == 0 and backend.PREDICT_ROWS % 8 == 0  # whole protocol batches
    assert module.TENSORFLOW_MODELS == (backends.name() == "tensorflow")


def test_enable_determinism_seeds_and_asks_the_backend(monkeypatch):
    asked = []
    monkeypatch.setattr(backends, "current", lambda: types.SimpleNamespace(deterministic_ops=lambda: asked.append(1)))
    seeding.enable_determinism(3)
    first = np.random.rand(3)
    seeding.enable_determinism(3)
    np.testing.assert_array_equal(np.random.rand(3), first)
    assert asked == []
    seeding.enable_determinism(3, deterministic=True)
    assert asked == [1]


def test_bench_measurements_of_jax_refuse_other_backends(monkeypatch):
    from pattlite import bench

    monkeypatch.setattr(backends, "current", lambda: generic)
    with pytest.raises(RuntimeError, match="JAX"):
        bench.products_only_rate(None, None, repeats=1)


def test_an_unknown_backend_gets_keras_own_paths_with_the_same_results(monkeypatch):
    """The generic fallback (plain `fit`, Keras' convolutions, prediction without a device path) gives
    what the running backend's own paths give."""
    from pattlite.evaluate import predict
    from pattlite.model import build_head
    from pattlite.train import fit_in_order

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, 8, 8, 16)).astype("float16")
    y = np.arange(40) % 7
    outcomes = []
    for fallback in (False, True):
        if fallback:
            monkeypatch.setattr(backends, "name", lambda: "no_such_backend")
            assert backends.current() is generic
        seeding.enable_determinism(0)
        model = build_head("published", 7, (8, 8, 16))
        # SGD: Adam's normalised update would turn the kernels' rounding differences into whole steps.
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
        fit_in_order(model, x, y, None, 8, 1, [], reshuffle_seed=0)
        outcomes.append(([w.copy() for w in model.get_weights()], predict(model, x, y, "published")))
    (weights, probs), (fallback_weights, fallback_probs) = outcomes
    for a, b in zip(weights, fallback_weights):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fallback_probs, probs, atol=1e-5)


@pytest.mark.skipif(keras.config.backend() != "jax", reason="JAX only: tests/test_jax_backend.py runs it on JAX")
def test_model_evaluate_train_and_bench_run_on_jax():
    from pattlite.bench import products_only_rate, step_products
    from pattlite.evaluate import evaluate
    from pattlite.model import build_head, build_model
    from pattlite.train import TrainConfig, train

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (14, 32, 32, 3)).astype("uint8")
    y = np.repeat(np.arange(7), 2)
    published = build_model("published", 7, input_shape=(32, 32, 3))
    assert published.count_params() == 1_102_664, published.count_params()
    corrected = build_model("pattlite", 7, input_shape=(32, 32, 3))
    together = corrected.predict(x, batch_size=14, verbose=0)
    alone = np.concatenate([corrected.predict(x[i : i + 1], verbose=0) for i in range(len(x))])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    classes = [str(i) for i in range(7)]
    for protocol in ("published", "shuffled", "independent"):
        evaluate(published, x, y, classes, protocol)
    result = train(published, x, y, x, y, TrainConfig(stage1_epochs=1, stage2=False, verbose=False))
    assert result.epochs["stage1"] == 1

    # bench's ceiling finds every matrix product of a head's training step: for each layer that
    # multiplies, the forward product and its two gradients (weights, and the input the layer below
    # needs); the attention's x x^T and softmax(.) x with theirs (8 x 8 x 32 each).
    channels = 16
    head = build_head("published", 7, (14, 14, channels))
    head.compile(
        optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=3.0),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    batch = (rng.normal(size=(8, 14, 14, channels)).astype("float32"), y[:8], np.ones(8, "float32"))
    head.fit(batch[0], batch[1], sample_weight=batch[2], batch_size=8, epochs=1, verbose=0)  # builds it
    forward = 8 * 16 * channels * 256 + 2 * (8 * 4 * 256 * 256) + 8 * 256 * 32 + 8 * 32 * 7
    products = step_products(head, batch)
    assert sum(p[3] for p in products) == 3 * forward + 6 * (8 * 8 * 32), [p[3] for p in products]
    rate = products_only_rate(head, batch, repeats=1, steps=4)
    assert rate["samples"] == 32 and rate["samples_per_s"] > 0 and rate["products"] == len(products) == 21
