"""Tests of pattlite.features: the cache is keyed by image content, reused across row subsets and
datasets, invalidated by weights and cut, and cached-feature heads predict what the full model predicts
with the same weights."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from envvars import environment

from pattlite import features as F


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    from pattlite.data import load_manifest, load_pixels

    with environment(PATTLITE_DATA_DIR=root / "data", PATTLITE_CACHE_DIR=root / "cache"):
        manifest = load_manifest(
            "synthetic", num_classes=7, image_size=32, n_train=14, n_val=7, n_test=7, seed=3, progress=False
        )
        pixels = load_pixels(manifest, 32, progress=False)
        weights = F.random_backbone_weights(0, np.asarray(pixels[:8]))
        yield {"root": root, "manifest": manifest, "pixels": pixels, "weights": weights}


@pytest.fixture
def count_extractions(monkeypatch):
    class Calls(list):
        pass

    calls = Calls()
    real = F.extract_shard

    def counting(pixels, rows, extractor, layer_names, *args, **kwargs):
        calls.append(list(layer_names))
        calls_rows.append(len(rows))
        return real(pixels, rows, extractor, layer_names, *args, **kwargs)

    calls_rows = []
    calls.rows = calls_rows

    monkeypatch.setattr(F, "extract_shard", counting)
    return calls


def test_cache_reused_and_invalidated(env, count_extractions, tmp_path):
    cache = tmp_path / "cache"
    m, w = env["manifest"], env["weights"]
    first = F.backbone_features(m, 32, w, cut_layers=(29, "conv_pw_13_relu"), progress=False, cache_dir=cache)
    assert count_extractions == [["conv_dw_9_relu", "conv_pw_13_relu"]]  # both from one pass
    assert first["conv_dw_9_relu"].shape == (len(m), 14, 14, 512)
    assert first["conv_dw_9_relu"].dtype == np.float16
    assert first["conv_pw_13_relu"].shape == (len(m), 7, 7, 1024)

    again = F.backbone_features(m, 32, w, cut_layers=(29,), progress=False, cache_dir=cache)
    assert len(count_extractions) == 1  # read, not recomputed
    np.testing.assert_array_equal(again["conv_dw_9_relu"], first["conv_dw_9_relu"])

    F.backbone_features(m, 32, w, cut_layers=(35,), progress=False, cache_dir=cache)
    assert count_extractions[-1] == ["conv_dw_8_relu"]  # a new cut is computed

    other = F.random_backbone_weights(1, np.asarray(env["pixels"][:8]), cache_dir=tmp_path / "w")
    assert other != w
    F.backbone_features(m, 32, other, cut_layers=(29,), progress=False, cache_dir=cache)
    assert len(count_extractions) == 3  # other weights file: recomputed

    stores = [p for p in cache.iterdir() if p.is_dir() and p.name != "weights"]
    assert len(stores) == 2  # one store per weights file


def test_weights_identity_changes_with_file(env, tmp_path):
    """The store's key follows the weights file's content: the same bytes copied anew, elsewhere or with
    a new modification time keep the key (and the cached features); a changed byte changes it."""
    import os

    copy = tmp_path / "copy.weights.h5"
    copy.write_bytes(env["weights"].read_bytes())
    key = F.feature_key(32, copy)
    assert F.feature_key(48, copy) != key and F.feature_key(32, copy, resize_to=160) != key
    elsewhere = tmp_path / "elsewhere" / "mobilenet.weights.h5"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(copy.read_bytes())
    os.utime(elsewhere, ns=(1, 1))
    assert F.feature_key(32, elsewhere) == key
    with open(copy, "ab") as f:
        f.write(b"\0")
    assert F.feature_key(32, copy) != key
    with pytest.raises(ValueError, match="random_backbone_weights"):
        F.feature_key(32, None)


def test_random_backbone_weights_reproducible(env, tmp_path):
    images = np.asarray(env["pixels"][:8])
    a = F.random_backbone_weights(0, images, cache_dir=tmp_path / "a")
    b = F.random_backbone_weights(0, images, cache_dir=tmp_path / "b")
    from pattlite.model import build_backbone

    fa = build_backbone(a, input_shape=(32, 32, 3)).predict(images[:2], verbose=0)
    fb = build_backbone(b, input_shape=(32, 32, 3)).predict(images[:2], verbose=0)
    np.testing.assert_array_equal(fa, fb)
    assert fa.std() > 0.01  # calibrated BatchNorm: activations do not vanish


@pytest.mark.backends  # extraction in this process on TensorFlow, in a TensorFlow child on JAX
def test_cached_head_predicts_like_full_model(env, tmp_path):
    from pattlite.model import build_head, build_model, copy_head_weights

    m, w = env["manifest"], env["weights"]
    feats = F.backbone_features(m, 32, w, progress=False, cache_dir=tmp_path)["conv_dw_9_relu"]
    head = build_head("pattlite", 7, feats.shape[1:])
    full = build_model("pattlite", 7, input_shape=(32, 32, 3), weights=w)
    copy_head_weights(head, full)
    from_features = head.predict(np.asarray(feats, dtype="float32"), verbose=0)
    from_images = full.predict(np.asarray(env["pixels"], dtype="float32"), verbose=0)
    # float16 storage is the only difference
    np.testing.assert_allclose(from_features, from_images, atol=2e-3)


def test_rows_subset_reuses_full_features(env, count_extractions, tmp_path):
    cache = tmp_path / "cache"
    m, w = env["manifest"], env["weights"]
    full = F.backbone_features(m, 32, w, progress=False, cache_dir=cache)["conv_dw_9_relu"]
    rows = np.array([0, 3, 4, 10, len(m) - 1])
    part = F.backbone_features(m, 32, w, progress=False, cache_dir=cache, rows=rows)["conv_dw_9_relu"]
    assert part.shape == (len(rows),) + full.shape[1:]
    # Read from the full set's extraction, not recomputed (a recomputation at another batch size may
    # differ in the last float16 bit: oneDNN picks kernels by batch size).
    np.testing.assert_array_equal(np.asarray(part), np.asarray(full)[rows])
    assert len(count_extractions) == 1
    with pytest.raises(ValueError, match="increasing"):
        F.backbone_features(m, 32, w, progress=False, cache_dir=cache, rows=[3, 1])


def test_subset_first_then_full_computes_only_missing(env, count_extractions, tmp_path):
    cache = tmp_path / "cache"
    m, w = env["manifest"], env["weights"]
    rows = np.array([1, 2, 5])
    part = np.asarray(F.backbone_features(m, 32, w, progress=False, cache_dir=cache, rows=rows)["conv_dw_9_relu"])
    full = F.backbone_features(m, 32, w, progress=False, cache_dir=cache)["conv_dw_9_relu"]
    distinct = len(set(F.image_hashes(env["pixels"]).tolist()))
    assert count_extractions.rows == [3, distinct - 3]
    np.testing.assert_array_equal(np.asarray(full)[rows], part)
    assert full[np.array([5, 1])].shape == (2, 14, 14, 512)
    np.testing.assert_array_equal(full[5], part[2])


def test_same_images_in_another_order_share_the_extraction(env, count_extractions, tmp_path):
    """Another dataset holding the same faces (FERPlus relabels FER2013) reads the same features."""
    cache = tmp_path / "cache"
    m, w, pixels = env["manifest"], env["weights"], np.asarray(env["pixels"])
    first = np.asarray(F.backbone_features(m, 32, w, progress=False, cache_dir=cache)["conv_dw_9_relu"])
    order = np.arange(len(m))[::-1]
    again = F.backbone_features(
        m.iloc[order].reset_index(drop=True), 32, w, progress=False, cache_dir=cache, pixels=pixels[order]
    )["conv_dw_9_relu"]
    assert len(count_extractions) == 1
    np.testing.assert_array_equal(np.asarray(again), first[order])
    changed = pixels.copy()
    changed[0, 0, 0, 0] ^= 1  # one pixel differs: a different image
    F.backbone_features(m, 32, w, progress=False, cache_dir=cache, pixels=changed)
    assert count_extractions.rows[-1] == 1


def test_two_processes_needing_the_same_images_extract_them_once(env, count_extractions, monkeypatch, tmp_path):
    """Two grid trials that start together on the same data: the second waits for the first's shard and
    reads it, instead of extracting the same images into a second shard (the store's lock is a file
    lock, which two threads with their own descriptors contend for as two processes do)."""
    import threading

    cache = tmp_path / "cache"
    m, w = env["manifest"], env["weights"]
    entered, go_on = threading.Event(), threading.Event()
    counting = F.extract_shard

    def held(*args, **kwargs):  # the first extraction waits here until the second caller has started
        entered.set()
        assert go_on.wait(60)
        return counting(*args, **kwargs)

    monkeypatch.setattr(F, "extract_shard", held)
    out, errors = {}, []

    def call(name):
        try:
            out[name] = F.backbone_features(m, 32, w, cut_layers=(29,), progress=False, cache_dir=cache)
        except BaseException as error:  # surfaced below
            errors.append(error)

    first = threading.Thread(target=call, args=("first",))
    first.start()
    assert entered.wait(120)
    second = threading.Thread(target=call, args=("second",))
    second.start()
    second.join(1.0)
    assert second.is_alive()  # waiting for the lock
    go_on.set()
    first.join(120)
    second.join(120)
    assert not errors, errors
    assert len(count_extractions) == 1
    assert len(list(cache.glob("*/shard-*"))) == 1
    np.testing.assert_array_equal(
        np.asarray(out["second"]["conv_dw_9_relu"]), np.asarray(out["first"]["conv_dw_9_relu"])
    )


def test_image_hashes_follow_content():
    images = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    images[2, 1, 1, 1] = 7
    hashes = F.image_hashes(images)
    assert hashes[0] == hashes[1] and hashes[0] != hashes[2]
    assert F.image_hashes(images.reshape(3, 2, 8, 3))[0] != hashes[0]  # the shape is part of the content


def test_extraction_engine_setting(monkeypatch):
    monkeypatch.setenv("PATTLITE_EXTRACTION_ENGINE", "tensorflow")
    assert F.extraction_engine() == "tensorflow"
    monkeypatch.setenv("PATTLITE_EXTRACTION_ENGINE", "onnx")
    with pytest.raises(ValueError, match="onnx"):
        F.extraction_engine()


def test_openvino_and_tensorflow_extract_the_same_features(env, tmp_path):
    """Both engines, two layers from one pass: the same features to within float16 rounding, in the
    right layer order, and each shard records its engine."""
    pytest.importorskip("openvino", reason="the openvino package (extras jax, dev) is not installed")
    import json

    m, w = env["manifest"], env["weights"]
    layers = ("conv_dw_9_relu", "conv_pw_9_relu")  # same shape: a swapped output order would pass unnoticed
    features = {}
    for engine in ("tensorflow", "openvino"):
        with environment(PATTLITE_EXTRACTION_ENGINE=engine):
            out = F.backbone_features(m, 32, w, cut_layers=layers, progress=False, cache_dir=tmp_path / engine)
        features[engine] = {name: np.asarray(out[name], dtype=np.float32) for name in layers}
        (shard,) = (tmp_path / engine).glob("*/shard-*")
        assert json.loads((shard / "engine.json").read_text())["engine"] == engine
    for name in layers:
        tf_values, ov_values = features["tensorflow"][name], features["openvino"][name]
        assert not np.allclose(features["tensorflow"][layers[0]], features["tensorflow"][layers[1]], atol=1e-2)
        np.testing.assert_allclose(ov_values, tf_values, rtol=4e-3, atol=4e-3 * np.abs(tf_values).max(), err_msg=name)


def test_interrupt_while_the_tensorflow_child_extracts(env, tmp_path):
    """Ctrl-C in this process while its TensorFlow child extracts (as on another Keras backend):
    KeyboardInterrupt here, the child stopped, its temporary shard and the job folder gone."""
    import signal
    import threading
    import time

    from pattlite.files import pid_alive

    folder = tmp_path / "store"
    folder.mkdir()
    images = np.repeat(np.asarray(env["pixels"]), 20, axis=0)  # 560 images at batch 1: seconds of work
    seen = {}

    def interrupt_once_extracting():
        deadline = time.time() + 180
        while time.time() < deadline and "shard" not in seen:
            for shard in folder.glob(".tmp-shard-*"):
                seen["shard"] = shard
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=interrupt_once_extracting, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            F.extract_shard_in_tensorflow(
                images,
                np.arange(len(images)),
                32,
                env["weights"],
                ["conv_dw_9_relu"],
                224,
                1,
                False,
                folder,
                engine="tensorflow",
            )  # no conversion: quicker
    finally:
        signal.signal(signal.SIGINT, previous)
    watcher.join()
    assert "shard" in seen, "the child never started extracting"
    assert not pid_alive(int(seen["shard"].name.split("-")[2]))  # .tmp-shard-<pid>-<time>
    assert list(folder.iterdir()) == []
