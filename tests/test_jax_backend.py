"""The model, evaluation and training code is Keras 3 only, so it runs on Keras' JAX backend too.

Runs in a subprocess (the backend is fixed at import time). Skipped when JAX is not installed: it is
not a dependency (`pip install -e .[jax]` adds it).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="JAX not installed (pip install -e .[jax]); backend check skipped"
)

SCRIPT = textwrap.dedent("""
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from pattlite.evaluate import evaluate
    from pattlite.model import build_model
    from pattlite.train import TrainConfig, train

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (14, 32, 32, 3)).astype("uint8")
    y = np.repeat(np.arange(7), 2)
    published = build_model("published", 7, input_shape=(32, 32, 3))
    assert published.count_params() == 1_102_664, published.count_params()
    corrected = build_model("pattlite", 7, input_shape=(32, 32, 3))
    together = corrected.predict(x, batch_size=14, verbose=0)
    alone = np.concatenate([corrected.predict(x[i:i + 1], verbose=0) for i in range(len(x))])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    classes = [str(i) for i in range(7)]
    for protocol in ("published", "shuffled", "independent"):
        evaluate(published, x, y, classes, protocol)
    result = train(published, x, y, x, y, TrainConfig(stage1_epochs=1, stage2=False, verbose=False))
    assert result.epochs["stage1"] == 1

    # bench's ceiling finds every matrix product of a head's training step: for each layer that
    # multiplies, the forward product and its two gradients (weights, and the input the layer below
    # needs); the attention's x x^T and softmax(.) x with theirs (8 x 8 x 32 each).
    from pattlite.bench import products_only_rate, step_products
    from pattlite.model import build_head
    channels = 16
    head = build_head("published", 7, (14, 14, channels))
    head.compile(optimizer=keras.optimizers.Adam(1e-3, global_clipnorm=3.0),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    batch = (rng.normal(size=(8, 14, 14, channels)).astype("float32"), y[:8], np.ones(8, "float32"))
    head.fit(batch[0], batch[1], sample_weight=batch[2], batch_size=8, epochs=1, verbose=0)  # builds it
    forward = 8 * 16 * channels * 256 + 2 * (8 * 4 * 256 * 256) + 8 * 256 * 32 + 8 * 32 * 7
    products = step_products(head, batch)
    assert sum(p[3] for p in products) == 3 * forward + 6 * (8 * 8 * 32), [p[3] for p in products]
    rate = products_only_rate(head, batch, repeats=1, steps=4)
    assert rate["samples"] == 32 and rate["samples_per_s"] > 0 and rate["products"] == len(products) == 21
    print("JAX-OK")
""")


def test_model_evaluate_and_train_run_on_the_jax_backend():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "JAX-OK" in out.stdout, out.stderr[-3000:]


# Tests that pin down backend-specific code paths (the compiled training loop, the predict-function
# swap of the batch-mixing settings, the patch layer's sliced form), run again on JAX.
ON_BOTH_BACKENDS = [
    "tests/test_train.py::test_fast_path_gives_the_plain_paths_updates[published]",
    "tests/test_train.py::test_fast_path_reads_a_memory_map_in_chunks",  # device-resident vs chunks
    "tests/test_evaluate.py::test_head_predictions_in_big_calls_keep_the_batches",
    "tests/test_evaluate.py::test_independent_equals_batch_size_one",
    "tests/test_evaluate.py::test_published_model_depends_on_protocol_but_pattlite_does_not",
    "tests/test_model.py::test_patch_separable_conv_equals_separable_conv",
    "tests/test_model.py::test_patch_conv_equals_conv",
    "tests/test_model.py::test_patch_conv_as_the_pointwise_layer_equals_conv",
    "tests/test_features.py::test_cached_head_predicts_like_full_model",  # extraction in a TensorFlow child
]


def test_backend_specific_paths_pass_their_tests_on_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ON_BOTH_BACKENDS],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
