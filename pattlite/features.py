"""Backbone-feature cache: the frozen MobileNetV1's outputs at the cut, computed once, reused by every head.

A head on a frozen backbone sees, in inference, exactly `build_backbone(...)(images)`; storing those
outputs lets heads train without re-running the backbone every epoch (`pattlite.experiments`, stage 1
"cached"). What a cached run gives up: the in-model flip/contrast augmentation cannot be applied to
features, so cached stage-1 training has NO augmentation; results record `stage1: "cached"`. The
authors' stage 2 as coded changes no backbone weight, so it is exact on features too (again without
augmentation).

Features are stored as float16 `.npy` files (read back memory-mapped) under
`<cache dir>/features/<key>/<layer name>.npy`, one file per backbone layer, where the key covers: the
images (each manifest row's path, row and image id, in order), the image size, the resize size, the
weights (file path + size + modification time, or "imagenet" + Keras version), the package version and
the feature format. Several layers (Table 5's cuts, the full backbone's `conv_pw_13_relu`) come out of
one pass over the images. Files are written under a temporary name and renamed, so an interrupted run
leaves no half-written cache.

A random backbone (`weights=None` in the demo profiles) is made reproducible by
`random_backbone_weights`: seeded random init, BatchNorm statistics calibrated on given training
images, saved as a weights file keyed by the seed and the images; that file is then the weights of
both the feature cache and any full model, so cached and full-model runs agree.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np

import pattlite
from pattlite import config

FEATURE_FORMAT_VERSION = 1
FEATURE_DTYPE = "float16"


def features_dir(cache_dir=None) -> Path:
    """Root of the feature cache: `<cache_dir or config.cache_dir()>/features`."""
    return Path(cache_dir) if cache_dir is not None else config.cache_dir() / "features"


def weights_identity(weights) -> dict:
    """What identifies backbone weights in a cache key: a file's resolved path, size and mtime."""
    if weights is None:
        raise ValueError("weights=None cannot key a cache: a random backbone differs every build; make it "
                         "reproducible with random_backbone_weights(seed, calibration_images)")
    if weights == "imagenet":
        return {"weights": "imagenet", "keras": keras.__version__}
    path = Path(weights).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {str(path)!r} does not exist")
    stat = path.stat()
    return {"weights": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _hash(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def manifest_identity(manifest) -> str:
    """Hash of the images a manifest lists (path, row, image id, in order); splits do not matter."""
    digest = hashlib.sha256()
    for column in ("path", "row", "image_id"):
        if column not in manifest.columns:
            raise ValueError(f"manifest lacks the column {column!r}; expected the columns of docs/architecture.md")
        digest.update("\x1f".join(map(str, manifest[column].tolist())).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]


def feature_key(manifest, size: int, weights, resize_to: int = 224, rows=None) -> str:
    """The cache key of one (images, rows, size, weights, resize) combination; the layer is the file name."""
    key = {
        "images": manifest_identity(manifest), "size": int(size), "resize_to": int(resize_to),
        "weights": weights_identity(weights), "pattlite": pattlite.__version__,
        "format": FEATURE_FORMAT_VERSION, "dtype": FEATURE_DTYPE,
    }
    if rows is not None:
        key["rows"] = hashlib.sha1(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()
    return _hash(key)


def random_backbone_weights(seed: int, calibration_images, resize_to: int = 224, cache_dir=None) -> Path:
    """A reproducible random MobileNetV1 (no top): seeded init, BatchNorm calibrated on `calibration_images`.

    With random weights and the default BatchNorm statistics activations vanish through the frozen
    backbone; `pattlite.model.calibrate_batchnorm` sets them to the statistics of the given images. The
    result is saved once as `<features dir>/weights/random_seed<seed>_<key>.weights.h5`, keyed by the
    seed, the images' bytes, the resize size and the package and Keras versions, and can be passed as
    `weights=` to `build_model`, `build_backbone` and `backbone_features`.

    Args:
        seed: seed of the random initialisation.
        calibration_images: uint8 array (N, height, width, 3) of training images (N around 32-64:
            calibration runs the whole set through the backbone at once).
        resize_to: side the images are resized to before the backbone.
        cache_dir: feature cache folder (default `features_dir()`).

    Returns:
        The path of the weights file.
    """
    from pattlite.model import FULL_BACKBONE_LAYER, build_backbone, calibrate_batchnorm

    images = np.ascontiguousarray(calibration_images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"calibration_images of shape {images.shape}: expected (N>0, height, width, 3)")
    key = _hash({"seed": int(seed), "images": hashlib.sha256(images.tobytes()).hexdigest(),
                 "shape": images.shape, "dtype": str(images.dtype), "resize_to": int(resize_to),
                 "pattlite": pattlite.__version__, "keras": keras.__version__})
    folder = features_dir(cache_dir) / "weights"
    path = folder / f"random_seed{int(seed)}_{key}.weights.h5"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    from pattlite.train import enable_determinism

    enable_determinism(int(seed))
    backbone = build_backbone(weights=None, cut_layer=FULL_BACKBONE_LAYER, resize_to=resize_to,
                              input_shape=images.shape[1:])
    calibrate_batchnorm(backbone, images)
    # Saved as a plain include_top=False MobileNet so build_model/build_backbone load it like ImageNet weights.
    net = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(resize_to, resize_to, 3))
    for layer in net.layers[1:]:
        layer.set_weights(backbone.get_layer(layer.name).get_weights())
    tmp = folder / f".tmp-{os.getpid()}-{path.name}"
    net.save_weights(str(tmp))
    os.replace(tmp, path)
    return path


def _extract(manifest, size, weights, layer_names, resize_to, batch_size, progress, folder, rows=None):
    """One pass of the images through the backbone, written to temporary .npy files in `folder`.

    Returns {layer name: temporary path}; the caller renames them into place.
    """
    from tqdm.auto import tqdm

    from pattlite.data import load_pixels
    from pattlite.model import build_backbone

    pixels = load_pixels(manifest, size, progress=progress)
    rows = np.arange(len(pixels)) if rows is None else np.asarray(rows)
    backbone = build_backbone(weights=weights, cut_layer=_deepest(layer_names), resize_to=resize_to,
                              input_shape=(size, size, 3))
    extractor = keras.Model(backbone.inputs, [backbone.get_layer(n).output for n in layer_names])
    outputs = {}
    n = len(rows)
    with tqdm(total=n, desc=f"backbone features ({', '.join(layer_names)})", unit="img",
              disable=not progress) as bar:
        for start in range(0, n, batch_size):
            batch = np.asarray(pixels[rows[start:start + batch_size]], dtype="float32")
            values = extractor.predict_on_batch(batch)
            if not isinstance(values, (list, tuple)):
                values = [values]
            for name, value in zip(layer_names, values):
                value = keras.ops.convert_to_numpy(value)
                if name not in outputs:
                    # Written straight to disk: a real dataset's features do not fit in memory.
                    outputs[name] = np.lib.format.open_memmap(
                        folder / f".tmp-{os.getpid()}-{name}.npy", mode="w+", dtype=FEATURE_DTYPE,
                        shape=(n,) + tuple(value.shape[1:]))
                outputs[name][start:start + len(value)] = value.astype(FEATURE_DTYPE)
            bar.update(len(batch))
    paths = {}
    for name, array in outputs.items():
        array.flush()
        paths[name] = Path(array.filename)
        del array
    outputs.clear()
    return paths


def _deepest(layer_names) -> str:
    from pattlite.model import _mobilenet_layer_names

    order = _mobilenet_layer_names()
    return max(layer_names, key=order.index)


def backbone_features(manifest, size: int, weights, cut_layers=(29,), resize_to: int = 224,
                      batch_size: int = 64, progress: bool = True, cache_dir=None, rows=None) -> dict:
    """Frozen-backbone features of every image of a manifest, from the cache or computed once.

    Args:
        manifest: a manifest from `pattlite.data.load_manifest` (all splits; index rows by position).
        size: side of the images fed to the model (the pixel cache's size).
        weights: "imagenet" or the path of a backbone weights file (for a random backbone, the file from
            `random_backbone_weights`; None is refused, it would not be reproducible).
        cut_layers: Table 5 layer numbers or MobileNet layer names, e.g. (29, "conv_pw_13_relu"); the
            missing ones are computed in one pass.
        resize_to: side the images are resized to before the backbone.
        batch_size: images per backbone call (the backbone runs in inference mode, so it does not
            change the features).
        progress: show a tqdm progress bar.
        cache_dir: feature cache folder (default `features_dir()`).
        rows: manifest positions to compute (sorted ascending), e.g. a training subset plus val and
            test; None = every row. A training limit then costs only the images it keeps.

    Returns:
        {layer name: read-only float16 memory map (N, h, w, c)}, one row per manifest row (or per entry
        of `rows`), in that order. No augmentation
        can be applied to these features.
    """
    from pattlite.model import cut_layer_name

    names = list(dict.fromkeys(cut_layer_name(c) for c in cut_layers))
    if not names:
        raise ValueError("cut_layers is empty; expected at least one layer number or name")
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) > 1 and np.any(np.diff(rows) <= 0)):
            raise ValueError("rows must be a 1-D array of increasing manifest positions")
    key = feature_key(manifest, size, weights, resize_to, rows=rows)
    folder = features_dir(cache_dir) / key
    missing = [n for n in names if not (folder / f"{n}.npy").is_file()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        written = _extract(manifest, size, weights, missing, resize_to, batch_size, progress, folder, rows)
        for name, tmp in written.items():
            os.replace(tmp, folder / f"{name}.npy")
        expected = len(manifest) if rows is None else len(rows)
        meta = {"key": key, "n": expected, "size": int(size), "resize_to": int(resize_to),
                "weights": weights_identity(weights), "pattlite": pattlite.__version__,
                "dataset": manifest.attrs.get("dataset"), "layers": sorted(
                    p.stem for p in folder.glob("*.npy") if not p.name.startswith("."))}
        tmp = folder / f".tmp-{os.getpid()}-meta.json"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder / "meta.json")
    features = {}
    for name in names:
        array = np.load(folder / f"{name}.npy", mmap_mode="r")
        expected = len(manifest) if rows is None else len(rows)
        if len(array) != expected:
            raise ValueError(f"{folder / (name + '.npy')}: {len(array)} rows, expected {expected}; "
                             f"delete the folder {folder} to rebuild it")
        features[name] = array
    return features


def feature_cache_info(cache_dir=None) -> dict:
    """Disk use of the feature cache.

    Returns:
        {"path": str, "entries": [{"key", "dataset", "n", "size", "layers", "bytes"}], "total_bytes": int}
        (random-backbone weight files count in total_bytes).
    """
    root = features_dir(cache_dir)
    entries, total = [], 0
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            total += size
            if folder.name == "weights":
                continue
            meta_path = folder / "meta.json"
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
            entries.append({"key": folder.name, "dataset": meta.get("dataset"), "n": meta.get("n"),
                            "size": meta.get("size"), "layers": meta.get("layers", []), "bytes": size})
    return {"path": str(root), "entries": entries, "total_bytes": total}
