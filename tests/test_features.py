"""Tests of pattlite.features: the cache is reused, invalidated by weights and cut, and cached-feature
heads predict what the full model predicts with the same weights."""

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
        manifest = load_manifest("synthetic", num_classes=7, image_size=32, n_train=14, n_val=7, n_test=7,
                                 seed=3, progress=False)
        pixels = load_pixels(manifest, 32, progress=False)
        weights = F.random_backbone_weights(0, np.asarray(pixels[:8]))
        yield {"root": root, "manifest": manifest, "pixels": pixels, "weights": weights}


@pytest.fixture
def count_extractions(monkeypatch):
    calls = []
    real = F._extract

    def counting(manifest, size, weights, layer_names, *args):
        calls.append(list(layer_names))
        return real(manifest, size, weights, layer_names, *args)

    monkeypatch.setattr(F, "_extract", counting)
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

    info = F.feature_cache_info(cache)
    assert len(info["entries"]) == 2
    assert info["total_bytes"] >= first["conv_dw_9_relu"].nbytes + first["conv_pw_13_relu"].nbytes


def test_weights_identity_changes_with_file(env, tmp_path):
    copy = tmp_path / "copy.weights.h5"
    copy.write_bytes(env["weights"].read_bytes())
    key = F.feature_key(env["manifest"], 32, copy)
    with open(copy, "ab") as f:
        f.write(b"\0")
    assert F.feature_key(env["manifest"], 32, copy) != key
    with pytest.raises(ValueError, match="random_backbone_weights"):
        F.feature_key(env["manifest"], 32, None)


def test_random_backbone_weights_reproducible(env, tmp_path):
    images = np.asarray(env["pixels"][:8])
    a = F.random_backbone_weights(0, images, cache_dir=tmp_path / "a")
    b = F.random_backbone_weights(0, images, cache_dir=tmp_path / "b")
    from pattlite.model import build_backbone

    fa = build_backbone(a, input_shape=(32, 32, 3)).predict(images[:2], verbose=0)
    fb = build_backbone(b, input_shape=(32, 32, 3)).predict(images[:2], verbose=0)
    np.testing.assert_array_equal(fa, fb)
    assert fa.std() > 0.01  # calibrated BatchNorm: activations do not vanish


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


def test_rows_subset_matches_full_features(env, count_extractions, tmp_path):
    cache = tmp_path / "cache"
    m, w = env["manifest"], env["weights"]
    full = F.backbone_features(m, 32, w, progress=False, cache_dir=cache)["conv_dw_9_relu"]
    rows = np.array([0, 3, 4, 10, len(m) - 1])
    part = F.backbone_features(m, 32, w, progress=False, cache_dir=cache, rows=rows)["conv_dw_9_relu"]
    assert part.shape == (len(rows),) + full.shape[1:]
    np.testing.assert_array_equal(part, full[rows])
    assert count_extractions[-1] == ["conv_dw_9_relu"] and len(count_extractions) == 2  # own cache entry
    with pytest.raises(ValueError, match="increasing"):
        F.backbone_features(m, 32, w, progress=False, cache_dir=cache, rows=[3, 1])
